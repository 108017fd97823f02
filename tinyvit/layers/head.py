"""The pieces of the official ViT's other heads: average pooling without a class token, and pre_logits.

- "gap" models (ViTConfig.classifier) have no class token: the position embedding
  is added to the patch tokens alone (N = number of patches), and after the final
  LayerNorm, which normalises every token, the head reads the mean over the tokens.
- pre_logits (ViTConfig.pre_logits) is a dense layer followed by tanh between the
  pooled token and the head; the ImageNet-21k checkpoints have one. The dense part
  is tinyvit.layers.linear; tanh is here.
"""

from typing import NamedTuple

import numpy as np

from .xp import namespace


class PosEmbedCache(NamedTuple):
    batch: int


def pos_embed_forward(x, pos_embed):
    """x (B, N, D) + pos_embed (N, D) -> (B, N, D): the embedding of a model without a class token."""
    return x + pos_embed, PosEmbedCache(x.shape[0])


def pos_embed_backward(dout, cache):
    """dout (B, N, D) -> dx (B, N, D), dpos_embed (N, D): the table is shared by every image, so its gradient sums over B."""
    return dout.copy(), dout.sum(axis=0)


class TokenMeanCache(NamedTuple):
    num_tokens: int


def token_mean_forward(x):
    """x (B, N, D) -> (B, D), the mean over the N tokens (global average pooling)."""
    return x.mean(axis=1), TokenMeanCache(x.shape[1])


def token_mean_backward(dout, cache):
    """dout (B, D) -> dx (B, N, D): every token receives 1/N of the gradient of the mean."""
    B, D = dout.shape
    xp = namespace(dout)
    share = (dout / cache.num_tokens).astype(dout.dtype, copy=False)
    return xp.broadcast_to(share[:, None, :], (B, cache.num_tokens, D)).copy()


class TanhCache(NamedTuple):
    out: np.ndarray  # tanh(x): the derivative 1 - tanh^2 needs only the output


def tanh_forward(x):
    """Elementwise, any shape."""
    out = namespace(x).tanh(x)
    return out, TanhCache(out)


def tanh_backward(dout, cache):
    """d tanh / dx = 1 - tanh(x)^2."""
    return dout * (1.0 - cache.out * cache.out)

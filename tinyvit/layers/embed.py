"""Class token and position embedding.

The class token is one learned vector prepended to every image's patch tokens;
after the last block the head reads it. The position embedding is a learned
(N, D) table added to all N tokens; row 0 belongs to the class token.
"""

from typing import NamedTuple

from .xp import namespace


class EmbedCache(NamedTuple):
    """Empty: the backward of a concatenation and an add needs nothing but dout."""


def embed_forward(x, cls_token, pos_embed):
    """x (B, N-1, D), cls_token (D,), pos_embed (N, D) -> (B, N, D)."""
    xp = namespace(x)
    B, _, D = x.shape
    cls = xp.broadcast_to(cls_token, (B, 1, D))
    out = xp.concatenate([cls, x], axis=1) + pos_embed  # (B, N, D)
    return out, EmbedCache()


def embed_backward(dout, cache):
    """dout (B, N, D) -> dx (B, N-1, D), dcls_token (D,), dpos_embed (N, D).

    Both embeddings are shared by every image, so their gradients sum over B.
    """
    dx = dout[:, 1:].copy()
    dcls = dout[:, 0].sum(axis=0)
    dpos = dout.sum(axis=0)
    return dx, dcls, dpos


class ClassTokenCache(NamedTuple):
    num_tokens: int


def class_token_forward(x):
    """x (B, N, D) -> the class token's row (B, D), which the head reads."""
    return x[:, 0].copy(), ClassTokenCache(x.shape[1])


def class_token_backward(dout, cache):
    """dout (B, D) -> dx (B, N, D): zero everywhere but row 0."""
    B, D = dout.shape
    xp = namespace(dout)
    rest = xp.zeros((B, cache.num_tokens - 1, D), dtype=dout.dtype)
    return xp.concatenate([dout[:, None], rest], axis=1)

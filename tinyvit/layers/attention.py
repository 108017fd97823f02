"""Multi-head scaled dot-product self-attention, the core between qkv and proj.

Input is the output of the qkv linear layer, (B, N, 3D), whose columns are
[q, k, v]; head h uses columns h*Dh:(h+1)*Dh of each third. Each head computes
    probs = softmax(q k^T / sqrt(Dh))  over the keys,   out = probs v
and the heads are laid side by side again to give (B, N, D).
"""

import math
from typing import NamedTuple

import numpy as np

from .xp import namespace


def softmax(x, axis=-1):
    """Numerically stable softmax: subtracting the row max changes nothing but avoids overflow."""
    e = namespace(x).exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def split_heads(qkv, heads):
    """(B, N, 3D) -> q, k, v, each (B, H, N, Dh)."""
    B, N, three_d = qkv.shape
    Dh = three_d // (3 * heads)
    x = qkv.reshape(B, N, 3, heads, Dh).transpose(2, 0, 3, 1, 4)  # (3, B, H, N, Dh)
    return x[0], x[1], x[2]


def merge_heads(x):
    """(B, H, N, Dh) -> (B, N, H*Dh)."""
    B, H, N, Dh = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, N, H * Dh)


class AttentionCache(NamedTuple):
    qkv: np.ndarray  # (B, N, 3D)
    probs: np.ndarray  # (B, H, N, N), also what the lessons draw as attention maps
    heads: int


def attention_forward(qkv, heads):
    """qkv (B, N, 3D) -> out (B, N, D). cache.probs is (B, H, N, N)."""
    q, k, v = split_heads(qkv, heads)
    scale = 1.0 / math.sqrt(q.shape[-1])  # a Python float keeps float32 arrays float32
    scores = (q @ k.transpose(0, 1, 3, 2)) * scale  # (B, H, N, N)
    probs = softmax(scores)  # (B, H, N, N), the dtype of qkv
    out = merge_heads(probs @ v)  # (B, N, D)
    return out, AttentionCache(qkv, probs, heads)


def attention_backward(dout, cache):
    """dout (B, N, D) -> dqkv (B, N, 3D) (see attention_grads)."""
    return attention_grads(dout, cache)[0]


def attention_bias_forward(qkv, bias, heads):
    """qkv (B, N, 3D), bias (H, N, N) -> out (B, N, D): attention whose scores get bias[h] added
    before the softmax, the same for every image (a relative position bias, layers/rel_pos.py)."""
    q, k, v = split_heads(qkv, heads)
    scale = 1.0 / math.sqrt(q.shape[-1])
    scores = (q @ k.transpose(0, 1, 3, 2)) * scale + bias  # (B, H, N, N)
    probs = softmax(scores)
    out = merge_heads(probs @ v)  # (B, N, D)
    return out, AttentionCache(qkv, probs, heads)


def attention_bias_backward(dout, cache):
    """dout (B, N, D) -> dqkv (B, N, 3D), dbias (H, N, N).

    The bias is added to the scores, so its gradient is dscores, summed over the batch
    that shares it; the rest is attention_backward's."""
    dqkv, dscores = attention_grads(dout, cache)
    return dqkv, dscores.sum(axis=0)


def attention_grads(dout, cache):
    """dout (B, N, D) -> dqkv (B, N, 3D) and dscores (B, H, N, N), the gradient of the scores.

    Through out = probs v: dprobs = dout v^T and dv = probs^T dout. Through the
    softmax: dscores = probs * (dprobs - sum_j dprobs * probs), the Jacobian of
    softmax applied row by row. Through scores = q k^T * scale: dq = dscores k * scale
    and dk = dscores^T q * scale.
    """
    qkv, probs, heads = cache
    q, k, v = split_heads(qkv, heads)
    B, N, D = dout.shape
    scale = 1.0 / math.sqrt(q.shape[-1])  # a Python float keeps float32 arrays float32
    dout_h = dout.reshape(B, N, heads, D // heads).transpose(0, 2, 1, 3)  # (B, H, N, Dh)
    dprobs = dout_h @ v.transpose(0, 1, 3, 2)  # (B, H, N, N)
    dv = probs.transpose(0, 1, 3, 2) @ dout_h  # (B, H, N, Dh)
    dscores = probs * (dprobs - (dprobs * probs).sum(axis=-1, keepdims=True))
    dq = (dscores @ k) * scale
    dk = (dscores.transpose(0, 1, 3, 2) @ q) * scale
    dqkv = namespace(dout).concatenate([merge_heads(dq), merge_heads(dk), merge_heads(dv)], axis=-1)
    return dqkv, dscores

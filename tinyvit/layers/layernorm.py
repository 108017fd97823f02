"""LayerNorm over the last axis: y = (x - mean) / sqrt(var + eps) * weight + bias.

The cache keeps x, the mean and the inverse standard deviation (rstd); the
normalised x is recomputed in backward rather than stored.

Also the residual add fused with the LayerNorm that follows it, as a ViT block
has it (x + branch, then norm2 or the next block's norm1): `add_layernorm_forward`
gives both the new residual stream s = x + h and LayerNorm(s), and
`add_layernorm_backward` adds the residual stream's own gradient to LayerNorm's
dx. They are written here as the composition they stand for; a fast backend does
each in one pass over the rows (reading x and h, writing s and y; reading dy and
ds, writing dx) instead of two.
"""

from typing import NamedTuple

import numpy as np

from .xp import namespace

EPS = 1e-6  # as in the paper's reference code


class LayerNormCache(NamedTuple):
    x: np.ndarray  # (..., D)
    weight: np.ndarray  # (D,)
    mean: np.ndarray  # (..., 1)
    rstd: np.ndarray  # (..., 1)


def layernorm_forward(x, weight, bias, eps=EPS):
    """(..., D) -> (..., D), normalised per row, then scaled and shifted."""
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)  # biased variance, as in the definition
    rstd = 1.0 / namespace(x).sqrt(var + eps)
    xhat = (x - mean) * rstd
    return xhat * weight + bias, LayerNormCache(x, weight, mean, rstd)


def layernorm_backward(dout, cache):
    """dout (..., D) -> dx (..., D), dweight (D,), dbias (D,).

    With xhat = (x - mean) * rstd and g = dout * weight (the gradient at xhat):
        dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
    The mean(g) term comes through the mean, the mean(g * xhat) term through the variance.
    """
    x, weight, mean, rstd = cache
    xhat = (x - mean) * rstd
    g = dout * weight
    dx = rstd * (g - g.mean(axis=-1, keepdims=True) - xhat * (g * xhat).mean(axis=-1, keepdims=True))
    rows = dout.reshape(-1, dout.shape[-1])
    dweight = (rows * xhat.reshape(rows.shape)).sum(axis=0)
    dbias = rows.sum(axis=0)
    return dx, dweight, dbias


def add_layernorm_forward(x, h, weight, bias, eps=EPS):
    """x, h (..., D) -> ((s, y), cache): the residual add s = x + h, and y = LayerNorm(s), both (..., D).

    The cache is LayerNorm's of s, so a plain layernorm_backward also runs on it
    (the model's final norm, whose s nothing else reads)."""
    s = x + h
    y, cache = layernorm_forward(s, weight, bias, eps)
    return (s, y), cache


def add_layernorm_backward(dout, cache):
    """dout = (ds, dy), each (..., D) -> dx (..., D), dweight (D,), dbias (D,).

    s feeds the residual stream (gradient ds) and the LayerNorm (gradient dy), so
    its gradient is their sum, ds + LayerNorm's dx; s = x + h hands it on unchanged
    to x and to h, so dx is also h's gradient and is returned once. The cache may
    be any LayerNorm cache: for a plain layernorm_forward(s) whose input also
    feeds the residual stream (the first block's norm1), this is the same sum."""
    ds, dy = dout
    dnorm, dweight, dbias = layernorm_backward(dy, cache)
    return ds + dnorm, dweight, dbias

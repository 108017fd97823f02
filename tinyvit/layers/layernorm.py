"""LayerNorm over the last axis: y = (x - mean) / sqrt(var + eps) * weight + bias.

The cache keeps x, the mean and the inverse standard deviation (rstd); the
normalised x is recomputed in backward rather than stored.
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

"""Numba CPU kernels for LayerNorm over the last axis (the specification is tinyvit.layers.layernorm).

Rows are independent, so both passes run in parallel over rows. A row of D
values stays in L1 cache while it is worked on, so "one pass over memory"
means each row is read from main memory once: the mean and the variance are
taken from the cached row (two short loops, numerically as safe as the
reference's two-pass formula), then the output is written.

Variants, plain to fast:
1. `layernorm_rows_forward`   per row: mean, variance, rstd in float64, then the output; the
                              cache keeps x, mean and rstd, never the normalised x.
2. `layernorm_rows_backward`  per row: xhat recomputed from (x, mean, rstd), then the two row
                              means of the derivation (mean(g) through the mean, mean(g xhat)
                              through the variance), with dweight and dbias reduced over rows
                              as per-chunk float64 partials in the same pass.
"""

from typing import NamedTuple

import numpy as np
from numba import njit, prange

from tinyvit.layers.layernorm import EPS

from .numba_linear import CHUNK_ROWS, FASTMATH, rows, sum_partials


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def layernorm_rows_forward(x, weight, bias, eps, out, mean, rstd):
    """x (R, D) -> out (R, D); mean and rstd (R,) written for backward."""
    R, D = x.shape
    for r in prange(R):
        s = 0.0
        for j in range(D):
            s += x[r, j]
        mu = s / D
        ss = 0.0
        for j in range(D):
            d = x[r, j] - mu
            ss += d * d
        inv = 1.0 / np.sqrt(ss / D + eps)
        for j in range(D):
            out[r, j] = (x[r, j] - mu) * inv * weight[j] + bias[j]
        mean[r] = mu
        rstd[r] = inv


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def layernorm_rows_backward(dout, x, weight, mean, rstd, dx):
    """dx (R, D) written; returns (dweight, dbias), each (D,)."""
    R, D = x.shape
    chunks = (R + CHUNK_ROWS - 1) // CHUNK_ROWS
    pw = np.zeros((chunks, D), dtype=np.float64)
    pb = np.zeros((chunks, D), dtype=np.float64)
    for c in prange(chunks):
        for r in range(c * CHUNK_ROWS, min(R, (c + 1) * CHUNK_ROWS)):
            mu = np.float64(mean[r])
            inv = np.float64(rstd[r])
            sg = 0.0
            sgx = 0.0
            for j in range(D):
                xhat = (x[r, j] - mu) * inv
                g = dout[r, j] * weight[j]  # the gradient at xhat
                sg += g
                sgx += g * xhat
                pw[c, j] += dout[r, j] * xhat
                pb[c, j] += dout[r, j]
            mg = sg / D  # mean(g): the term through the mean
            mgx = sgx / D  # mean(g xhat): the term through the variance
            for j in range(D):
                xhat = (x[r, j] - mu) * inv
                dx[r, j] = inv * (dout[r, j] * weight[j] - mg - xhat * mgx)
    return sum_partials(pw, x.dtype), sum_partials(pb, x.dtype)


class LayerNormCache(NamedTuple):
    """Not the specification's cache: x is kept as its (R, D) rows, and mean and rstd are (R,)."""

    x: np.ndarray  # (R, D): the rows of the input (..., D), flattened
    weight: np.ndarray  # (D,)
    mean: np.ndarray  # (R,) float64
    rstd: np.ndarray  # (R,) float64


def layernorm_forward(x, weight, bias, eps=EPS):
    """(..., D) -> (..., D), normalised per row, then scaled and shifted."""
    x2 = rows(x)
    out = np.empty_like(x2)
    mean = np.empty(x2.shape[0], dtype=np.float64)  # float64 even for float32 x: xhat is recomputed from them
    rstd = np.empty(x2.shape[0], dtype=np.float64)
    layernorm_rows_forward(x2, weight, bias, eps, out, mean, rstd)
    return out.reshape(x.shape), LayerNormCache(x2, weight, mean, rstd)


def layernorm_backward(dout, cache):
    """dout (..., D) -> dx (..., D), dweight (D,), dbias (D,)."""
    x2, weight, mean, rstd = cache
    dx = np.empty_like(x2)
    dweight, dbias = layernorm_rows_backward(rows(dout), x2, weight, mean, rstd, dx)
    return dx.reshape(dout.shape), dweight, dbias

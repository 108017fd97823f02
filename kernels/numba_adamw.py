"""Numba CPU kernels for the optimiser: AdamW in place, the global gradient norm, clipping
(the specification is adamw_update, sum_of_squares and scale_ in tinyvit.optim).

Variants, plain to fast:
1. `adamw_flat`       one parallel pass over a parameter that reads param, grad, m, v once and
                      writes param, m, v once: decay, both moments, the bias corrections and the
                      step, where the NumPy version makes seven passes and two temporaries.
2. `squares_flat`     sum of squares of one array in float64 partials per chunk, in parallel.
3. `scale_flat`       in-place multiply, in parallel.
"""

import math

import numpy as np
from numba import njit, prange

from .numba_linear import FASTMATH

CHUNK = 1 << 14  # elements per partial sum in squares_flat


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def adamw_flat(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step):
    """All arrays flat and equal-length; param, m and v updated in place."""
    decay = 1.0 - lr * weight_decay
    c1 = 1.0 / (1.0 - beta1**step)  # bias corrections
    c2 = 1.0 / (1.0 - beta2**step)
    for i in prange(param.size):
        g = grad[i]
        mi = beta1 * m[i] + (1.0 - beta1) * g
        vi = beta2 * v[i] + (1.0 - beta2) * g * g
        m[i] = mi
        v[i] = vi
        param[i] = param[i] * decay - lr * (mi * c1) / (math.sqrt(vi * c2) + eps)


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def squares_flat(a):
    """sum(a^2) in float64."""
    chunks = (a.size + CHUNK - 1) // CHUNK
    partial = np.zeros(chunks, dtype=np.float64)
    for c in prange(chunks):
        s = 0.0
        for i in range(c * CHUNK, min(a.size, (c + 1) * CHUNK)):
            x = np.float64(a[i])
            s += x * x
        partial[c] = s
    return partial.sum()


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def scale_flat(a, factor):
    for i in prange(a.size):
        a[i] *= factor


def _flat(a, name):
    """The flat view of a C-contiguous array; in-place updates need a view, never a copy."""
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous to be updated in place, got strides {a.strides}")
    return a.reshape(-1)


def adamw_update(param, grad, m, v, hp):
    """One AdamW step, in place on param, m and v; hp is a tinyvit.optim.AdamWStep."""
    if not (param.shape == grad.shape == m.shape == v.shape):
        raise ValueError(f"param, grad, m, v must share a shape, got {param.shape}, {grad.shape}, {m.shape}, {v.shape}")
    adamw_flat(_flat(param, "param"), np.ascontiguousarray(grad).reshape(-1), _flat(m, "m"), _flat(v, "v"),
               float(hp.lr), float(hp.beta1), float(hp.beta2), float(hp.eps), float(hp.weight_decay),
               int(hp.step))  # fmt: skip


def sum_of_squares(arrays):
    """sum over all arrays of sum(a^2), in float64: the square of the global norm."""
    return float(sum(squares_flat(np.ascontiguousarray(a).reshape(-1)) for a in arrays))


def scale_(arrays, factor):
    """Multiply every array by factor, in place."""
    for a in arrays:
        scale_flat(_flat(a, "array"), float(factor))

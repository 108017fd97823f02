"""Numba CPU kernels for the optimiser: AdamW in place, the global gradient norm, clipping
(the specification is adamw_update, sum_of_squares and scale_ in tinyvit.optim).

Variants, plain to fast:
1. `adamw_flat`       one serial pass over a parameter that reads param, grad, m, v once and
                      writes param, m, v once: decay, both moments, the bias corrections and the
                      step, where the NumPy version makes seven passes and two temporaries.
2. `adamw_chunks`     the same kernel on slices of CHUNK elements, the slices in parallel.
   `squares_flat` / `squares_chunks` and `scale_flat` / `scale_chunks` are the same pair for the
   float64 sum of squares and the in-place multiply.
The optimiser calls these once per parameter, ~100 times a step, and most parameters are small
(biases, norms): for them waking a thread pool costs more than the work, so arrays under
PARALLEL_MIN elements take the serial kernel.
"""

import math

import numpy as np
from numba import njit, prange

from .numba_linear import FASTMATH

CHUNK = 1 << 15  # elements per parallel slice
PARALLEL_MIN = 1 << 16  # smaller arrays take the serial kernel


@njit(fastmath=FASTMATH, cache=True)
def adamw_flat(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step):
    """All arrays flat and equal-length; param, m and v updated in place."""
    decay = 1.0 - lr * weight_decay
    c1 = 1.0 / (1.0 - beta1**step)  # bias corrections
    c2 = 1.0 / (1.0 - beta2**step)
    for i in range(param.size):
        g = grad[i]
        mi = beta1 * m[i] + (1.0 - beta1) * g
        vi = beta2 * v[i] + (1.0 - beta2) * g * g
        m[i] = mi
        v[i] = vi
        param[i] = param[i] * decay - lr * (mi * c1) / (math.sqrt(vi * c2) + eps)


@njit(parallel=True, cache=True)
def adamw_chunks(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step):
    for c in prange((param.size + CHUNK - 1) // CHUNK):
        s = slice(c * CHUNK, min(param.size, (c + 1) * CHUNK))
        adamw_flat(param[s], grad[s], m[s], v[s], lr, beta1, beta2, eps, weight_decay, step)


@njit(fastmath=FASTMATH, cache=True)
def squares_flat(a):
    """sum(a^2) in float64."""
    s = 0.0
    for i in range(a.size):
        x = np.float64(a[i])
        s += x * x
    return s


@njit(parallel=True, cache=True)
def squares_chunks(a):
    chunks = (a.size + CHUNK - 1) // CHUNK
    partial = np.zeros(chunks, dtype=np.float64)
    for c in prange(chunks):
        partial[c] = squares_flat(a[c * CHUNK : min(a.size, (c + 1) * CHUNK)])
    return partial.sum()


@njit(fastmath=FASTMATH, cache=True)
def scale_flat(a, factor):
    for i in range(a.size):
        a[i] *= factor


@njit(parallel=True, cache=True)
def scale_chunks(a, factor):
    for c in prange((a.size + CHUNK - 1) // CHUNK):
        scale_flat(a[c * CHUNK : min(a.size, (c + 1) * CHUNK)], factor)


def _flat(a, name):
    """The flat view of a C-contiguous array; in-place updates need a view, never a copy."""
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous to be updated in place, got strides {a.strides}")
    return a.reshape(-1)


def adamw_update(param, grad, m, v, hp):
    """One AdamW step, in place on param, m and v; hp is a tinyvit.optim.AdamWStep."""
    if not (param.shape == grad.shape == m.shape == v.shape):
        raise ValueError(f"param, grad, m, v must share a shape, got {param.shape}, {grad.shape}, {m.shape}, {v.shape}")
    kernel = adamw_chunks if param.size >= PARALLEL_MIN else adamw_flat
    kernel(_flat(param, "param"), np.ascontiguousarray(grad).reshape(-1), _flat(m, "m"), _flat(v, "v"),
           float(hp.lr), float(hp.beta1), float(hp.beta2), float(hp.eps), float(hp.weight_decay),
           int(hp.step))  # fmt: skip


def sum_of_squares(arrays):
    """sum over all arrays of sum(a^2), in float64: the square of the global norm."""
    total = 0.0
    for a in arrays:
        a = np.ascontiguousarray(a).reshape(-1)
        total += (squares_chunks if a.size >= PARALLEL_MIN else squares_flat)(a)
    return float(total)


def scale_(arrays, factor):
    """Multiply every array by factor, in place."""
    for a in arrays:
        (scale_chunks if a.size >= PARALLEL_MIN else scale_flat)(_flat(a, "array"), float(factor))

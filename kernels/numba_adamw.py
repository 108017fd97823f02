"""Numba CPU kernels for the optimiser: AdamW, the global gradient norm, clipping
(the specification is adamw_update, sum_of_squares and scale in tinyvit.optim).

Like the specification, nothing is written in place: each update writes fresh
output arrays, so a step can be undone by keeping the old dicts.

Variants, plain to fast:
1. `adamw_flat`       one serial pass over a parameter that reads param, grad, m, v once and
                      writes the new param, m, v once: decay, both moments, the bias corrections
                      and the step, where the NumPy version makes seven passes and two temporaries.
2. `adamw_chunks`     the same kernel on slices of CHUNK elements, the slices in parallel.
   `squares_flat` / `squares_chunks` and `scale_flat` / `scale_chunks` are the same pair for the
   float64 sum of squares and the multiply.
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
def adamw_flat(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step, out_param, out_m, out_v):
    """All arrays flat and equal-length; the new param, m and v go to the out_ arrays."""
    decay = 1.0 - lr * weight_decay
    c1 = 1.0 / (1.0 - beta1**step)  # bias corrections
    c2 = 1.0 / (1.0 - beta2**step)
    for i in range(param.size):
        g = grad[i]
        mi = beta1 * m[i] + (1.0 - beta1) * g
        vi = beta2 * v[i] + (1.0 - beta2) * g * g
        out_m[i] = mi
        out_v[i] = vi
        out_param[i] = param[i] * decay - lr * (mi * c1) / (math.sqrt(vi * c2) + eps)


@njit(parallel=True, cache=True)
def adamw_chunks(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step, out_param, out_m, out_v):
    for c in prange((param.size + CHUNK - 1) // CHUNK):
        s = slice(c * CHUNK, min(param.size, (c + 1) * CHUNK))
        adamw_flat(param[s], grad[s], m[s], v[s], lr, beta1, beta2, eps, weight_decay, step,
                   out_param[s], out_m[s], out_v[s])  # fmt: skip


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
def scale_flat(a, factor, out):
    for i in range(a.size):
        out[i] = a[i] * factor


@njit(parallel=True, cache=True)
def scale_chunks(a, factor, out):
    for c in prange((a.size + CHUNK - 1) // CHUNK):
        s = slice(c * CHUNK, min(a.size, (c + 1) * CHUNK))
        scale_flat(a[s], factor, out[s])


def _flat(a):
    """A flat C-contiguous view of a (a copy only when a is not contiguous)."""
    return np.ascontiguousarray(a).reshape(-1)


def adamw_update(param, grad, m, v, hp):
    """One AdamW step -> new (param, m, v); hp is a tinyvit.optim.AdamWStep."""
    if not (param.shape == grad.shape == m.shape == v.shape):
        raise ValueError(f"param, grad, m, v must share a shape, got {param.shape}, {grad.shape}, {m.shape}, {v.shape}")
    out = [np.empty(param.shape, param.dtype) for _ in range(3)]  # C order: reshape(-1) below is a view
    kernel = adamw_chunks if param.size >= PARALLEL_MIN else adamw_flat
    kernel(_flat(param), _flat(grad), _flat(m), _flat(v),
           float(hp.lr), float(hp.beta1), float(hp.beta2), float(hp.eps), float(hp.weight_decay),
           int(hp.step), *(o.reshape(-1) for o in out))  # fmt: skip
    return tuple(out)


def sum_of_squares(arrays):
    """sum over all arrays of sum(a^2), in float64: the square of the global norm (a NumPy scalar)."""
    total = 0.0
    for a in arrays:
        a = _flat(a)
        total += (squares_chunks if a.size >= PARALLEL_MIN else squares_flat)(a)
    return np.float64(total)


def scale(arrays, factor):
    """Every array times factor, as new arrays."""
    out = []
    for a in arrays:
        o = np.empty(a.shape, a.dtype)  # C order, whatever a's: o.reshape(-1) is a view
        (scale_chunks if a.size >= PARALLEL_MIN else scale_flat)(_flat(a), float(factor), o.reshape(-1))
        out.append(o)
    return out

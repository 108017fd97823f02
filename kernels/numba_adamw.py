"""Numba CPU kernels for the optimiser: AdamW, the global gradient norm, clipping
(the specification is adamw_update, sum_of_squares and scale in tinyvit.optim).

Like the specification, nothing is written in place: each update writes fresh
output arrays, so a step can be undone by keeping the old dicts. Every kernel
works on flat arrays (a parameter of any shape is its C-ordered numbers).

The optimiser calls these once per parameter, ~100 times a step, and most
parameters are small (biases, norms, the class token), so the ladder ends in
a choice by size rather than in the fastest loop.

AdamW variants, plain to fast (ADAMW_VARIANTS: name -> adamw_update(param, grad, m, v, hp),
the last is the default):
1_loops      `adamw_flat` on every parameter: one serial pass that reads param, grad, m, v
             once and writes the new param, m, v once (decay, both moments, the bias
             corrections and the step, per element, as tinyvit.optim writes them), where
             the NumPy version makes seven passes and two temporaries.
2_parallel   `adamw_chunks` on every parameter: the same kernel on slices of CHUNK
             elements, the slices spread over the cores. For a bias of a few hundred
             numbers, waking the thread pool costs more than the work.
3_by_size    the serial kernel for arrays under PARALLEL_MIN elements, the chunks above.

The squared global norm (SQUARES_VARIANTS: name -> sum_of_squares(arrays)) and the multiply of
clipping (SCALE_VARIANTS: name -> scale(arrays, factor)) have the same three rungs, from
`squares_flat` / `squares_chunks` (a float64 sum; the chunks add their partial sums at the end)
and `scale_flat` / `scale_chunks`.
"""

import math

import numpy as np
from numba import njit, prange

from .numba_linear import FASTMATH

# Sizes for numba's OpenMP pool, whose idle threads spin briefly (tinyvit/threads.py): the clip and
# update of the recipe model's 79 parameters took 6.5 ms a step with 32K-element slices from 64K
# elements, 5.0 ms with 8K slices from 16K (its qkv, proj, fc1 and fc2 weights go parallel).
CHUNK = 1 << 13  # elements per parallel slice
PARALLEL_MIN = 1 << 14  # smaller arrays take the serial kernel


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
    """adamw_flat on slices of CHUNK elements, the slices in parallel."""
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
    """sum(a^2) in float64: one partial sum per slice of CHUNK elements, in parallel, then added."""
    chunks = (a.size + CHUNK - 1) // CHUNK
    partial = np.zeros(chunks, dtype=np.float64)
    for c in prange(chunks):
        partial[c] = squares_flat(a[c * CHUNK : min(a.size, (c + 1) * CHUNK)])
    return partial.sum()


@njit(fastmath=FASTMATH, cache=True)
def scale_flat(a, factor, out):
    """out = a * factor over flat, equal-length arrays."""
    for i in range(a.size):
        out[i] = a[i] * factor


@njit(parallel=True, cache=True)
def scale_chunks(a, factor, out):
    """scale_flat on slices of CHUNK elements, the slices in parallel."""
    for c in prange((a.size + CHUNK - 1) // CHUNK):
        s = slice(c * CHUNK, min(a.size, (c + 1) * CHUNK))
        scale_flat(a[s], factor, out[s])


def _flat(a):
    """A flat C-contiguous view of a (a copy only when a is not contiguous)."""
    return np.ascontiguousarray(a).reshape(-1)


# -- the optimiser's ops, for a given size at which the parallel kernels take over ---------------

SERIAL_ONLY = 1 << 62  # a parallel_min no array reaches
PARALLEL_ALWAYS = 0


def _adamw_update(param, grad, m, v, hp, parallel_min):
    if not (param.shape == grad.shape == m.shape == v.shape):
        raise ValueError(f"param, grad, m, v must share a shape, got {param.shape}, {grad.shape}, {m.shape}, {v.shape}")
    out = [np.empty(param.shape, param.dtype) for _ in range(3)]  # C order: reshape(-1) below is a view
    kernel = adamw_chunks if param.size >= parallel_min else adamw_flat
    kernel(_flat(param), _flat(grad), _flat(m), _flat(v),
           float(hp.lr), float(hp.beta1), float(hp.beta2), float(hp.eps), float(hp.weight_decay),
           int(hp.step), *(o.reshape(-1) for o in out))  # fmt: skip
    return tuple(out)


def _sum_of_squares(arrays, parallel_min):
    total = 0.0
    for a in arrays:
        a = _flat(a)
        total += (squares_chunks if a.size >= parallel_min else squares_flat)(a)
    return np.float64(total)


def _scale(arrays, factor, parallel_min):
    out = []
    for a in arrays:
        o = np.empty(a.shape, a.dtype)  # C order, whatever a's: o.reshape(-1) is a view
        (scale_chunks if a.size >= parallel_min else scale_flat)(_flat(a), float(factor), o.reshape(-1))
        out.append(o)
    return out


def adamw_update_loops(param, grad, m, v, hp):
    """One AdamW step -> new (param, m, v), one serial pass per parameter; hp is a tinyvit.optim.AdamWStep."""
    return _adamw_update(param, grad, m, v, hp, SERIAL_ONLY)


def adamw_update_parallel(param, grad, m, v, hp):
    """One AdamW step -> new (param, m, v), every parameter in parallel chunks."""
    return _adamw_update(param, grad, m, v, hp, PARALLEL_ALWAYS)


def adamw_update(param, grad, m, v, hp):
    """One AdamW step -> new (param, m, v); hp is a tinyvit.optim.AdamWStep. Parameters of
    PARALLEL_MIN elements or more in parallel chunks, smaller ones in one serial pass."""
    return _adamw_update(param, grad, m, v, hp, PARALLEL_MIN)


def sum_of_squares_loops(arrays):
    """sum over all arrays of sum(a^2), in float64, one serial pass per array (a NumPy scalar)."""
    return _sum_of_squares(arrays, SERIAL_ONLY)


def sum_of_squares_parallel(arrays):
    """sum over all arrays of sum(a^2), in float64, every array in parallel chunks (a NumPy scalar)."""
    return _sum_of_squares(arrays, PARALLEL_ALWAYS)


def sum_of_squares(arrays):
    """sum over all arrays of sum(a^2), in float64: the square of the global norm (a NumPy scalar).
    Arrays of PARALLEL_MIN elements or more in parallel chunks."""
    return _sum_of_squares(arrays, PARALLEL_MIN)


def scale_loops(arrays, factor):
    """Every array times factor, as new arrays, one serial pass per array."""
    return _scale(arrays, factor, SERIAL_ONLY)


def scale_parallel(arrays, factor):
    """Every array times factor, as new arrays, every array in parallel chunks."""
    return _scale(arrays, factor, PARALLEL_ALWAYS)


def scale(arrays, factor):
    """Every array times factor, as new arrays; arrays of PARALLEL_MIN elements or more in parallel chunks."""
    return _scale(arrays, factor, PARALLEL_MIN)


ADAMW_VARIANTS = {
    "1_loops": adamw_update_loops,
    "2_parallel": adamw_update_parallel,
    "3_by_size": adamw_update,
}
SQUARES_VARIANTS = {
    "1_loops": sum_of_squares_loops,
    "2_parallel": sum_of_squares_parallel,
    "3_by_size": sum_of_squares,
}
SCALE_VARIANTS = {
    "1_loops": scale_loops,
    "2_parallel": scale_parallel,
    "3_by_size": scale,
}

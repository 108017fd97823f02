"""Numba CPU kernels for fc1 + exact GELU (the specification is tinyvit.layers.gelu).

gelu(z) = 0.5 z (1 + erf(z / sqrt 2)),  gelu'(z) = Phi(z) + z phi(z).

The product x @ W goes to BLAS; the bias add and GELU are one fused pass over
its output, and in backward gelu' and the bias gradient are one fused pass.

Variants, plain to fast:
1. `math.erf`           used for float64: exact, so the float64 backend agrees with the NumPy
                        reference to 1e-10. In a `prange` loop it is a scalar libm call per
                        element (~0.2 G elements/s on 2 cores): too slow for float32 training.
2. `erf_rational`       used for float32: a branch-free odd rational approximation on the
                        input clamped to [-4, 4] (erf(4) = 1 - 1.5e-8, already 1 in float32),
                        the coefficients of Eigen's float erf. Evaluated in float64 it is within
                        6.5e-8 of erf everywhere (below float32's resolution near 1); it is only
                        multiplies, adds and one divide, so LLVM vectorises it (AVX-512).
   Tolerance this implies for float32 GELU: |gelu32(z) - gelu(z)| <= 0.5 |z| 6.5e-8 + rounding,
   i.e. <= 1e-7 (1 + |z|) absolute; tests use 2e-7 (1 + |z|) for gelu and gelu'.
3. `bias_gelu_forward` / `bias_gelu_backward`   the fused passes over the (R, M) activations;
   the backward's Gaussian density takes its exp from `exp_inplace` (kernels/numba_exp.py),
   one vectorised sweep per row, instead of a scalar libm call per element.
"""

import math
from typing import NamedTuple

import numpy as np
from numba import njit, prange

from .numba_exp import exp_inplace
from .numba_linear import CHUNK_ROWS, FASTMATH, rows

_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)

# erf(x) ~= x * P(x^2) / Q(x^2) on [-4, 4]: odd numerator, even denominator (Eigen's float erf).
_P = (-1.60960333262415e-02, -2.95459980854025e-03, -7.34990630326855e-04, -5.69250639462346e-05,
      -2.10102402082508e-06, 2.77068142495902e-08, -2.72614225801306e-10)  # fmt: skip
_Q = (-1.42647390514189e-02, -7.37332916720468e-03, -1.68282697438203e-03, -2.13374055278905e-04,
      -1.45660718464996e-05)  # fmt: skip


@njit(fastmath=FASTMATH, cache=True, inline="always")
def erf_rational(x):
    """erf(x) within 6.5e-8 absolute, for a float64 x; no branches (min/max compile to selects)."""
    x = min(max(x, -4.0), 4.0)
    x2 = x * x
    p = _P[6]
    p = p * x2 + _P[5]
    p = p * x2 + _P[4]
    p = p * x2 + _P[3]
    p = p * x2 + _P[2]
    p = p * x2 + _P[1]
    p = p * x2 + _P[0]
    q = _Q[4]
    q = q * x2 + _Q[3]
    q = q * x2 + _Q[2]
    q = q * x2 + _Q[1]
    q = q * x2 + _Q[0]
    return x * p / q


@njit(fastmath=FASTMATH, cache=True, inline="always")
def _erf(z, exact):
    return math.erf(z) if exact else erf_rational(z)


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def bias_gelu_forward(h, bias, out, exact):
    """h (R, M) += bias in place (h becomes the cache, the pre-activation z); out = gelu(z)."""
    R, M = h.shape
    for r in prange(R):
        for j in range(M):
            z = np.float64(h[r, j] + bias[j])
            h[r, j] = z
            out[r, j] = 0.5 * z * (1.0 + _erf(z * _INV_SQRT2, exact))


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def bias_gelu_backward(dout, z, dz, exact):
    """dz = dout * gelu'(z), (R, M); returns dbias (M,) = sum over rows of dz, from the same pass."""
    R, M = z.shape
    chunks = (R + CHUNK_ROWS - 1) // CHUNK_ROWS
    partial = np.zeros((chunks, M), dtype=np.float64)
    for c in prange(chunks):
        gauss = np.empty(M, dtype=np.float64)  # exp(-z^2 / 2) of one row
        bits = np.empty(M, dtype=np.int64)
        for r in range(c * CHUNK_ROWS, min(R, (c + 1) * CHUNK_ROWS)):
            for j in range(M):
                x = np.float64(z[r, j])
                gauss[j] = -0.5 * x * x
            exp_inplace(gauss, bits)
            for j in range(M):
                x = np.float64(z[r, j])
                cdf = 0.5 * (1.0 + _erf(x * _INV_SQRT2, exact))
                pdf = _INV_SQRT_2PI * gauss[j]
                g = dout[r, j] * (cdf + x * pdf)
                dz[r, j] = g
                partial[c, j] += dz[r, j]
    dbias = np.zeros(M, dtype=z.dtype)
    for j in range(M):
        s = 0.0
        for c in range(chunks):
            s += partial[c, j]
        dbias[j] = s
    return dbias


class LinearGeluCache(NamedTuple):
    x: np.ndarray  # (..., in)
    weight: np.ndarray  # (in, M)
    z: np.ndarray  # (R, M) the pre-activation x @ W + b


def linear_gelu_forward(x, weight, bias):
    """gelu(x @ W + b): (..., in) -> (..., M)."""
    h = rows(x) @ weight  # (R, M), fresh from BLAS; becomes z in place
    out = np.empty_like(h)
    bias_gelu_forward(h, bias, out, h.dtype == np.float64)
    return out.reshape(*x.shape[:-1], weight.shape[1]), LinearGeluCache(x, weight, h)


def linear_gelu_backward(dout, cache):
    """dout (..., M) -> dx (..., in), dweight (in, M), dbias (M,)."""
    x, weight, z = cache
    dz = np.empty_like(z)
    dbias = bias_gelu_backward(rows(dout), z, dz, z.dtype == np.float64)
    dx = dz @ weight.T  # (R, in)
    dweight = rows(x).T @ dz  # (in, M)
    return dx.reshape(x.shape), dweight, dbias

"""Numba CPU kernels for fc1 + exact GELU (the specification is tinyvit.layers.gelu).

gelu(z) = 0.5 z (1 + erf(z / sqrt 2)),  gelu'(z) = Phi(z) + z phi(z).

The product x @ W goes to BLAS; the bias add and GELU are one fused pass over
its output, and in backward gelu' and the bias gradient are one fused pass.

Variants, plain to fast:
1. `math.erfc`          used for float64, Phi(z) = erfc(-z / sqrt 2) / 2 as in the reference
                        (no cancellation in the negative tail): exact, so the float64 backend agrees with the NumPy
                        reference to 1e-10. In a `prange` loop it is a scalar libm call per
                        element (~0.2 G elements/s on 2 cores): too slow for float32 training.
2. `erf_rational32`     used for float32: a branch-free odd rational approximation on the input
                        clamped to [-4, 4] (erf(4) = 1 - 1.5e-8, already 1 in float32), the
                        coefficients of Eigen's float erf (within 6.5e-8 of erf in exact
                        arithmetic). Only multiplies, adds and one divide, all in float32 (every
                        constant is a float32, or numba would widen the sums to float64), so LLVM
                        vectorises it 16 lanes wide (AVX-512). With float32 rounding at each step,
                        gelu and gelu' stay within 1e-6 (1 + |z|) of the exact values; the tests
                        hold them to that bound.
3. `bias_gelu_forward` / `bias_gelu_backward` (float64, exact erf) and their float32 twins
   `bias_gelu_forward32` / `bias_gelu_backward32`: the fused passes over the (R, M) activations.
   The backward's Gaussian density takes its exp from one vectorised sweep per row
   (`exp_inplace` / `exp32_inplace`, kernels/numba_exp.py) instead of a scalar libm call
   per element.
"""

import math
from typing import NamedTuple

import numpy as np
from numba import njit, prange

from .numba_exp import exp32_inplace, exp_inplace
from .numba_linear import CHUNK_ROWS, FASTMATH, rows, sum_partials

_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)

# erf(x) ~= x * P(x^2) / Q(x^2) on [-4, 4]: odd numerator, even denominator (Eigen's float erf).
_P = (-1.60960333262415e-02, -2.95459980854025e-03, -7.34990630326855e-04, -5.69250639462346e-05,
      -2.10102402082508e-06, 2.77068142495902e-08, -2.72614225801306e-10)  # fmt: skip
_Q = (-1.42647390514189e-02, -7.37332916720468e-03, -1.68282697438203e-03, -2.13374055278905e-04,
      -1.45660718464996e-05)  # fmt: skip


_P32 = tuple(np.float32(c) for c in _P)
_Q32 = tuple(np.float32(c) for c in _Q)
_FOUR_32, _HALF_32, _ONE_32 = np.float32(4.0), np.float32(0.5), np.float32(1.0)
_INV_SQRT2_32, _INV_SQRT_2PI_32 = np.float32(_INV_SQRT2), np.float32(_INV_SQRT_2PI)


@njit(fastmath=FASTMATH, cache=True, inline="always")
def erf_rational32(x):
    """erf(x) ~= x P(x^2) / Q(x^2) on x clamped to [-4, 4] (the _P, _Q above), in float32
    arithmetic for a float32 x."""
    x = min(max(x, -_FOUR_32), _FOUR_32)
    x2 = x * x
    p = _P32[6]
    p = p * x2 + _P32[5]
    p = p * x2 + _P32[4]
    p = p * x2 + _P32[3]
    p = p * x2 + _P32[2]
    p = p * x2 + _P32[1]
    p = p * x2 + _P32[0]
    q = _Q32[4]
    q = q * x2 + _Q32[3]
    q = q * x2 + _Q32[2]
    q = q * x2 + _Q32[1]
    q = q * x2 + _Q32[0]
    return x * p / q


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def bias_gelu_forward32(h, bias, out):
    """float32: h (R, M) += bias in place (h becomes the cache, z); out = gelu(z)."""
    R, M = h.shape
    for r in prange(R):
        for j in range(M):
            z = h[r, j] + bias[j]
            h[r, j] = z
            out[r, j] = _HALF_32 * z * (_ONE_32 + erf_rational32(z * _INV_SQRT2_32))


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def bias_gelu_backward32(dout, z, dz):
    """float32: dz = dout * gelu'(z), (R, M); returns dbias (M,), summed in float64 per chunk of rows."""
    R, M = z.shape
    chunks = (R + CHUNK_ROWS - 1) // CHUNK_ROWS
    partial = np.zeros((chunks, M), dtype=np.float64)
    for c in prange(chunks):
        gauss = np.empty(M, dtype=np.float32)  # exp(-z^2 / 2) of one row
        bits = np.empty(M, dtype=np.int32)
        for r in range(c * CHUNK_ROWS, min(R, (c + 1) * CHUNK_ROWS)):
            for j in range(M):
                x = z[r, j]
                gauss[j] = -_HALF_32 * x * x
            exp32_inplace(gauss, bits)
            for j in range(M):
                x = z[r, j]
                cdf = _HALF_32 * (_ONE_32 + erf_rational32(x * _INV_SQRT2_32))
                g = dout[r, j] * (cdf + x * _INV_SQRT_2PI_32 * gauss[j])
                dz[r, j] = g
                partial[c, j] += g
    return sum_partials(partial, z.dtype)


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def bias_gelu_forward(h, bias, out):
    """float64: h (R, M) += bias in place (h becomes the cache, the pre-activation z); out = gelu(z)."""
    R, M = h.shape
    for r in prange(R):
        for j in range(M):
            z = np.float64(h[r, j] + bias[j])
            h[r, j] = z
            out[r, j] = z * (0.5 * math.erfc(-z * _INV_SQRT2))  # erfc: no cancellation for z << 0


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def bias_gelu_backward(dout, z, dz):
    """float64: dz = dout * gelu'(z), (R, M); returns dbias (M,) = sum over rows of dz, from the same pass."""
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
                cdf = 0.5 * math.erfc(-x * _INV_SQRT2)
                pdf = _INV_SQRT_2PI * gauss[j]
                g = dout[r, j] * (cdf + x * pdf)
                dz[r, j] = g
                partial[c, j] += dz[r, j]
    return sum_partials(partial, z.dtype)


class LinearGeluCache(NamedTuple):
    x: np.ndarray  # (..., in)
    weight: np.ndarray  # (in, M)
    z: np.ndarray  # (R, M) the pre-activation x @ W + b


def linear_gelu_forward(x, weight, bias):
    """gelu(x @ W + b): (..., in) -> (..., M)."""
    h = rows(x) @ weight  # (R, M), fresh from BLAS; becomes z in place
    out = np.empty_like(h)
    if h.dtype == np.float32:
        bias_gelu_forward32(h, bias.astype(np.float32, copy=False), out)
    else:
        bias_gelu_forward(h, bias, out)
    return out.reshape(*x.shape[:-1], weight.shape[1]), LinearGeluCache(x, weight, h)


def linear_gelu_backward(dout, cache):
    """dout (..., M) -> dx (..., in), dweight (in, M), dbias (M,)."""
    x, weight, z = cache
    dz = np.empty_like(z)
    if z.dtype == np.float32:
        dbias = bias_gelu_backward32(np.ascontiguousarray(rows(dout), np.float32), z, dz)
    else:
        dbias = bias_gelu_backward(rows(dout), z, dz)
    dx = dz @ weight.T  # (R, in)
    dweight = rows(x).T @ dz  # (in, M)
    return dx.reshape(x.shape), dweight, dbias

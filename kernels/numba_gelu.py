"""Numba CPU kernels for fc1 + exact GELU (the specification is tinyvit.layers.gelu).

gelu(z) = 0.5 z (1 + erf(z / sqrt 2)),  gelu'(z) = Phi(z) + z phi(z).

In the first three variants the product x @ W is numba_linear's 3_pool (BLAS on
numba's threads, kernels/numba_matmul.py; numba_linear's ladder shows that step);
what changes is the pass over its (R, M) output: the bias add and
GELU in forward, gelu' and the bias gradient in backward.

Variants, plain to fast (VARIANTS: name -> (forward, backward), the last is the default):
1_erf_loops     the formula as written, one element after another: z = h + b, then
                0.5 z (1 + math.erf(z / sqrt 2)), and in backward math.erf and math.exp per
                element, in float64. Each is a scalar libm call (~0.2 G elements/s per core),
                and 1 + erf cancels in the far negative tail (relative accuracy is lost there;
                the absolute error stays ~1e-16).
2_erfc_rows     rows in parallel, the bias add fused into the GELU pass (in place in the fresh
                product, which becomes the cache z), Phi(z) = erfc(-z / sqrt 2) / 2 as in the
                reference (no cancellation), and the backward's Gaussian density from one
                vectorised exp sweep per row (`exp_inplace`, kernels/numba_exp.py) instead of a
                libm call per element; gelu' and dbias in the same pass. Exact in float64: it
                agrees with the reference to 1e-10. Still a scalar erfc call per element.
3_rational32    for float32, GELU in float32 arithmetic: erf as a branch-free odd rational
                function (`erf_rational32`) on the input clamped to [-4, 4] (erf(4) = 1 - 1.5e-8,
                already 1 in float32), with the coefficients of Eigen's float erf (within 6.5e-8
                of erf in exact arithmetic), and exp from `exp32_inplace`. Only multiplies, adds
                and one divide, every constant a float32 (a Python float would widen the sums to
                float64), so LLVM vectorises it 16 lanes wide (AVX-512). With float32 rounding at
                each step, gelu and gelu' stay within 1e-6 (1 + |z|) of the exact values; the
                tests hold them to that bound. float64 arrays take 2_erfc_rows's exact kernels.
4_fused         3_rational32's pass in the product's epilogue (as numba_linear's 4_fused_bias):
                each thread works through its block of rows CHUNK_ROWS at a time, one BLAS call
                per chunk, then the bias and GELU on that chunk while it is in the core's cache,
                instead of a pass that reads the whole (R, M) product back from memory (51 MB at
                batch 256 for cifar-small). Backward is 3_rational32's.
"""

import math
from typing import NamedTuple

import numpy as np
from numba import njit, prange

from .numba_exp import exp32_inplace, exp_inplace
from .numba_linear import CHUNK_ROWS, FASTMATH, rows, sum_partials
from .numba_matmul import gemm, matmul, matmul_tn, operand, pool_parts, row_chunks

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


# -- 1_erf_loops ----------------------------------------------------------------------------------


@njit(cache=True)
def bias_gelu_forward_loops(h, bias, out):
    """h (R, M) += bias in place (h becomes the cache, z); out = gelu(z), one element after another."""
    R, M = h.shape
    for r in range(R):
        for j in range(M):
            z = np.float64(h[r, j] + bias[j])
            h[r, j] = z
            out[r, j] = 0.5 * z * (1.0 + math.erf(z * _INV_SQRT2))


@njit(cache=True)
def bias_gelu_backward_loops(dout, z, dz):
    """dz = dout * gelu'(z), (R, M); returns dbias (M,), the column sums of dz."""
    R, M = z.shape
    dbias = np.zeros((1, M), dtype=np.float64)
    for r in range(R):
        for j in range(M):
            x = np.float64(z[r, j])
            cdf = 0.5 * (1.0 + math.erf(x * _INV_SQRT2))  # Phi(x)
            pdf = _INV_SQRT_2PI * math.exp(-0.5 * x * x)  # phi(x)
            g = dout[r, j] * (cdf + x * pdf)
            dz[r, j] = g
            dbias[0, j] += g
    return sum_partials(dbias, z.dtype)


# -- 2_erfc_rows (and 3_rational32 on float64) -----------------------------------------------------


@njit(fastmath=FASTMATH, cache=True, inline="always")
def bias_gelu_row(h, bias, out, r):
    """float64, row r: h[r] += bias in place; out[r] = gelu(h[r])."""
    for j in range(h.shape[1]):
        z = np.float64(h[r, j] + bias[j])
        h[r, j] = z
        out[r, j] = z * (0.5 * math.erfc(-z * _INV_SQRT2))  # erfc: no cancellation for z << 0


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def bias_gelu_forward(h, bias, out):
    """float64: h (R, M) += bias in place (h becomes the cache, the pre-activation z); out = gelu(z)."""
    for r in prange(h.shape[0]):
        bias_gelu_row(h, bias, out, r)


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


# -- 3_rational32 (float32) -----------------------------------------------------------------------


@njit(fastmath=FASTMATH, cache=True, inline="always")
def erf_rational32(x):
    """erf(x) ~= x P(x^2) / Q(x^2), x clamped to [-4, 4], in float32 arithmetic, for a float32 x."""
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


@njit(fastmath=FASTMATH, cache=True, inline="always")
def bias_gelu_row32(h, bias, out, r):
    """float32, row r: h[r] += bias in place; out[r] = gelu(h[r])."""
    for j in range(h.shape[1]):
        z = h[r, j] + bias[j]
        h[r, j] = z
        out[r, j] = _HALF_32 * z * (_ONE_32 + erf_rational32(z * _INV_SQRT2_32))


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def bias_gelu_forward32(h, bias, out):
    """float32: h (R, M) += bias in place (h becomes the cache, z); out = gelu(z)."""
    for r in prange(h.shape[0]):
        bias_gelu_row32(h, bias, out, r)


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


class LinearGeluCache(NamedTuple):
    x: np.ndarray  # (..., in)
    weight: np.ndarray  # (in, M)
    z: np.ndarray  # (R, M) the pre-activation x @ W + b


def _forward(kernel, x, weight, bias, kernel32=None):
    h = matmul(rows(x), weight)  # (R, M), a fresh array; becomes z in place
    out = np.empty_like(h)
    if kernel32 is not None and h.dtype == np.float32:
        kernel = kernel32
    kernel(h, bias.astype(h.dtype, copy=False), out)
    return out.reshape(*x.shape[:-1], weight.shape[1]), LinearGeluCache(x, weight, h)


def _backward(kernel, dout, cache, kernel32=None):
    x, weight, z = cache
    dz = np.empty_like(z)
    if kernel32 is not None and z.dtype == np.float32:
        kernel = kernel32
    dbias = kernel(np.ascontiguousarray(rows(dout), z.dtype), z, dz)
    dx = matmul(dz, weight.T)  # (R, in)
    dweight = matmul_tn(rows(x), dz)  # (in, M)
    return dx.reshape(x.shape), dweight, dbias


def linear_gelu_forward_loops(x, weight, bias):
    """gelu(x @ W + b): (..., in) -> (..., M), GELU with math.erf per element."""
    return _forward(bias_gelu_forward_loops, x, weight, bias)


def linear_gelu_backward_loops(dout, cache):
    """dout (..., M) -> dx (..., in), dweight (in, M), dbias (M,), gelu' with math.erf and math.exp."""
    return _backward(bias_gelu_backward_loops, dout, cache)


def linear_gelu_forward_erfc(x, weight, bias):
    """gelu(x @ W + b): (..., in) -> (..., M), rows in parallel, exact erfc in float64."""
    return _forward(bias_gelu_forward, x, weight, bias)


def linear_gelu_backward_erfc(dout, cache):
    """dout (..., M) -> dx (..., in), dweight (in, M), dbias (M,), rows in parallel."""
    return _backward(bias_gelu_backward, dout, cache)


def linear_gelu_forward_rational(x, weight, bias):
    """gelu(x @ W + b): (..., in) -> (..., M); float32 in float32 arithmetic, float64 exact."""
    return _forward(bias_gelu_forward, x, weight, bias, kernel32=bias_gelu_forward32)


def linear_gelu_backward(dout, cache):
    """dout (..., M) -> dx (..., in), dweight (in, M), dbias (M,)."""
    return _backward(bias_gelu_backward, dout, cache, kernel32=bias_gelu_backward32)


# -- 4_fused --------------------------------------------------------------------------------------


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def product_gelu_chunks(x, weight, weight_transposed, bias, z, out, parts):
    """z (R, M) = x (R, K) @ op(weight) + bias and out = gelu(z), written: each of `parts` threads
    takes a block of rows, one product per CHUNK_ROWS rows, each chunk's GELU while it is in cache."""
    for t in prange(parts):
        for c0, c1 in row_chunks(t, parts, z.shape[0], CHUNK_ROWS):
            gemm(x[c0:c1], False, weight, weight_transposed, z[c0:c1], 1.0, 0.0)
            for r in range(c0, c1):
                if z.itemsize == 4:
                    bias_gelu_row32(z, bias, out, r)
                else:
                    bias_gelu_row(z, bias, out, r)


def linear_gelu_forward(x, weight, bias):
    """gelu(x @ W + b): (..., in) -> (..., M), the bias and GELU in the product's epilogue, chunk by
    chunk (as 3_rational32 where the products do not run on numba's pool)."""
    x2 = rows(x)
    parts = pool_parts(x2.shape[0])
    if not parts:
        return linear_gelu_forward_rational(x, weight, bias)
    z = np.empty((x2.shape[0], weight.shape[1]), dtype=np.result_type(x2, weight))
    out = np.empty_like(z)
    product_gelu_chunks(x2, *operand(weight), bias.astype(z.dtype, copy=False), z, out, parts)
    return out.reshape(*x.shape[:-1], weight.shape[1]), LinearGeluCache(x, weight, z)


VARIANTS = {
    "1_erf_loops": (linear_gelu_forward_loops, linear_gelu_backward_loops),
    "2_erfc_rows": (linear_gelu_forward_erfc, linear_gelu_backward_erfc),
    "3_rational32": (linear_gelu_forward_rational, linear_gelu_backward),
    "4_fused": (linear_gelu_forward, linear_gelu_backward),
}

"""Numba CPU kernels for the linear layer y = x @ W + b (the specification is tinyvit.layers.linear).

The matrix products go to BLAS: NumPy's matmul on 2-D views (every leading
position is one row), which measured as fast as `np.dot` inside an njit
function for every shape the model uses, and which reads the transposed
weight in backward as a flag to sgemm, never as a copy. Numba does the passes
over memory around the products.

Variants, plain to fast:
1. `add_bias_rows`      the bias added in one parallel pass over the GEMM output, in place in
                        that fresh buffer; teaches `prange` over rows and that a broadcast add
                        is memory-bound, so the only speed-up is not making a second array.
2. `column_sums`        the bias gradient sum_rows dout: rows split into chunks, one partial
                        sum per chunk (in parallel), then the few partials added; teaches a
                        parallel reduction without atomics, accumulated in float64.
"""

import numpy as np
from numba import njit, prange

from tinyvit.layers.linear import LinearCache

# Fast-math flags that are safe here: reassociation lets LLVM vectorise sums, contraction
# allows FMA, nsz ignores the sign of zero. No 'nnan'/'ninf': inputs may hold any finite value.
FASTMATH = {"reassoc", "contract", "nsz"}
# Rows per partial sum in a parallel reduction: big enough to amortise, small enough to spread.
CHUNK_ROWS = 256


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def add_bias_rows(out, bias):
    """out (R, F) += bias (F,), in place, rows in parallel."""
    R, F = out.shape
    for r in prange(R):
        for f in range(F):
            out[r, f] += bias[f]


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def column_sums(x):
    """x (R, F) -> (F,) sums over rows, in x's dtype, accumulated per chunk in float64."""
    R, F = x.shape
    chunks = (R + CHUNK_ROWS - 1) // CHUNK_ROWS
    partial = np.zeros((chunks, F), dtype=np.float64)
    for c in prange(chunks):
        for r in range(c * CHUNK_ROWS, min(R, (c + 1) * CHUNK_ROWS)):
            for f in range(F):
                partial[c, f] += x[r, f]
    return sum_partials(partial, x.dtype)


@njit(fastmath=FASTMATH, cache=True)
def sum_partials(partial, dtype):
    """(chunks, F) float64 partial sums -> (F,) totals in `dtype`: the last, serial step of a chunked reduction."""
    chunks, F = partial.shape
    total = np.zeros(F, dtype=dtype)
    for f in range(F):
        s = 0.0
        for c in range(chunks):
            s += partial[c, f]
        total[f] = s
    return total


def rows(x):
    """Any (..., F) array as a C-contiguous (R, F) view (a copy only when x is not contiguous)."""
    return np.ascontiguousarray(x).reshape(-1, x.shape[-1])


def linear_forward(x, weight, bias):
    """(..., in) @ (in, out) + (out,) -> (..., out): sgemm, then the bias in one pass."""
    x2 = rows(x)
    out = x2 @ weight  # (R, out), a fresh buffer from BLAS
    add_bias_rows(out, bias)
    return out.reshape(*x.shape[:-1], weight.shape[1]), LinearCache(x, weight)


def linear_backward(dout, cache):
    """dout (..., out) -> dx (..., in), dweight (in, out), dbias (out,)."""
    x, weight = cache
    d2 = rows(dout)
    dx = d2 @ weight.T  # (R, in); weight.T is a transposed view, sgemm reads it as such
    dweight = rows(x).T @ d2  # (in, out): sum over rows of the outer products x^T dout
    return dx.reshape(x.shape), dweight, column_sums(d2)

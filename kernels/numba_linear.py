"""Numba CPU kernels for the linear layer y = x @ W + b (the specification is tinyvit.layers.linear).

Variants, plain to fast (VARIANTS: name -> (forward, backward), the last is the default):
1_loops        the product as three loops in njit, in (row, in, out) order so the innermost
               loop walks a row of W and a row of the output: contiguous, so LLVM vectorises
               it. Backward is the same loops for dx = dout W^T and dW = x^T dout. Teaches
               the arithmetic; a few GFLOP/s, against hundreds for BLAS.
2_blas         the products go to BLAS: NumPy's matmul on 2-D views (every leading position
               is one row), which reads the transposed weight in backward as a flag to sgemm,
               never a copy. Numba does the passes over memory around them: the bias added in
               one parallel pass, in place in the fresh product (`add_bias_rows`: a broadcast
               add is memory-bound, so the only gain is not making a second array), and the
               bias gradient as a parallel reduction without atomics (`column_sums`: one
               float64 partial sum per chunk of rows, then the few partials added).
3_pool         the same passes, the products on numba's thread pool rather than BLAS's: each
               thread computes a block of rows with one single-threaded BLAS call
               (kernels/numba_matmul.py), so a step's products and loops share one pool whose
               threads never have to be woken (where that pool is OpenMP; else as 2_blas).
4_fused_bias   the bias added in the product's epilogue: each thread works through its block of
               rows CHUNK_ROWS at a time, one BLAS call per chunk, and adds the bias to a chunk
               right after its product, while the chunk is still in the core's cache (256 rows
               of qkv's 576 outputs are 590 KB). 3_pool's bias pass reads the whole output back
               from memory once more: qkv's, 38 MB at batch 256, does not fit the cache (on 2
               cores the qkv layer's forward 4% faster, cifar-small's inference pass 8%;
               docs/benchmarks.md). Backward is 3_pool's.
"""

import numpy as np
from numba import njit, prange

from tinyvit.layers.linear import LinearCache

from .numba_matmul import gemm, matmul, matmul_tn, operand, pool_parts, row_chunks

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


# -- 1_loops ------------------------------------------------------------------------------------


@njit(fastmath=FASTMATH, cache=True)
def matmul_loops(a, b, out):
    """out (R, F) = a (R, K) @ b (K, F), written; the innermost loop runs along rows of b and out."""
    R, K = a.shape
    F = b.shape[1]
    for r in range(R):
        for f in range(F):
            out[r, f] = 0.0
        for k in range(K):
            ark = a[r, k]
            for f in range(F):
                out[r, f] += ark * b[k, f]


def linear_forward_loops(x, weight, bias):
    """(..., in) -> (..., out) with the product written as loops."""
    x2 = rows(x)
    out = np.empty((x2.shape[0], weight.shape[1]), dtype=x2.dtype)
    matmul_loops(x2, np.ascontiguousarray(weight), out)
    add_bias_rows(out, bias)
    return out.reshape(*x.shape[:-1], weight.shape[1]), LinearCache(x, weight)


def linear_backward_loops(dout, cache):
    """dout (..., out) -> dx (..., in), dweight (in, out), dbias (out,), the products as loops."""
    x, weight = cache
    d2, x2 = rows(dout), rows(x)
    dx = np.empty(x2.shape, dtype=d2.dtype)
    matmul_loops(d2, np.ascontiguousarray(weight.T), dx)  # (R, in)
    dweight = np.empty(weight.shape, dtype=d2.dtype)
    matmul_loops(np.ascontiguousarray(x2.T), d2, dweight)  # (in, out)
    return dx.reshape(x.shape), dweight, column_sums(d2)


# -- 2_blas ---------------------------------------------------------------------------------------


def linear_forward_blas(x, weight, bias):
    """(..., in) @ (in, out) + (out,) -> (..., out): sgemm, then the bias in one pass."""
    x2 = rows(x)
    out = x2 @ weight  # (R, out), a fresh buffer from BLAS
    add_bias_rows(out, bias)
    return out.reshape(*x.shape[:-1], weight.shape[1]), LinearCache(x, weight)


def linear_backward_blas(dout, cache):
    """dout (..., out) -> dx (..., in), dweight (in, out), dbias (out,)."""
    x, weight = cache
    d2 = rows(dout)
    dx = d2 @ weight.T  # (R, in); weight.T is a transposed view, sgemm reads it as such
    dweight = rows(x).T @ d2  # (in, out): sum over rows of the outer products x^T dout
    return dx.reshape(x.shape), dweight, column_sums(d2)


# -- 3_pool ---------------------------------------------------------------------------------------


def linear_forward_pool(x, weight, bias):
    """(..., in) @ (in, out) + (out,) -> (..., out): the product on numba's pool, then the bias."""
    x2 = rows(x)
    out = matmul(x2, weight)  # (R, out), a fresh array
    add_bias_rows(out, bias)
    return out.reshape(*x.shape[:-1], weight.shape[1]), LinearCache(x, weight)


def linear_backward(dout, cache):
    """dout (..., out) -> dx (..., in), dweight (in, out), dbias (out,)."""
    x, weight = cache
    d2 = rows(dout)
    dx = matmul(d2, weight.T)  # (R, in); weight.T is F-contiguous, BLAS reads it as such
    dweight = matmul_tn(rows(x), d2)  # (in, out): sum over rows of the outer products x^T dout
    return dx.reshape(x.shape), dweight, column_sums(d2)


# -- 4_fused_bias ---------------------------------------------------------------------------------


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def product_bias_chunks(x, weight, weight_transposed, bias, out, parts):
    """out (R, F) = x (R, K) @ op(weight) + bias (F,), written: each of `parts` threads takes a block
    of rows, one product per CHUNK_ROWS rows, the bias added to each chunk while it is in cache."""
    for t in prange(parts):
        for c0, c1 in row_chunks(t, parts, out.shape[0], CHUNK_ROWS):
            gemm(x[c0:c1], False, weight, weight_transposed, out[c0:c1], 1.0, 0.0)
            for r in range(c0, c1):
                for f in range(out.shape[1]):
                    out[r, f] += bias[f]


def linear_forward(x, weight, bias):
    """(..., in) @ (in, out) + (out,) -> (..., out): the bias in the product's epilogue, chunk by chunk
    (as 3_pool where the products do not run on numba's pool)."""
    x2 = rows(x)
    parts = pool_parts(x2.shape[0])
    if not parts:
        return linear_forward_pool(x, weight, bias)
    out = np.empty((x2.shape[0], weight.shape[1]), dtype=np.result_type(x2, weight))
    product_bias_chunks(x2, *operand(weight), bias.astype(out.dtype, copy=False), out, parts)
    return out.reshape(*x.shape[:-1], weight.shape[1]), LinearCache(x, weight)


VARIANTS = {
    "1_loops": (linear_forward_loops, linear_backward_loops),
    "2_blas": (linear_forward_blas, linear_backward_blas),
    "3_pool": (linear_forward_pool, linear_backward),
    "4_fused_bias": (linear_forward, linear_backward),
}

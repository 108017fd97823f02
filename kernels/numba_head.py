"""Numba CPU kernels for the model options of the official checkpoints (the specification
is tinyvit.layers.gelu_tanh and tinyvit.layers.head): fc1 with the tanh form of GELU, the
position embedding without a class token ("gap" models), global average pooling over the
tokens, and the tanh of pre_logits. These models are loaded for inference and fine-tuning,
not the CIFAR training loop, so each op has two rungs, the plain loop and the parallel one.
Every rung computes in the array's dtype's precision or better; sums over the batch or the
tokens accumulate in float64.

Variants, plain to fast, one table per op (name -> (forward, backward), the last is the default):
GELU_TANH_VARIANTS   fc1 + tanh GELU; the product x @ W as numba_linear's 3_pool in both rungs, what changes
                     is the pass over its (R, M) output.
    1_loops          the formula as written, one element after another: z = h + b (written
                     over the fresh product, which becomes the cache), then
                     0.5 z (1 + tanh(c (z + a z^3))) with `math.tanh`, in float64; backward
                     gelu'(z) per element, dbias summed in the same pass.
    2_parallel       the same pass with rows in parallel (`prange`); backward's dbias by
                     `column_sums`, a parallel reduction without atomics. As numba_gelu.py's
                     2_erfc_rows does for the erf form.
POS_EMBED_VARIANTS   x (B, N, D) + the (N, D) table.
    1_loops          out[b, n, d] = x[b, n, d] + table[n, d], one image after another; backward
                     reads dout once for dx and for the table's gradient, the sum over images.
    2_parallel       images in parallel, each one flat row of N*D values; the table's gradient
                     by `column_sums`.
TOKEN_MEAN_VARIANTS  the mean over the N tokens, (B, N, D) -> (B, D).
    1_loops          for each image and feature, the sum over tokens, then / N: the inner loop
                     steps through memory D values at a time.
    2_parallel       images in parallel, and the loops swapped: a float64 row of D sums per image,
                     each token's D values added in memory order. Backward, every token gets
                     1/N of dout, written in parallel.
TANH_VARIANTS        pre_logits' activation, elementwise; backward dout (1 - tanh^2) from the output.
    1_loops          one element after another with `math.tanh`.
    2_parallel       rows in parallel.
"""

import math
from typing import NamedTuple

import numpy as np
from numba import njit, prange

from tinyvit.layers.gelu_tanh import A, C
from tinyvit.layers.head import PosEmbedCache, TanhCache, TokenMeanCache

from .numba_linear import column_sums, rows, sum_partials
from .numba_matmul import matmul, matmul_tn

# -- fc1 + tanh GELU ------------------------------------------------------------------------------


@njit(cache=True)
def bias_gelu_tanh_forward_loops(h, bias, out):
    """h (R, M) += bias in place (h becomes the cache, z); out = gelu_tanh(z), one element after another."""
    R, M = h.shape
    for r in range(R):
        for j in range(M):
            z = np.float64(h[r, j] + bias[j])
            h[r, j] = z
            u = C * (z + A * z * z * z)
            out[r, j] = 0.5 * z * (1.0 + math.tanh(u))


@njit(cache=True)
def bias_gelu_tanh_backward_loops(dout, z, dz):
    """dz = dout * gelu_tanh'(z), (R, M); returns dbias (M,), the column sums of dz, from the same pass."""
    R, M = z.shape
    dbias = np.zeros((1, M), dtype=np.float64)
    for r in range(R):
        for j in range(M):
            x = np.float64(z[r, j])
            t = math.tanh(C * (x + A * x * x * x))
            du = C * (1.0 + 3.0 * A * x * x)  # d/dx of u = c (x + a x^3)
            g = dout[r, j] * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du)  # product rule, tanh' = 1 - tanh^2
            dz[r, j] = g
            dbias[0, j] += dz[r, j]
    return sum_partials(dbias, z.dtype)


@njit(parallel=True, cache=True)
def bias_gelu_tanh_forward(h, bias, out):
    """h (R, M) += bias in place (h becomes the cache, the pre-activation z); out = gelu_tanh(z)."""
    R, M = h.shape
    for r in prange(R):
        for j in range(M):
            z = np.float64(h[r, j] + bias[j])
            h[r, j] = z
            out[r, j] = 0.5 * z * (1.0 + math.tanh(C * (z + A * z * z * z)))


@njit(parallel=True, cache=True)
def bias_gelu_tanh_backward(dout, z, dz):
    """dz = dout * gelu_tanh'(z), (R, M), the derivative written out in tinyvit.layers.gelu_tanh."""
    R, M = z.shape
    for r in prange(R):
        for j in range(M):
            x = np.float64(z[r, j])
            t = math.tanh(C * (x + A * x * x * x))
            dz[r, j] = dout[r, j] * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * C * (1.0 + 3.0 * A * x * x))


class LinearGeluTanhCache(NamedTuple):
    x: np.ndarray  # (..., in)
    weight: np.ndarray  # (in, M)
    z: np.ndarray  # (R, M) the pre-activation x @ W + b


def _linear_gelu_tanh_forward(kernel, x, weight, bias):
    h = matmul(rows(x), weight)  # (R, M), a fresh array; becomes z in place
    out = np.empty_like(h)
    kernel(h, bias.astype(h.dtype, copy=False), out)
    return out.reshape(*x.shape[:-1], weight.shape[1]), LinearGeluTanhCache(x, weight, h)


def _linear_gelu_tanh_backward(dz, dbias, cache):
    """The linear layer's backward, from dz (R, M) and its column sums dbias (M,)."""
    x, weight, _ = cache
    dx = matmul(dz, weight.T)  # (R, in)
    return dx.reshape(x.shape), matmul_tn(rows(x), dz), dbias


def linear_gelu_tanh_forward_loops(x, weight, bias):
    """gelu_tanh(x @ W + b): (..., in) -> (..., M); the GELU pass one element after another."""
    return _linear_gelu_tanh_forward(bias_gelu_tanh_forward_loops, x, weight, bias)


def linear_gelu_tanh_backward_loops(dout, cache):
    """dout (..., M) -> dx (..., in), dweight (in, M), dbias (M,); gelu' one element after another."""
    z = cache.z
    dz = np.empty_like(z)
    dbias = bias_gelu_tanh_backward_loops(np.ascontiguousarray(rows(dout), z.dtype), z, dz)
    return _linear_gelu_tanh_backward(dz, dbias, cache)


def linear_gelu_tanh_forward(x, weight, bias):
    """gelu_tanh(x @ W + b): (..., in) -> (..., M); rows in parallel."""
    return _linear_gelu_tanh_forward(bias_gelu_tanh_forward, x, weight, bias)


def linear_gelu_tanh_backward(dout, cache):
    """dout (..., M) -> dx (..., in), dweight (in, M), dbias (M,); rows in parallel."""
    z = cache.z
    dz = np.empty_like(z)
    bias_gelu_tanh_backward(np.ascontiguousarray(rows(dout), z.dtype), z, dz)
    return _linear_gelu_tanh_backward(dz, column_sums(dz), cache)


# -- position embedding without a class token -----------------------------------------------------


@njit(cache=True)
def pos_embed_rows_forward_loops(x, pos_embed, out):
    """out (B, N, D) = x (B, N, D) + pos_embed (N, D), one image after another."""
    B, N, D = x.shape
    for b in range(B):
        for n in range(N):
            for d in range(D):
                out[b, n, d] = x[b, n, d] + pos_embed[n, d]


@njit(cache=True)
def pos_embed_rows_backward_loops(dout, dx):
    """dx (B, N, D) = dout, written; returns dpos_embed (N, D), dout summed over the images in float64."""
    B, N, D = dout.shape
    acc = np.zeros((N, D), dtype=np.float64)
    for b in range(B):
        for n in range(N):
            for d in range(D):
                dx[b, n, d] = dout[b, n, d]
                acc[n, d] += dout[b, n, d]
    return acc.astype(dout.dtype)


@njit(parallel=True, cache=True)
def _add_table(x, table, out):
    """out[b] = x[b] + table for x (B, T): the table broadcast over the batch."""
    B, T = x.shape
    for b in prange(B):
        for t in range(T):
            out[b, t] = x[b, t] + table[t]


def pos_embed_forward_loops(x, pos_embed):
    """x (B, N, D) + pos_embed (N, D) -> (B, N, D), one image after another."""
    out = np.empty(x.shape, x.dtype)
    pos_embed_rows_forward_loops(np.ascontiguousarray(x), np.ascontiguousarray(pos_embed), out)
    return out, PosEmbedCache(x.shape[0])


def pos_embed_backward_loops(dout, cache):
    """dout (B, N, D) -> dx (B, N, D), dpos_embed (N, D) = dout summed over the batch; one image after another."""
    dx = np.empty(dout.shape, dout.dtype)
    dpos = pos_embed_rows_backward_loops(np.ascontiguousarray(dout), dx)
    return dx, dpos


def pos_embed_forward(x, pos_embed):
    """x (B, N, D) + pos_embed (N, D) -> (B, N, D); images in parallel."""
    B = x.shape[0]
    out = np.empty(x.shape, x.dtype)  # C order, whatever x's: out.reshape(B, -1) is a view
    _add_table(rows(x.reshape(B, -1)), pos_embed.reshape(-1), out.reshape(B, -1))
    return out, PosEmbedCache(B)


def pos_embed_backward(dout, cache):
    """dout (B, N, D) -> dx (B, N, D), dpos_embed (N, D) = dout summed over the batch."""
    B, N, D = dout.shape
    return dout.copy(), column_sums(rows(dout.reshape(B, N * D))).reshape(N, D)


# -- the mean over tokens -------------------------------------------------------------------------


@njit(cache=True)
def _token_mean_loops(x, out):
    """out (B, D) = the mean of x (B, N, D) over its N tokens, one sum after another."""
    B, N, D = x.shape
    for b in range(B):
        for d in range(D):
            s = 0.0  # float64
            for n in range(N):
                s += x[b, n, d]  # D values apart in memory
            out[b, d] = s / N


@njit(cache=True)
def _token_mean_backward_loops(dout, dx):
    """dx (B, N, D): every token's share dout / N, one element after another."""
    B, N, D = dx.shape
    for b in range(B):
        for n in range(N):
            for d in range(D):
                dx[b, n, d] = dout[b, d] / N


@njit(parallel=True, cache=True)
def _token_mean(x, out):
    """out (B, D) = the mean of x (B, N, D) over its N tokens; images in parallel, memory read in order."""
    B, N, D = x.shape
    for b in prange(B):
        acc = np.zeros(D, dtype=np.float64)
        for n in range(N):
            for d in range(D):
                acc[d] += x[b, n, d]
        for d in range(D):
            out[b, d] = acc[d] / N


@njit(parallel=True, cache=True)
def _token_mean_backward(dout, dx):
    """dx (B, N, D): every token's share dout / N; images in parallel."""
    B, N, D = dx.shape
    for b in prange(B):
        for n in range(N):
            for d in range(D):
                dx[b, n, d] = dout[b, d] / N


def _mean_over_tokens(kernel, x):
    x = np.ascontiguousarray(x)
    out = np.empty((x.shape[0], x.shape[2]), x.dtype)
    kernel(x, out)
    return out, TokenMeanCache(x.shape[1])


def _share_over_tokens(kernel, dout, cache):
    B, D = dout.shape
    dx = np.empty((B, cache.num_tokens, D), dout.dtype)
    kernel(np.ascontiguousarray(dout), dx)
    return dx


def token_mean_forward_loops(x):
    """x (B, N, D) -> (B, D), the mean over tokens; one sum after another."""
    return _mean_over_tokens(_token_mean_loops, x)


def token_mean_backward_loops(dout, cache):
    """dout (B, D) -> dx (B, N, D), each token 1/N of dout; one element after another."""
    return _share_over_tokens(_token_mean_backward_loops, dout, cache)


def token_mean_forward(x):
    """x (B, N, D) -> (B, D), the mean over tokens; images in parallel."""
    return _mean_over_tokens(_token_mean, x)


def token_mean_backward(dout, cache):
    """dout (B, D) -> dx (B, N, D), each token 1/N of dout; images in parallel."""
    return _share_over_tokens(_token_mean_backward, dout, cache)


# -- tanh -----------------------------------------------------------------------------------------


@njit(cache=True)
def _tanh_loops(x, out):
    """out = tanh(x) over flat, equal-length arrays, one element after another."""
    for i in range(x.size):
        out[i] = math.tanh(x[i])


@njit(cache=True)
def _tanh_backward_loops(dout, y, dx):
    """dx = dout (1 - y^2) over flat arrays, y = tanh(x) the forward's output."""
    for i in range(y.size):
        dx[i] = dout[i] * (1.0 - y[i] * y[i])


@njit(parallel=True, cache=True)
def _tanh_rows(x, out):
    """out (R, F) = tanh(x); rows in parallel."""
    R, F = x.shape
    for r in prange(R):
        for f in range(F):
            out[r, f] = math.tanh(x[r, f])


@njit(parallel=True, cache=True)
def _tanh_backward_rows(dout, y, dx):
    """dx (R, F) = dout (1 - y^2), y = tanh(x) the forward's output; rows in parallel."""
    R, F = y.shape
    for r in prange(R):
        for f in range(F):
            dx[r, f] = dout[r, f] * (1.0 - y[r, f] * y[r, f])


def tanh_forward_loops(x):
    """Elementwise tanh, any shape; one element after another."""
    out = np.empty(x.shape, x.dtype)  # C order: out.reshape(-1) is a view
    _tanh_loops(np.ascontiguousarray(x).reshape(-1), out.reshape(-1))
    return out, TanhCache(out)


def tanh_backward_loops(dout, cache):
    """dout * (1 - tanh^2), any shape; one element after another."""
    y = cache.out
    dx = np.empty(y.shape, y.dtype)
    _tanh_backward_loops(np.ascontiguousarray(dout, y.dtype).reshape(-1), y.reshape(-1), dx.reshape(-1))
    return dx


def tanh_forward(x):
    """Elementwise tanh, (..., F); rows in parallel."""
    out = np.empty(x.shape, x.dtype)
    _tanh_rows(rows(x), out.reshape(-1, x.shape[-1]))
    return out, TanhCache(out)


def tanh_backward(dout, cache):
    """dout * (1 - tanh^2), (..., F); rows in parallel."""
    y = cache.out
    dx = np.empty(y.shape, y.dtype)
    _tanh_backward_rows(np.ascontiguousarray(rows(dout), y.dtype), rows(y), dx.reshape(-1, y.shape[-1]))
    return dx


GELU_TANH_VARIANTS = {
    "1_loops": (linear_gelu_tanh_forward_loops, linear_gelu_tanh_backward_loops),
    "2_parallel": (linear_gelu_tanh_forward, linear_gelu_tanh_backward),
}
POS_EMBED_VARIANTS = {
    "1_loops": (pos_embed_forward_loops, pos_embed_backward_loops),
    "2_parallel": (pos_embed_forward, pos_embed_backward),
}
TOKEN_MEAN_VARIANTS = {
    "1_loops": (token_mean_forward_loops, token_mean_backward_loops),
    "2_parallel": (token_mean_forward, token_mean_backward),
}
TANH_VARIANTS = {
    "1_loops": (tanh_forward_loops, tanh_backward_loops),
    "2_parallel": (tanh_forward, tanh_backward),
}

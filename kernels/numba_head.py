"""Numba CPU kernels for the model options of the official checkpoints (the specification
is tinyvit.layers.gelu_tanh and tinyvit.layers.head):

1. `bias_gelu_tanh_forward` / `bias_gelu_tanh_backward`: fc1's bias add and the tanh form of
   GELU fused into one pass over the (R, M) activations, as numba_gelu.py does for the erf
   form; the product x @ W goes to BLAS. Plain scalar loops over `math.tanh`: these models
   are loaded for inference and fine-tuning, not the CIFAR training loop the erf form is tuned for.
2. `pos_embed_forward` / `pos_embed_backward`: the position embedding without a class token
   ("gap" models); the gradient of the shared table sums over the batch.
3. `token_mean_forward` / `token_mean_backward`: global average pooling over the tokens.
4. `tanh_forward` / `tanh_backward`: the activation of pre_logits.

Each loop runs over rows in parallel (`prange`) and computes in the array's dtype's
precision or better; sums over the batch or the tokens accumulate in float64.
"""

import math
from typing import NamedTuple

import numpy as np
from numba import njit, prange

from tinyvit.layers.gelu_tanh import A, C
from tinyvit.layers.head import PosEmbedCache, TanhCache, TokenMeanCache

from .numba_linear import column_sums, rows


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


def linear_gelu_tanh_forward(x, weight, bias):
    """gelu_tanh(x @ W + b): (..., in) -> (..., M)."""
    h = rows(x) @ weight  # (R, M), fresh from BLAS; becomes z in place
    out = np.empty_like(h)
    bias_gelu_tanh_forward(h, bias.astype(h.dtype, copy=False), out)
    return out.reshape(*x.shape[:-1], weight.shape[1]), LinearGeluTanhCache(x, weight, h)


def linear_gelu_tanh_backward(dout, cache):
    """dout (..., M) -> dx (..., in), dweight (in, M), dbias (M,)."""
    x, weight, z = cache
    dz = np.empty_like(z)
    bias_gelu_tanh_backward(np.ascontiguousarray(rows(dout), z.dtype), z, dz)
    dx = dz @ weight.T  # (R, in)
    return dx.reshape(x.shape), rows(x).T @ dz, column_sums(dz)


@njit(parallel=True, cache=True)
def _add_table(x, table, out):
    """out[b] = x[b] + table for x (B, T): the table broadcast over the batch."""
    B, T = x.shape
    for b in prange(B):
        for t in range(T):
            out[b, t] = x[b, t] + table[t]


def pos_embed_forward(x, pos_embed):
    """x (B, N, D) + pos_embed (N, D) -> (B, N, D)."""
    B = x.shape[0]
    out = np.empty_like(x)
    _add_table(rows(x.reshape(B, -1)), pos_embed.reshape(-1), out.reshape(B, -1))
    return out, PosEmbedCache(B)


def pos_embed_backward(dout, cache):
    """dout (B, N, D) -> dx (B, N, D), dpos_embed (N, D) = dout summed over the batch."""
    B, N, D = dout.shape
    return dout.copy(), column_sums(rows(dout.reshape(B, N * D))).reshape(N, D)


@njit(parallel=True, cache=True)
def _token_mean(x, out):
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
    B, N, D = dx.shape
    for b in prange(B):
        for n in range(N):
            for d in range(D):
                dx[b, n, d] = dout[b, d] / N


def token_mean_forward(x):
    """x (B, N, D) -> (B, D), the mean over tokens."""
    x = np.ascontiguousarray(x)
    out = np.empty((x.shape[0], x.shape[2]), x.dtype)
    _token_mean(x, out)
    return out, TokenMeanCache(x.shape[1])


def token_mean_backward(dout, cache):
    """dout (B, D) -> dx (B, N, D), each token 1/N of dout."""
    B, D = dout.shape
    dx = np.empty((B, cache.num_tokens, D), dout.dtype)
    _token_mean_backward(np.ascontiguousarray(dout), dx)
    return dx


@njit(parallel=True, cache=True)
def _tanh_rows(x, out):
    R, F = x.shape
    for r in prange(R):
        for f in range(F):
            out[r, f] = math.tanh(x[r, f])


@njit(parallel=True, cache=True)
def _tanh_backward_rows(dout, y, dx):
    R, F = y.shape
    for r in prange(R):
        for f in range(F):
            dx[r, f] = dout[r, f] * (1.0 - y[r, f] * y[r, f])


def tanh_forward(x):
    """Elementwise tanh, (..., F)."""
    out = np.empty(x.shape, x.dtype)
    _tanh_rows(rows(x), out.reshape(-1, x.shape[-1]))
    return out, TanhCache(out)


def tanh_backward(dout, cache):
    """dout * (1 - tanh^2)."""
    y = cache.out
    dx = np.empty(y.shape, y.dtype)
    _tanh_backward_rows(np.ascontiguousarray(rows(dout), y.dtype), rows(y), dx.reshape(-1, y.shape[-1]))
    return dx

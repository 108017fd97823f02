"""numba.cuda kernels for the model options of the official checkpoints (the specification
is tinyvit.layers.gelu_tanh and tinyvit.layers.head):

1. linear + GELU in its tanh form: after the matmul, one kernel adds the bias, keeps the
   pre-activation and writes gelu_tanh of it; backward is one elementwise kernel, then
   the linear layer's backward (cuda_linear), as cuda_gelu.py does for the erf form.
2. the position embedding without a class token: one elementwise add with the (N, D) table
   broadcast over the batch; its gradient is a column sum over the batch (cuda_reduce).
3. the mean over tokens: one thread per (b, d) sums its N tokens; backward spreads dout / N.
4. tanh for pre_logits, forward and backward, elementwise.
"""

import math
from typing import NamedTuple

from numba import cuda

from tinyvit.layers.gelu_tanh import A, C
from tinyvit.layers.head import PosEmbedCache, TanhCache, TokenMeanCache

from . import cuda_common as common
from .cuda_linear import LinearCache, check_linear, linear_backward, linear_matmul


class LinearGeluTanhCache(NamedTuple):
    linear: LinearCache
    pre: object  # (..., out) device array: x @ W + b, the GELU's input


@cuda.jit
def _bias_gelu_tanh_kernel(h, bias, out):
    i = cuda.grid(1)
    if i < h.size:
        z = h[i] + bias[i % bias.size]
        h[i] = z
        out[i] = 0.5 * z * (1.0 + math.tanh(C * (z + A * z * z * z)))


@cuda.jit
def _gelu_tanh_backward_kernel(dout, pre, dpre):
    i = cuda.grid(1)
    if i < pre.size:
        x = pre[i]
        t = math.tanh(C * (x + A * x * x * x))
        dpre[i] = dout[i] * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * C * (1.0 + 3.0 * A * x * x))


def linear_gelu_tanh_forward(x, weight, bias):
    """gelu_tanh(x @ W + b): (..., in) -> (..., out)."""
    check_linear(x, weight, bias)
    pre = linear_matmul(x, weight)  # fresh: the kernel turns it into the pre-activation in place
    out = common.empty(pre.shape, pre.dtype)
    blocks, threads = common.element_grid(pre.size)
    _bias_gelu_tanh_kernel[blocks, threads](common.flat(pre), bias, common.flat(out))
    return out, LinearGeluTanhCache(LinearCache(x, weight), pre)


def linear_gelu_tanh_backward(dout, cache):
    """dout (..., out) -> dx (..., in), dweight (in, out), dbias (out,)."""
    pre = cache.pre
    common.check_device("dout", dout, dtype=pre.dtype)
    common.check_same_shape("pre", pre, "dout", dout)
    dpre = common.empty(pre.shape, pre.dtype)
    blocks, threads = common.element_grid(pre.size)
    _gelu_tanh_backward_kernel[blocks, threads](common.flat(dout), common.flat(pre), common.flat(dpre))
    return linear_backward(dpre, cache.linear)


@cuda.jit
def _add_table_kernel(x, table, out):
    """out = x + table, the table repeated along x's flat index (broadcast over the batch)."""
    i = cuda.grid(1)
    if i < x.size:
        out[i] = x[i] + table[i % table.size]


def pos_embed_forward(x, pos_embed):
    """x (B, N, D) + pos_embed (N, D) -> (B, N, D)."""
    common.check_device("x", x, ndim=3)
    common.check_device("pos_embed", pos_embed, ndim=2, dtype=x.dtype)
    B, N, D = x.shape
    if tuple(pos_embed.shape) != (N, D):
        raise ValueError(f"pos_embed must have shape ({N}, {D}), got {tuple(pos_embed.shape)}")
    out = common.empty(x.shape, x.dtype)
    blocks, threads = common.element_grid(x.size)
    _add_table_kernel[blocks, threads](common.flat(x), common.flat(pos_embed), common.flat(out))
    return out, PosEmbedCache(B)


def pos_embed_backward(dout, cache):
    """dout (B, N, D) -> dx (B, N, D), dpos_embed (N, D) = dout summed over the batch."""
    from .cuda_elementwise import copy
    from .cuda_reduce import column_sum

    common.check_device("dout", dout, ndim=3)
    B, N, D = dout.shape
    return copy(dout), column_sum(dout.reshape(B, N * D)).reshape(N, D)


@cuda.jit
def _token_mean_kernel(x, out):
    i = cuda.grid(1)
    B, N, D = x.shape
    if i < B * D:
        b, d = i // D, i % D
        acc = 0.0
        for n in range(N):
            acc += x[b, n, d]
        out[b, d] = acc / N


@cuda.jit
def _token_mean_backward_kernel(dout, dx):
    i = cuda.grid(1)
    _, N, D = dx.shape
    if i < dx.size:
        b, d = i // (N * D), i % D
        dx[b, (i // D) % N, d] = dout[b, d] / N


def token_mean_forward(x):
    """x (B, N, D) -> (B, D), the mean over tokens."""
    common.check_device("x", x, ndim=3)
    B, N, D = x.shape
    out = common.empty((B, D), x.dtype)
    blocks, threads = common.element_grid(B * D)
    _token_mean_kernel[blocks, threads](x, out)
    return out, TokenMeanCache(N)


def token_mean_backward(dout, cache):
    """dout (B, D) -> dx (B, N, D), each token 1/N of dout."""
    common.check_device("dout", dout, ndim=2)
    B, D = dout.shape
    dx = common.empty((B, cache.num_tokens, D), dout.dtype)
    blocks, threads = common.element_grid(dx.size)
    _token_mean_backward_kernel[blocks, threads](dout, dx)
    return dx


@cuda.jit
def _tanh_kernel(x, out):
    i = cuda.grid(1)
    if i < x.size:
        out[i] = math.tanh(x[i])


@cuda.jit
def _tanh_backward_kernel(dout, y, dx):
    i = cuda.grid(1)
    if i < y.size:
        dx[i] = dout[i] * (1.0 - y[i] * y[i])


def tanh_forward(x):
    """Elementwise tanh."""
    common.check_device("x", x)
    out = common.empty(x.shape, x.dtype)
    blocks, threads = common.element_grid(x.size)
    _tanh_kernel[blocks, threads](common.flat(x), common.flat(out))
    return out, TanhCache(out)


def tanh_backward(dout, cache):
    """dout * (1 - tanh^2)."""
    y = cache.out
    common.check_device("dout", dout, dtype=y.dtype)
    common.check_same_shape("tanh output", y, "dout", dout)
    dx = common.empty(y.shape, y.dtype)
    blocks, threads = common.element_grid(y.size)
    _tanh_backward_kernel[blocks, threads](common.flat(dout), common.flat(y), common.flat(dx))
    return dx

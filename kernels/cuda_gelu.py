"""Linear + GELU on the GPU, with the bias add and the GELU fused into one pass.

gelu(h) = h * Phi(h) = 0.5 h (1 + erf(h / sqrt 2)), the exact erf form (math.erf
runs inside CUDA kernels).

Variants (one each):
1. bias + GELU forward: after the matmul h = x @ W, one kernel reads h once,
   adds the bias, keeps the pre-activation (backward needs it) and writes
   gelu of it: two separate passes would read and write the (rows, M) matrix twice.
2. GELU backward: dh = dout * (Phi(h) + h phi(h)), elementwise; then the
   linear layer's backward (cuda_linear) does the rest.

The specification is tinyvit.layers.gelu.
"""

import math
from typing import NamedTuple

from numba import cuda

from . import cuda_common as common
from .cuda_linear import LinearCache, check_linear, linear_backward, linear_matmul

_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


class LinearGeluCache(NamedTuple):
    linear: LinearCache
    pre: object  # (..., out) device array: x @ W + b, the GELU's input


@cuda.jit
def _bias_gelu_kernel(h, bias, out):
    """h (n,) flat <- h + bias (the pre-activation, kept); out = gelu(h + bias)."""
    i = cuda.grid(1)
    if i < h.size:
        z = h[i] + bias[i % bias.size]
        h[i] = z
        out[i] = z * (0.5 * math.erfc(-z * _INV_SQRT2))  # erfc: no cancellation for z << 0


@cuda.jit
def _gelu_backward_kernel(dout, pre, dpre):
    """dpre = dout * (Phi(pre) + pre * phi(pre)): the Gaussian CDF plus pre times its density."""
    i = cuda.grid(1)
    if i < pre.size:
        z = pre[i]
        cdf = 0.5 * math.erfc(-z * _INV_SQRT2)
        pdf = _INV_SQRT_2PI * math.exp(-0.5 * z * z)
        dpre[i] = dout[i] * (cdf + z * pdf)


def linear_gelu_forward(x, weight, bias):
    """gelu(x @ W + b): (..., in) -> (..., out)."""
    check_linear(x, weight, bias)
    pre = linear_matmul(x, weight)  # fresh, so the kernel may turn it into the pre-activation in place
    out = common.empty(pre.shape, pre.dtype)
    blocks, threads = common.element_grid(pre.size)
    _bias_gelu_kernel[blocks, threads](common.flat(pre), bias, common.flat(out))
    return out, LinearGeluCache(LinearCache(x, weight), pre)


def gelu_backward(dout, pre):
    """dout, pre (...) -> dpre (...), a fresh array."""
    common.check_device("dout", dout, dtype=pre.dtype)
    common.check_same_shape("pre", pre, "dout", dout)
    dpre = common.empty(pre.shape, pre.dtype)
    blocks, threads = common.element_grid(pre.size)
    _gelu_backward_kernel[blocks, threads](common.flat(dout), common.flat(pre), common.flat(dpre))
    return dpre


def linear_gelu_backward(dout, cache):
    """dout (..., out) -> dx (..., in), dweight (in, out), dbias (out,)."""
    return linear_backward(gelu_backward(dout, cache.pre), cache.linear)

"""GELU, the exact erf form: gelu(x) = x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2)).

Phi is computed as 0.5 * erfc(-x / sqrt 2), the same value, without the
cancellation of 1 + erf(...) in the far negative tail.

Also the fused linear + GELU used by each block's fc1, written here as the
plain composition of the two layers; fast backends fuse the bias add and GELU
into one pass over memory.
"""

import math
from typing import NamedTuple

import numpy as np

from .linear import linear_backward, linear_forward
from .xp import erfc, namespace

_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


class GeluCache(NamedTuple):
    x: np.ndarray


def gelu_forward(x):
    """Elementwise, any shape."""
    out = x * (0.5 * erfc(-x * _INV_SQRT2))
    return out.astype(x.dtype, copy=False), GeluCache(x)


def gelu_backward(dout, cache):
    """d gelu / dx = Phi(x) + x phi(x): the Gaussian CDF plus x times its density."""
    x = cache.x
    cdf = 0.5 * erfc(-x * _INV_SQRT2)
    pdf = _INV_SQRT_2PI * namespace(x).exp(-0.5 * x * x)
    return (dout * (cdf + x * pdf)).astype(x.dtype, copy=False)


class LinearGeluCache(NamedTuple):
    linear: tuple
    gelu: GeluCache


def linear_gelu_forward(x, weight, bias):
    """gelu(x @ W + b): (..., in) -> (..., out)."""
    h, linear_cache = linear_forward(x, weight, bias)
    out, gelu_cache = gelu_forward(h)
    return out, LinearGeluCache(linear_cache, gelu_cache)


def linear_gelu_backward(dout, cache):
    """dout (..., out) -> dx (..., in), dweight (in, out), dbias (out,)."""
    dh = gelu_backward(dout, cache.gelu)
    return linear_backward(dh, cache.linear)

"""GELU, the tanh approximation: gelu(x) ~ 0.5 x (1 + tanh(c (x + a x^3))), c = sqrt(2/pi), a = 0.044715.

Flax's `nn.gelu` computes this form by default, so the official ViT checkpoints
were trained with it; the exact erf form (gelu.py) is what the paper writes and
timm computes. The two differ by up to about 3e-4 in value near |x| ~ 2, enough to
move a large model's logits past a 1e-4 comparison: a model computes the form
its weights were trained with (ViTConfig.gelu).

Also the linear + GELU of each block's fc1 in this form, as a plain composition.
"""

import math
from typing import NamedTuple

import numpy as np

from .linear import linear_backward, linear_forward
from .xp import namespace

C = math.sqrt(2.0 / math.pi)
A = 0.044715


class GeluTanhCache(NamedTuple):
    x: np.ndarray


def gelu_tanh_forward(x):
    """Elementwise, any shape."""
    t = namespace(x).tanh(C * (x + A * x * x * x))
    return (0.5 * x * (1.0 + t)).astype(x.dtype, copy=False), GeluTanhCache(x)


def gelu_tanh_backward(dout, cache):
    """With u = c (x + a x^3) and t = tanh(u):
    d/dx [0.5 x (1 + t)] = 0.5 (1 + t) + 0.5 x (1 - t^2) c (1 + 3 a x^2),
    the product rule, with tanh' = 1 - tanh^2 and du/dx = c (1 + 3 a x^2)."""
    x = cache.x
    t = namespace(x).tanh(C * (x + A * x * x * x))
    grad = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * C * (1.0 + 3.0 * A * x * x)
    return (dout * grad).astype(x.dtype, copy=False)


class LinearGeluTanhCache(NamedTuple):
    linear: tuple
    gelu: GeluTanhCache


def linear_gelu_tanh_forward(x, weight, bias):
    """gelu_tanh(x @ W + b): (..., in) -> (..., out)."""
    h, linear_cache = linear_forward(x, weight, bias)
    out, gelu_cache = gelu_tanh_forward(h)
    return out, LinearGeluTanhCache(linear_cache, gelu_cache)


def linear_gelu_tanh_backward(dout, cache):
    """dout (..., out) -> dx (..., in), dweight (in, out), dbias (out,)."""
    return linear_backward(gelu_tanh_backward(dout, cache.gelu), cache.linear)

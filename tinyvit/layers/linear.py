"""Linear layer y = x @ W + b, over the last axis of any leading shape.

Used for the patch embedding, qkv, the attention projection, fc1, fc2 and the
head. Weights are (in, out), so a row vector goes in on the left.
"""

from typing import NamedTuple

import numpy as np


class LinearCache(NamedTuple):
    x: np.ndarray  # (..., in)
    weight: np.ndarray  # (in, out)


def linear_forward(x, weight, bias):
    """(..., in) @ (in, out) + (out,) -> (..., out)."""
    return x @ weight + bias, LinearCache(x, weight)


def linear_backward(dout, cache):
    """dout (..., out) -> dx (..., in), dweight (in, out), dbias (out,)."""
    x, weight = cache
    x2 = x.reshape(-1, x.shape[-1])  # every leading position is one row of the batch
    d2 = dout.reshape(-1, dout.shape[-1])
    dx = dout @ weight.T
    dweight = x2.T @ d2  # sum over rows of the outer products x^T dout
    dbias = d2.sum(axis=0)
    return dx, dweight, dbias

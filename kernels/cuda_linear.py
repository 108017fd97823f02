"""The linear layer y = x @ W + b on the GPU: matmuls plus a bias pass.

forward:  y = x2 @ W (cuda_matmul), then the bias is added by an elementwise kernel;
backward: dx = dout @ W^T, dW = x2^T @ dout (the transposed forms of the same
matmul kernels, no transposed copies), db = the column sums of dout (cuda_reduce).
x2 is x with every leading axis folded into rows, a view, not a copy.

The specification is tinyvit.layers.linear.
"""


from tinyvit.layers.linear import LinearCache

from . import cuda_common as common
from .cuda_elementwise import add_bias_
from .cuda_matmul import matmul
from .cuda_reduce import column_sum


def check_linear(x, weight, bias):
    common.check_device("x", x)
    common.check_device("weight", weight, ndim=2, dtype=x.dtype)
    common.check_device("bias", bias, ndim=1, dtype=x.dtype)
    if tuple(x.shape)[-1] != weight.shape[0] or tuple(bias.shape) != (weight.shape[1],):
        raise ValueError(
            f"linear needs x (..., in), weight (in, out), bias (out,); got x {tuple(x.shape)}, "
            f"weight {tuple(weight.shape)}, bias {tuple(bias.shape)}"
        )


def linear_matmul(x, weight):
    """x (..., in) @ weight (in, out) -> (..., out), without the bias."""
    y2 = matmul(common.rows_view(x), weight)  # (rows, out)
    return y2.reshape(*tuple(x.shape)[:-1], weight.shape[1])


def linear_forward(x, weight, bias):
    """(..., in) @ (in, out) + (out,) -> (..., out)."""
    check_linear(x, weight, bias)
    y = linear_matmul(x, weight)
    add_bias_(common.rows_view(y), bias)
    return y, LinearCache(x, weight)


def linear_backward(dout, cache):
    """dout (..., out) -> dx (..., in), dweight (in, out), dbias (out,)."""
    x, weight = cache
    common.check_device("dout", dout, dtype=x.dtype)
    if tuple(dout.shape) != (*tuple(x.shape)[:-1], weight.shape[1]):
        raise ValueError(f"dout must be {(*tuple(x.shape)[:-1], weight.shape[1])}, got {tuple(dout.shape)}")
    d2, x2 = common.rows_view(dout), common.rows_view(x)
    dx = matmul(d2, weight, trans_b=True).reshape(x.shape)  # dout @ W^T
    dweight = matmul(x2, d2, trans_a=True)  # x^T @ dout: the sum over rows of outer products
    dbias = column_sum(d2)
    return dx, dweight, dbias

"""LayerNorm on the GPU: one block per row, block reductions for the row statistics.

Variants (one kernel each; the reduction inside is what varies, see cuda_reduce):
1. forward: a block owns one row of D values; its threads stride over the row,
   block_sum gives the mean, a second pass and block_sum give the (biased)
   variance, a third pass writes (x - mean) * rstd * weight + bias. Two passes
   for the variance, like the specification, rather than E[x^2] - mean^2, which
   cancels badly in float32.
2. backward dx: per row, two block sums (of g and of g * xhat, g = dout * weight),
   then dx = rstd * (g - mean(g) - xhat * mean(g * xhat)).
3. backward dweight, dbias: column sums over all rows of dout * xhat and dout,
   xhat recomputed from x, mean and rstd; rows are split into chunks over the
   grid's second axis and the partial sums added with atomics (as the chunked
   column sum of cuda_reduce).
4. the residual add fused with the LayerNorm after it (add_layernorm_*): forward
   writes s = x + h and normalises it in the same block (variant 1 on s), and
   backward adds the residual stream's gradient ds to each row of dx as variant 2
   writes it: one pass over the rows saved each way. The row work of variants 1
   and 2 is one device function each, shared by the plain and the fused kernels.

The block reduction is warp shuffles on a GPU, shared memory under the
simulator (cuda_reduce.block_sum). The specification is tinyvit.layers.layernorm.
"""

import math
from typing import NamedTuple

from numba import cuda, float64

from tinyvit.layers.layernorm import EPS

from . import cuda_common as common
from . import cuda_reduce
from .cuda_common import MAX_ROW_THREADS
from .cuda_elementwise import fill
from .cuda_reduce import block_sum, reduce_threads


class LayerNormCache(NamedTuple):
    x: object  # (..., D) device array
    weight: object  # (D,)
    mean: object  # (rows,)
    rstd: object  # (rows,)


@cuda.jit(device=True)
def _normalise_row(x, weight, bias, eps, out, mean, rstd, r, scratch):
    """Row r of x (rows, D) -> row r of out; mean[r], rstd[r] written. The block's threads stride over the row."""
    t, nt = cuda.threadIdx.x, cuda.blockDim.x
    D = x.shape[1]
    acc = 0.0
    for j in range(t, D, nt):
        acc += x[r, j]
    mu = block_sum(acc, scratch) / D
    acc = 0.0
    for j in range(t, D, nt):
        d = x[r, j] - mu
        acc += d * d
    rs = 1.0 / math.sqrt(block_sum(acc, scratch) / D + eps)
    for j in range(t, D, nt):
        out[r, j] = (x[r, j] - mu) * rs * weight[j] + bias[j]
    if t == 0:
        mean[r] = mu
        rstd[r] = rs


@cuda.jit(device=True)
def _row_dx(dout, x, weight, mean, rstd, dx, r, scratch):
    """Row r: dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dout * weight."""
    t, nt = cuda.threadIdx.x, cuda.blockDim.x
    D = x.shape[1]
    mu, rs = mean[r], rstd[r]
    sum_g, sum_gx = 0.0, 0.0
    for j in range(t, D, nt):
        g = dout[r, j] * weight[j]
        sum_g += g
        sum_gx += g * (x[r, j] - mu) * rs
    mean_g = block_sum(sum_g, scratch) / D  # the term through the mean
    mean_gx = block_sum(sum_gx, scratch) / D  # the term through the variance
    for j in range(t, D, nt):
        xhat = (x[r, j] - mu) * rs
        dx[r, j] = rs * (dout[r, j] * weight[j] - mean_g - xhat * mean_gx)


@cuda.jit
def _forward_kernel(x, weight, bias, eps, out, mean, rstd):
    """x, out (rows, D); mean, rstd (rows,). One block per row."""
    scratch = cuda.shared.array(MAX_ROW_THREADS, float64)
    _normalise_row(x, weight, bias, eps, out, mean, rstd, cuda.blockIdx.x, scratch)


@cuda.jit
def _add_forward_kernel(x, h, weight, bias, eps, s, out, mean, rstd):
    """s = x + h, then out = LayerNorm(s); all (rows, D). One block per row."""
    scratch = cuda.shared.array(MAX_ROW_THREADS, float64)
    r = cuda.blockIdx.x
    for j in range(cuda.threadIdx.x, x.shape[1], cuda.blockDim.x):
        s[r, j] = x[r, j] + h[r, j]
    # each thread reads back only the entries of s it wrote itself: no barrier needed
    _normalise_row(s, weight, bias, eps, out, mean, rstd, r, scratch)


@cuda.jit
def _backward_dx_kernel(dout, x, weight, mean, rstd, dx):
    """LayerNorm's dx. One block per row."""
    scratch = cuda.shared.array(MAX_ROW_THREADS, float64)
    _row_dx(dout, x, weight, mean, rstd, dx, cuda.blockIdx.x, scratch)


@cuda.jit
def _backward_dx_add_kernel(dout, x, weight, mean, rstd, dresid, dx):
    """dresid + LayerNorm's dx: the residual stream's own gradient added in the same pass. One block per row."""
    scratch = cuda.shared.array(MAX_ROW_THREADS, float64)
    r = cuda.blockIdx.x
    _row_dx(dout, x, weight, mean, rstd, dx, r, scratch)
    for j in range(cuda.threadIdx.x, x.shape[1], cuda.blockDim.x):  # the entries this thread wrote
        dx[r, j] = dresid[r, j] + dx[r, j]


@cuda.jit
def _param_grads_kernel(dout, x, mean, rstd, dweight, dbias, chunk):
    """dweight[c] += sum_r dout[r, c] * xhat[r, c], dbias[c] += sum_r dout[r, c] over one chunk of rows."""
    c = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    if c >= x.shape[1]:
        return
    start = cuda.blockIdx.y * chunk
    stop = min(start + chunk, x.shape[0])
    dw, db = 0.0, 0.0
    for r in range(start, stop):
        g = float64(dout[r, c])
        dw += g * (x[r, c] - mean[r]) * rstd[r]
        db += g
    cuda.atomic.add(dweight, c, dw)
    cuda.atomic.add(dbias, c, db)


def _check_params(x, weight, bias):
    """x's width D, once x, weight and bias are checked."""
    common.check_device("x", x)
    common.check_device("weight", weight, ndim=1, dtype=x.dtype)
    common.check_device("bias", bias, ndim=1, dtype=x.dtype)
    D = tuple(x.shape)[-1]
    if tuple(weight.shape) != (D,) or tuple(bias.shape) != (D,):
        raise ValueError(f"weight and bias must be ({D},) for x {tuple(x.shape)}, got {weight.shape}, {bias.shape}")
    return D


def layernorm_forward(x, weight, bias, eps=EPS):
    """(..., D) -> (..., D), normalised per row, then scaled and shifted."""
    D = _check_params(x, weight, bias)
    x2 = common.rows_view(x)
    rows = x2.shape[0]
    out = common.empty(x.shape, x.dtype)
    mean = common.empty((rows,), x.dtype)
    rstd = common.empty((rows,), x.dtype)
    if rows:
        _forward_kernel[rows, reduce_threads(D)](x2, weight, bias, float(eps), common.rows_view(out), mean, rstd)
    return out, LayerNormCache(x, weight, mean, rstd)


def layernorm_backward(dout, cache):
    """dout (..., D) -> dx (..., D), dweight (D,), dbias (D,)."""
    return _backward(dout, cache, None)


def _backward(dout, cache, dresid):
    """LayerNorm's dx, plus dresid when it is not None, and dweight, dbias."""
    x, weight, mean, rstd = cache
    common.check_device("dout", dout, dtype=x.dtype)
    common.check_same_shape("x", x, "dout", dout)
    x2, d2 = common.rows_view(x), common.rows_view(dout)
    rows, D = x2.shape
    dx = common.empty(x.shape, x.dtype)
    dweight = fill((D,), x.dtype, 0.0)
    dbias = fill((D,), x.dtype, 0.0)
    if rows:
        dx2 = common.rows_view(dx)
        if dresid is None:
            _backward_dx_kernel[rows, reduce_threads(D)](d2, x2, weight, mean, rstd, dx2)
        else:
            r2 = common.rows_view(dresid)
            _backward_dx_add_kernel[rows, reduce_threads(D)](d2, x2, weight, mean, rstd, r2, dx2)
        threads = common.ELEMENT_THREADS
        grid = (max(1, math.ceil(D / threads)), math.ceil(rows / cuda_reduce.COLUMN_CHUNK_ROWS))
        _param_grads_kernel[grid, threads](d2, x2, mean, rstd, dweight, dbias, cuda_reduce.COLUMN_CHUNK_ROWS)
    return dx, dweight, dbias


def add_layernorm_forward(x, h, weight, bias, eps=EPS):
    """x, h (..., D) -> ((s = x + h, LayerNorm(s)), cache), in one pass over the rows."""
    D = _check_params(x, weight, bias)
    common.check_device("h", h, dtype=x.dtype)
    common.check_same_shape("x", x, "h", h)
    s, out = common.empty(x.shape, x.dtype), common.empty(x.shape, x.dtype)
    s2 = common.rows_view(s)
    rows = s2.shape[0]
    mean = common.empty((rows,), x.dtype)
    rstd = common.empty((rows,), x.dtype)
    if rows:
        _add_forward_kernel[rows, reduce_threads(D)](common.rows_view(x), common.rows_view(h), weight, bias,
                                                     float(eps), s2, common.rows_view(out), mean, rstd)  # fmt: skip
    return (s, out), LayerNormCache(s, weight, mean, rstd)


def add_layernorm_backward(dout, cache):
    """dout = (ds, dy) (..., D) -> ds + LayerNorm's dx (..., D), dweight (D,), dbias (D,)."""
    ds, dy = dout
    common.check_device("ds", ds, dtype=cache.x.dtype)
    common.check_same_shape("dy", dy, "ds", ds)
    return _backward(dy, cache, ds)

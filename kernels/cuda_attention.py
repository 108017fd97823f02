"""Multi-head self-attention on the GPU: head split/merge, row softmax, batched matmuls.

One (batch, head) pair is one matrix product of the batched matmul (blockIdx.z),
so the attention of all B*H heads runs as a handful of launches:

    qkv (B, N, 3D) -split-> q, k, v (B*H, N, Dh)
    scores = q @ k^T (batched)  -> softmax per row, scaled by 1/sqrt(Dh) -> probs (B*H, N, N)
    out = probs @ v (batched)   -merge-> (B, N, D)

Variants (one each):
1. split_heads / merge_heads: gather kernels, one thread per output element,
   that move head h's Dh columns into a contiguous (N, Dh) matrix and back.
   Contiguous per-head matrices let the batched matmul read them with unit stride.
2. softmax (rows): one block per row; block_max for the row maximum (subtracting
   it avoids overflow), block_sum for the normaliser, then one pass writes the
   probabilities. Warp shuffles on a GPU, shared memory under the simulator.
3. softmax backward (rows): dscores = probs * (dprobs - sum_j dprobs * probs),
   one block_sum per row, with the 1/sqrt(Dh) of the scores folded in.

With a bias (H, N, N) on the scores (the relative position bias), the softmax kernel
adds bias[h, i] to row i of head h as it reads the scores, and the bias's gradient is
dscores summed over the batch (cuda_reduce.column_sum). The bias itself comes from the
head's table by a product with a constant one-hot matrix (rel_pos_bias_forward), as in
the specification, tinyvit.layers.rel_pos; its backward is the transposed product.

The specification is tinyvit.layers.attention.
"""

import math
from functools import lru_cache
from typing import NamedTuple

import numpy as np
from numba import cuda, float64

from tinyvit.layers.rel_pos import RelPosCache, offset_one_hot

from . import cuda_common as common
from .cuda_common import MAX_ROW_THREADS
from .cuda_elementwise import scale as scale_arrays
from .cuda_matmul import matmul
from .cuda_reduce import block_max, block_sum, column_sum, reduce_threads


class AttentionCache(NamedTuple):
    qkv_heads: object  # (3, B*H, N, Dh): q, k, v split by head
    probs: object  # (B*H, N, N)
    heads: int


@cuda.jit
def _split_heads_kernel(src, heads, dst):
    """src (B, N, S*D) -> dst (S, B*H, N, Dh): dst[s, b*H + h, n, e] = src[b, n, s*D + h*Dh + e]."""
    i = cuda.grid(1)
    if i >= dst.size:
        return
    _, BH, N, Dh = dst.shape
    s, rest = i // (BH * N * Dh), i % (BH * N * Dh)
    bh, rest = rest // (N * Dh), rest % (N * Dh)
    n, e = rest // Dh, rest % Dh
    b, h = bh // heads, bh % heads
    dst[s, bh, n, e] = src[b, n, (s * heads + h) * Dh + e]


@cuda.jit
def _merge_heads_kernel(src, heads, dst):
    """src (S, B*H, N, Dh) -> dst (B, N, S*D), the inverse of _split_heads_kernel."""
    i = cuda.grid(1)
    if i >= dst.size:
        return
    _, N, SD = dst.shape
    Dh = src.shape[3]
    b, rest = i // (N * SD), i % (N * SD)
    n, col = rest // SD, rest % SD
    sh, e = col // Dh, col % Dh  # sh = s * H + h
    s, h = sh // heads, sh % heads
    dst[b, n, col] = src[s, b * heads + h, n, e]


def split_heads(x, parts, heads):
    """x (B, N, parts*D) -> (parts, B*H, N, Dh), contiguous per (part, batch, head)."""
    B, N, SD = x.shape
    Dh = SD // (parts * heads)
    out = common.empty((parts, B * heads, N, Dh), x.dtype)
    blocks, threads = common.element_grid(out.size)
    _split_heads_kernel[blocks, threads](x, heads, out)
    return out


def merge_heads(x, batch, heads):
    """(parts, B*H, N, Dh) -> (B, N, parts*H*Dh)."""
    S, _, N, Dh = x.shape
    out = common.empty((batch, N, S * heads * Dh), x.dtype)
    blocks, threads = common.element_grid(out.size)
    _merge_heads_kernel[blocks, threads](x, heads, out)
    return out


@cuda.jit
def _softmax_kernel(x, scale):
    """x (rows, N) <- softmax(scale * x) per row, in place. One block per row; scale > 0."""
    scratch = cuda.shared.array(MAX_ROW_THREADS, float64)
    r = cuda.blockIdx.x
    t, nt = cuda.threadIdx.x, cuda.blockDim.x
    N = x.shape[1]
    m = -math.inf
    for j in range(t, N, nt):
        m = max(m, float64(x[r, j]))
    m = block_max(m, scratch)  # max(scale * x) = scale * max(x) because scale > 0
    acc = 0.0
    for j in range(t, N, nt):
        acc += math.exp(scale * (x[r, j] - m))
    total = block_sum(acc, scratch)
    for j in range(t, N, nt):
        x[r, j] = math.exp(scale * (x[r, j] - m)) / total


@cuda.jit
def _softmax_bias_kernel(x, scale, bias):
    """x (B*H*N, N) <- softmax(scale * x + bias[h, i]) per row, in place, for row r = (b*H + h)*N + i.
    One block per row; bias (H, N, N) is the same for every image."""
    scratch = cuda.shared.array(MAX_ROW_THREADS, float64)
    r = cuda.blockIdx.x
    t, nt = cuda.threadIdx.x, cuda.blockDim.x
    H, N = bias.shape[0], bias.shape[2]
    h, i = (r // N) % H, r % N
    m = -math.inf
    for j in range(t, N, nt):
        m = max(m, scale * x[r, j] + bias[h, i, j])
    m = block_max(m, scratch)
    acc = 0.0
    for j in range(t, N, nt):
        acc += math.exp(scale * x[r, j] + bias[h, i, j] - m)
    total = block_sum(acc, scratch)
    for j in range(t, N, nt):
        x[r, j] = math.exp(scale * x[r, j] + bias[h, i, j] - m) / total


@cuda.jit
def _softmax_backward_kernel(probs, dprobs, scale):
    """dprobs (rows, N) <- scale * probs * (dprobs - sum_j dprobs * probs), in place. One block per row."""
    scratch = cuda.shared.array(MAX_ROW_THREADS, float64)
    r = cuda.blockIdx.x
    t, nt = cuda.threadIdx.x, cuda.blockDim.x
    N = probs.shape[1]
    acc = 0.0
    for j in range(t, N, nt):
        acc += dprobs[r, j] * probs[r, j]
    dot = block_sum(acc, scratch)  # the softmax Jacobian's rank-one term
    for j in range(t, N, nt):
        dprobs[r, j] = scale * probs[r, j] * (dprobs[r, j] - dot)


def softmax_rows_(x, scale=1.0):
    """x (rows, N) <- softmax(scale * x) along each row, in place; returns x. scale must be > 0."""
    if not scale > 0:
        raise ValueError(f"softmax scale must be positive, got {scale}")
    rows, N = x.shape
    if rows and N:
        _softmax_kernel[rows, reduce_threads(N)](x, float(scale))
    return x


def softmax_backward_rows_(probs, dprobs, scale=1.0):
    """dprobs (rows, N) <- scale * the gradient through softmax, in place; returns dprobs."""
    rows, N = probs.shape
    if rows and N:
        _softmax_backward_kernel[rows, reduce_threads(N)](probs, dprobs, float(scale))
    return dprobs


def _forward(qkv, heads, bias):
    """attention_forward, with bias (H, N, N) added to every image's scores unless it is None."""
    common.check_device("qkv", qkv, ndim=3)
    B, N, three_d = qkv.shape
    heads = int(heads)
    if heads < 1 or three_d % (3 * heads):
        raise ValueError(f"qkv width {three_d} must be 3 * heads * Dh for heads={heads}")
    Dh = three_d // (3 * heads)
    parts = split_heads(qkv, 3, heads)  # (3, B*H, N, Dh)
    q, k, v = parts[0], parts[1], parts[2]
    probs = matmul(q, k, trans_b=True)  # (B*H, N, N) scores, then softmax in place
    rows = probs.reshape(B * heads * N, N)
    if bias is None:
        softmax_rows_(rows, 1.0 / math.sqrt(Dh))
    else:
        common.check_device("bias", bias, ndim=3, dtype=qkv.dtype)
        if tuple(bias.shape) != (heads, N, N):
            raise ValueError(f"bias must be (heads, N, N) = {(heads, N, N)}, got {tuple(bias.shape)}")
        if B and N:
            _softmax_bias_kernel[B * heads * N, reduce_threads(N)](rows, 1.0 / math.sqrt(Dh), bias)
    out = matmul(probs, v)  # (B*H, N, Dh)
    return merge_heads(out.reshape(1, B * heads, N, Dh), B, heads), AttentionCache(parts, probs, heads)


def attention_forward(qkv, heads):
    """qkv (B, N, 3D) -> out (B, N, D). The cache keeps q, k, v by head and probs (B*H, N, N)."""
    return _forward(qkv, heads, None)


def attention_bias_forward(qkv, bias, heads):
    """qkv (B, N, 3D), bias (H, N, N) -> out (B, N, D): attention with bias[h] added to head h's scores."""
    return _forward(qkv, heads, bias)


def _grads(dout, cache):
    """dout (B, N, D) -> dqkv (B, N, 3D) and dscores (B*H, N, N), the scores' gradient times 1/sqrt(Dh)."""
    parts, probs, heads = cache
    common.check_device("dout", dout, ndim=3, dtype=probs.dtype)
    _, BH, N, Dh = parts.shape
    B = BH // heads
    if tuple(dout.shape) != (B, N, heads * Dh):
        raise ValueError(f"dout must be {(B, N, heads * Dh)} to match the forward, got {tuple(dout.shape)}")
    q, k, v = parts[0], parts[1], parts[2]
    dout_h = split_heads(dout, 1, heads)[0]  # (B*H, N, Dh)
    dgrads = common.empty((3, BH, N, Dh), dout.dtype)  # dq, dk, dv
    dscores = matmul(dout_h, v, trans_b=True)  # dprobs = dout v^T, (B*H, N, N)
    matmul(probs, dout_h, trans_a=True, out=dgrads[2])  # dv = probs^T dout
    softmax_backward_rows_(probs.reshape(BH * N, N), dscores.reshape(BH * N, N), 1.0 / math.sqrt(Dh))
    matmul(dscores, k, out=dgrads[0])  # dq = dscores k (the scale is already in dscores)
    matmul(dscores, q, trans_a=True, out=dgrads[1])  # dk = dscores^T q
    return merge_heads(dgrads, B, heads), dscores


def attention_backward(dout, cache):
    """dout (B, N, D) -> dqkv (B, N, 3D): dq, dk, dv side by side as the columns of qkv."""
    return _grads(dout, cache)[0]


def attention_bias_backward(dout, cache):
    """dout (B, N, D) -> dqkv (B, N, 3D), dbias (H, N, N): the scores' gradient summed over the batch."""
    dqkv, dscores = _grads(dout, cache)
    BH, N, _ = dscores.shape
    H, Dh = cache.heads, cache.qkv_heads.shape[3]
    summed = column_sum(dscores.reshape(BH // H, H * N * N))  # (H*N*N,), still times 1/sqrt(Dh)
    return dqkv, scale_arrays([summed], math.sqrt(Dh))[0].reshape(H, N, N)


@lru_cache(maxsize=16)
def _device_one_hot(grid: int, max_offset: int, class_token: bool, dtype: str):
    """The specification's constant one-hot matrix (T, N*N), on the device once per grid and dtype."""
    return cuda.to_device(offset_one_hot(grid, max_offset, class_token).astype(dtype))


def rel_pos_bias_forward(table, grid, class_token):
    """table (H, 2K+1, 2K+1) -> bias (H, N, N) for a grid x grid of patches (and a class token)."""
    common.check_device("table", table, ndim=3)
    H, S, _ = table.shape
    grid, class_token = int(grid), bool(class_token)
    one_hot = _device_one_hot(grid, (S - 1) // 2, class_token, np.dtype(table.dtype).str)
    N = int(class_token) + grid * grid
    bias = matmul(table.reshape(H, S * S), one_hot)  # (H, N*N)
    return bias.reshape(H, N, N), RelPosCache(one_hot, tuple(table.shape))


def rel_pos_bias_backward(dbias, cache):
    """dbias (H, N, N) -> dtable (H, 2K+1, 2K+1): each offset's entry sums the pairs that share it."""
    common.check_device("dbias", dbias, ndim=3)
    H, N, _ = dbias.shape
    return matmul(dbias.reshape(H, N * N), cache.one_hot, trans_b=True).reshape(cache.shape)


def attention_probs(cache):
    """The attention probabilities (B, H, N, N), a device array (a view of the cache)."""
    BH, N, _ = cache.probs.shape
    return cache.probs.reshape(BH // cache.heads, cache.heads, N, N)

"""Reductions on the GPU: block-wide sums and maxima, the global gradient norm, column sums.

Variants, plain to fast:
1. block_sum_shared / block_max_shared: a tree in shared memory. Every thread
   writes its value, then half the threads add the other half's values, with a
   cuda.syncthreads() barrier between rounds: log2(threads) rounds. Teaches
   shared memory and barriers. Runs everywhere, the CUDA simulator included.
2. block_sum_warp / block_max_warp: warp shuffles. The 32 lanes of a warp swap
   registers directly with cuda.shfl_xor_sync (a butterfly: after 5 rounds every
   lane holds the warp's total), with no shared memory and no barrier; only the
   one value per warp goes through shared memory. Teaches warp-level
   programming. The CUDA simulator has no shuffles, so this variant runs only on
   a real GPU; the kernels use `block_sum` / `block_max`, which is variant 2 on
   a GPU and variant 1 under the simulator.

Kernels built on them:
- sum_of_squares: the square of the global gradient norm. A grid-stride loop,
  one block reduction, then one cuda.atomic.add per block into a float64 total.
- column_sum (bias gradients, sum over rows): variant `plain` gives each thread
  one column and walks every row (coalesced: neighbouring threads read
  neighbouring columns); variant `chunked` also splits the rows into chunks
  over a second grid axis and adds the partial sums with atomics, so a tall
  matrix with few columns still fills the GPU.

Each thread's and block's partial sums are kept in float64 (the specification,
tinyvit.optim, also sums squares in float64); the `chunked` column sum adds its
per-chunk partials atomically into an output of the gradient's dtype, so in
float32 those few additions round to float32.
"""

import math

import numpy as np
from numba import cuda, float64

from . import cuda_common as common
from .cuda_common import MAX_ROW_THREADS
from .cuda_elementwise import fill

FULL_MASK = 0xFFFFFFFF  # every lane of the warp takes part in the shuffle
WARP = 32

# Rows summed by one thread of the chunked column sum before its atomic add.
COLUMN_CHUNK_ROWS = 256
# Upper bound on the blocks of the grid-stride sum of squares.
MAX_REDUCE_BLOCKS = 1024


# -- variant 1: shared-memory tree -----------------------------------------------------------


@cuda.jit(device=True)
def block_sum_shared(val, scratch):
    """The sum of `val` over the block, returned to every thread. blockDim.x a power of two."""
    t = cuda.threadIdx.x
    scratch[t] = val
    cuda.syncthreads()
    stride = cuda.blockDim.x // 2
    while stride > 0:
        if t < stride:
            scratch[t] += scratch[t + stride]
        cuda.syncthreads()
        stride //= 2
    total = scratch[0]
    cuda.syncthreads()  # everyone has read scratch[0] before the next reduction reuses scratch
    return total


@cuda.jit(device=True)
def block_max_shared(val, scratch):
    """The maximum of `val` over the block, returned to every thread. blockDim.x a power of two."""
    t = cuda.threadIdx.x
    scratch[t] = val
    cuda.syncthreads()
    stride = cuda.blockDim.x // 2
    while stride > 0:
        if t < stride:
            scratch[t] = max(scratch[t], scratch[t + stride])
        cuda.syncthreads()
        stride //= 2
    total = scratch[0]
    cuda.syncthreads()
    return total


# -- variant 2: warp shuffles ----------------------------------------------------------------


@cuda.jit(device=True)
def warp_sum(val):
    """Butterfly over the 32 lanes: lane i adds lane i^16, i^8, ..., i^1; all lanes end with the total."""
    offset = WARP // 2
    while offset > 0:
        val += cuda.shfl_xor_sync(FULL_MASK, val, offset)
        offset //= 2
    return val


@cuda.jit(device=True)
def warp_max(val):
    offset = WARP // 2
    while offset > 0:
        val = max(val, cuda.shfl_xor_sync(FULL_MASK, val, offset))
        offset //= 2
    return val


@cuda.jit(device=True)
def block_sum_warp(val, scratch):
    """The sum of `val` over the block. blockDim.x a multiple of 32 (whole warps)."""
    lane, warp = cuda.threadIdx.x % WARP, cuda.threadIdx.x // WARP
    val = warp_sum(val)
    if lane == 0:
        scratch[warp] = val  # one partial sum per warp
    cuda.syncthreads()
    total = 0.0
    if lane < cuda.blockDim.x // WARP:
        total = scratch[lane]
    total = warp_sum(total)  # every warp sums the partials itself, so no broadcast round is needed
    cuda.syncthreads()
    return total


@cuda.jit(device=True)
def block_max_warp(val, scratch):
    """The maximum of `val` over the block. blockDim.x a multiple of 32."""
    lane, warp = cuda.threadIdx.x % WARP, cuda.threadIdx.x // WARP
    val = warp_max(val)
    if lane == 0:
        scratch[warp] = val
    cuda.syncthreads()
    total = -math.inf
    if lane < cuda.blockDim.x // WARP:
        total = scratch[lane]
    total = warp_max(total)
    cuda.syncthreads()
    return total


if common.SIMULATING:
    block_sum, block_max = block_sum_shared, block_max_shared
else:
    block_sum, block_max = block_sum_warp, block_max_warp


def reduce_threads(width: int) -> int:
    """Threads per block of a kernel that reduces rows of `width` with block_sum / block_max.

    A power of two: ROW_THREADS, or fewer for short rows (no idle threads), but on a GPU
    at least one whole warp, which the shuffles need."""
    t = min(common.row_threads(), 1 << max(0, int(width) - 1).bit_length())
    return t if common.SIMULATING else max(t, WARP)


# -- the global gradient norm ----------------------------------------------------------------


@cuda.jit
def _sum_of_squares_kernel(x, total):
    """total[0] += sum(x^2); x is 1-D, total a float64 (1,) array."""
    scratch = cuda.shared.array(MAX_ROW_THREADS, float64)
    acc = 0.0
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):  # grid-stride: any size, a fixed grid
        v = float64(x[i])
        acc += v * v
    acc = block_sum(acc, scratch)
    if cuda.threadIdx.x == 0:
        cuda.atomic.add(total, 0, acc)


def sum_of_squares(arrays) -> np.float64:
    """sum over all arrays of sum(a^2), in float64: the square of the global norm.

    One float comes back to the host, after every array has been added on the device:
    the `cuda` backend's scalars are host NumPy scalars."""
    total = fill((1,), np.float64, 0.0)
    threads = reduce_threads(common.MAX_ROW_THREADS)
    for a in arrays:
        common.check_device("array", a)
        if a.size == 0:
            continue
        blocks = min(MAX_REDUCE_BLOCKS, math.ceil(a.size / threads))
        _sum_of_squares_kernel[blocks, threads](common.flat(a), total)
    return total.copy_to_host()[0]


# -- column sums (bias gradients) ------------------------------------------------------------


@cuda.jit
def _column_sum_plain_kernel(x, out):
    """out[c] = sum_r x[r, c]: one thread per column walks every row."""
    c = cuda.grid(1)
    if c >= x.shape[1]:
        return
    acc = 0.0
    for r in range(x.shape[0]):
        acc += x[r, c]
    out[c] = acc


@cuda.jit
def _column_sum_chunked_kernel(x, out, chunk):
    """out[c] += sum of x[r, c] over the rows of chunk blockIdx.y; out starts at zero."""
    c = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    if c >= x.shape[1]:
        return
    start = cuda.blockIdx.y * chunk
    stop = min(start + chunk, x.shape[0])
    acc = 0.0
    for r in range(start, stop):
        acc += x[r, c]
    cuda.atomic.add(out, c, acc)


def column_sum(x, variant: str = "chunked"):
    """x (rows, cols) -> (cols,), the sum over rows, as a fresh array (dbias = dout summed over rows)."""
    common.check_device("x", x, ndim=2)
    rows, cols = x.shape
    threads = common.ELEMENT_THREADS
    col_blocks = max(1, math.ceil(cols / threads))
    if variant == "plain":
        out = common.empty((cols,), x.dtype)
        _column_sum_plain_kernel[col_blocks, threads](x, out)
    elif variant == "chunked":
        out = fill((cols,), x.dtype, 0.0)
        if rows:
            chunks = math.ceil(rows / COLUMN_CHUNK_ROWS)
            _column_sum_chunked_kernel[(col_blocks, chunks), threads](x, out, COLUMN_CHUNK_ROWS)
    else:
        raise ValueError(f"column_sum variant must be 'plain' or 'chunked', got {variant!r}")
    return out

"""Matrix products on the GPU (SGEMM/DGEMM): C = op(A) @ op(B), op = identity or transpose.

Every product of the model goes through `matmul`: the linear layers forward
(x @ W), their backward (dout @ W^T and x^T @ dout), and the per-(batch, head)
products of attention (q @ k^T, probs @ v, and their gradients), which are
batched: blockIdx.z picks the matrix pair.

Variants, plain to fast:
1. `tiled`: TILE x TILE threads, one output each. The block walks along K one
   tile at a time: each thread loads one element of A and one of B into shared
   memory, a barrier, then every thread reads a row of the A tile and a column
   of the B tile from fast shared memory. Each global load is reused TILE times.
   Teaches shared-memory tiling and cuda.syncthreads().
2. `regblock`: register blocking. A block computes a BM x BN tile of C with
   (BM/TM) * (BN/TN) threads, each owning a TM x TN patch of outputs held in
   registers (cuda.local.array). Per step along K a thread loads TM values of
   A and TN of B from shared memory and does TM*TN multiply-adds with them, so
   shared-memory traffic per flop drops by TM*TN / (TM+TN). The A tile is
   stored k-major so a thread's TM values sit side by side. Loads from global
   memory are ordered so neighbouring threads read neighbouring addresses
   (coalesced) for every transposed form. Teaches the idea behind every fast
   GEMM: reuse at each level of the memory hierarchy.

The tile sizes are module constants (tests use small ones so that several
blocks and ragged edges take part). Kernels are compiled per (tile sizes,
transposes, dtype): shared and local arrays need their shapes and types at
compile time. The specification is plain NumPy `@`.
"""

import functools
import math
from typing import NamedTuple

import numba
import numpy as np
from numba import cuda

from . import cuda_common as common


class Blocking(NamedTuple):
    """Tile sizes of the register-blocked kernel: block tile BM x BN, K step BK, thread patch TM x TN."""

    bm: int
    bn: int
    bk: int
    tm: int
    tn: int

    @property
    def threads(self) -> int:
        return (self.bm // self.tm) * (self.bn // self.tn)


TILE = 16  # the plain tiled kernel: TILE x TILE threads
BLOCKING = Blocking(bm=64, bn=64, bk=8, tm=4, tn=4)  # 2-D products: 256 threads, 16 outputs each
BATCHED_BLOCKING = Blocking(bm=32, bn=32, bk=8, tm=2, tn=2)  # attention's small (N, N) and (N, Dh) products
VARIANT = "regblock"
VARIANTS = ("tiled", "regblock")


def _check_blocking(bl: Blocking):
    if min(bl) < 1 or bl.bm % bl.tm or bl.bn % bl.tn or bl.threads > 1024:
        raise ValueError(f"blocking needs TM | BM, TN | BN and at most 1024 threads, got {bl}")


@functools.cache
def tiled_kernel(tile: int, trans_a: bool, trans_b: bool, dtype):
    """The plain tiled kernel for one tile size, transposes and dtype. Launch with (tile, tile) threads."""
    T = tile
    nbtype = numba.from_dtype(np.dtype(dtype))

    @cuda.jit
    def kernel(a, b, c):
        """c[z] = op(a[z]) @ op(b[z]); a, b, c are 3-D, z = blockIdx.z."""
        As = cuda.shared.array((T, T), nbtype)
        Bs = cuda.shared.array((T, T), nbtype)
        z = cuda.blockIdx.z
        ty, tx = cuda.threadIdx.y, cuda.threadIdx.x
        row = cuda.blockIdx.y * T + ty
        col = cuda.blockIdx.x * T + tx
        M, N = c.shape[1], c.shape[2]
        K = a.shape[1] if trans_a else a.shape[2]
        acc = nbtype(0)
        for k0 in range(0, K, T):
            # thread (ty, tx) loads A[row, k0 + tx] and B[k0 + ty, col]; zeros past the edges
            ka, kb = k0 + tx, k0 + ty
            va = nbtype(0)
            if row < M and ka < K:
                va = a[z, ka, row] if trans_a else a[z, row, ka]
            As[ty, tx] = va
            vb = nbtype(0)
            if kb < K and col < N:
                vb = b[z, col, kb] if trans_b else b[z, kb, col]
            Bs[ty, tx] = vb
            cuda.syncthreads()  # the whole tile is loaded before anyone reads it
            for k in range(T):
                acc += As[ty, k] * Bs[k, tx]
            cuda.syncthreads()  # everyone is done reading before the next tile overwrites it
        if row < M and col < N:
            c[z, row, col] = acc

    return kernel


@functools.cache
def regblock_kernel(blocking: Blocking, trans_a: bool, trans_b: bool, dtype):
    """The register-blocked kernel for one blocking, transposes and dtype. Launch with blocking.threads threads."""
    _check_blocking(blocking)
    BM, BN, BK, TM, TN = blocking
    THREADS_N = BN // TN  # threads along a row of the block tile
    THREADS = blocking.threads
    nbtype = numba.from_dtype(np.dtype(dtype))

    @cuda.jit
    def kernel(a, b, c):
        """c[z] = op(a[z]) @ op(b[z]); a, b, c are 3-D, z = blockIdx.z."""
        As = cuda.shared.array((BK, BM), nbtype)  # k-major: As[k, m] = A[row0 + m, k0 + k]
        Bs = cuda.shared.array((BK, BN), nbtype)
        acc = cuda.local.array((TM, TN), nbtype)  # this thread's outputs, in registers
        a_reg = cuda.local.array(TM, nbtype)
        b_reg = cuda.local.array(TN, nbtype)
        z = cuda.blockIdx.z
        t = cuda.threadIdx.x
        ty, tx = t // THREADS_N, t % THREADS_N
        row0, col0 = cuda.blockIdx.y * BM, cuda.blockIdx.x * BN
        M, N = c.shape[1], c.shape[2]
        K = a.shape[1] if trans_a else a.shape[2]
        for i in range(TM):
            for j in range(TN):
                acc[i, j] = 0
        for k0 in range(0, K, BK):
            # Cooperative load of the BM x BK tile of op(A), THREADS elements per round. The index
            # order follows A's memory order so that neighbouring threads read neighbouring addresses.
            for e in range(t, BM * BK, THREADS):
                if trans_a:  # a[z] is (K, M): m runs fastest
                    kk, m = e // BM, e % BM
                else:  # a[z] is (M, K): k runs fastest
                    m, kk = e // BK, e % BK
                r, k = row0 + m, k0 + kk
                v = nbtype(0)
                if r < M and k < K:
                    v = a[z, k, r] if trans_a else a[z, r, k]
                As[kk, m] = v
            for e in range(t, BK * BN, THREADS):
                if trans_b:  # b[z] is (N, K): k runs fastest
                    n, kk = e // BK, e % BK
                else:  # b[z] is (K, N): n runs fastest
                    kk, n = e // BN, e % BN
                col, k = col0 + n, k0 + kk
                v = nbtype(0)
                if col < N and k < K:
                    v = b[z, col, k] if trans_b else b[z, k, col]
                Bs[kk, n] = v
            cuda.syncthreads()
            for kk in range(BK):
                for i in range(TM):
                    a_reg[i] = As[kk, ty * TM + i]
                for j in range(TN):
                    b_reg[j] = Bs[kk, tx * TN + j]
                for i in range(TM):  # the outer product of a_reg and b_reg: TM*TN FMAs from TM+TN loads
                    for j in range(TN):
                        acc[i, j] += a_reg[i] * b_reg[j]
            cuda.syncthreads()
        for i in range(TM):
            r = row0 + ty * TM + i
            if r < M:
                for j in range(TN):
                    col = col0 + tx * TN + j
                    if col < N:
                        c[z, r, col] = acc[i, j]

    return kernel


def matmul(a, b, trans_a=False, trans_b=False, out=None, variant=None, tile=None, blocking=None):
    """op(a) @ op(b) on device arrays, op = transpose where asked.

    2-D: op(a) (M, K) @ op(b) (K, N) -> (M, N). Batched 3-D: (Z, M, K) @ (Z, K, N) -> (Z, M, N),
    one product per leading index (attention's batch x heads). `out`, if given, is a C-contiguous
    device array of the result's shape to write into; otherwise a fresh array is returned.
    variant: "tiled" or "regblock" (default VARIANT); tile / blocking override the module constants.
    """
    common.check_device("a", a, ndim=(2, 3))
    common.check_device("b", b, ndim=a.ndim, dtype=a.dtype)
    batched = a.ndim == 3
    a3 = a if batched else a.reshape(1, *a.shape)
    b3 = b if batched else b.reshape(1, *b.shape)
    if a3.shape[0] != b3.shape[0]:
        raise ValueError(f"batched matmul needs equal batch sizes, got {tuple(a.shape)} and {tuple(b.shape)}")
    Z = a3.shape[0]
    M, K = (a3.shape[2], a3.shape[1]) if trans_a else (a3.shape[1], a3.shape[2])
    Kb, N = (b3.shape[2], b3.shape[1]) if trans_b else (b3.shape[1], b3.shape[2])
    if K != Kb:
        raise ValueError(
            f"inner dimensions differ: op(a) is {M}x{K} (a {tuple(a.shape)}, trans_a={trans_a}), "
            f"op(b) is {Kb}x{N} (b {tuple(b.shape)}, trans_b={trans_b})"
        )
    shape = (Z, M, N) if batched else (M, N)
    if out is None:
        out = common.empty(shape, a.dtype)
    elif tuple(out.shape) != shape or np.dtype(out.dtype) != np.dtype(a.dtype):
        raise ValueError(f"out must be {shape} {a.dtype}, got {tuple(out.shape)} {out.dtype}")
    if M == 0 or N == 0 or Z == 0:
        return out
    c3 = out if batched else out.reshape(1, M, N)
    variant = VARIANT if variant is None else variant
    dtype = np.dtype(a.dtype)
    if variant == "tiled":
        T = TILE if tile is None else int(tile)
        if not 1 <= T <= 32:
            raise ValueError(f"tile must be in [1, 32] (T*T threads per block), got {T}")
        grid = (math.ceil(N / T), math.ceil(M / T), Z)
        tiled_kernel(T, bool(trans_a), bool(trans_b), dtype)[grid, (T, T)](a3, b3, c3)
    elif variant == "regblock":
        bl = blocking if blocking is not None else (BATCHED_BLOCKING if batched else BLOCKING)
        bl = Blocking(*bl)
        _check_blocking(bl)
        grid = (math.ceil(N / bl.bn), math.ceil(M / bl.bm), Z)
        regblock_kernel(bl, bool(trans_a), bool(trans_b), dtype)[grid, bl.threads](a3, b3, c3)
    else:
        raise ValueError(f"matmul variant must be one of {VARIANTS}, got {variant!r}")
    return out  # K == 0 needs nothing special: the K loop never runs and every output is 0

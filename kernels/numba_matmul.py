"""Matrix products on numba's thread pool: each thread hands its share of rows to single-threaded BLAS.

Why not let BLAS run its own threads? A training step alternates about two hundred
times between matrix products and numba's parallel loops. With two pools, one for
each, every switch must wake the other pool's threads, and an idle pool may not
keep spinning, or it takes the cores the other pool needs (tinyvit/threads.py). A
woken thread starts late, often on a core whose caches another process has used
meanwhile: the switches cost a fifth of the recipe model's 16 px step.

So the products run on numba's pool too, and that pool's threads spin briefly
between loops (the OpenMP layer with a bounded spin, tinyvit/threads.py): each
of the T threads computes a block of rows with one single-threaded BLAS call,

    out[r0:r1] = a[r0:r1] @ b                          (matmul)
    parts[t] = a[r0:r1]^T @ b[r0:r1],  out = sum_t parts[t]   (matmul_tn: the weight gradient,
                                                         a sum over rows, split among threads)

Measured on 2 cores (docs/benchmarks.md, "One pool"): the recipe model's step at
16 px 118 -> 93.5 ms, at 32 px 446 -> 407 ms. Where numba's pool is not OpenMP
(no libgomp, or the user chose another layer), its workers sleep between loops
and these products fall back to BLAS's own threads (`a @ b`), which is faster then
(145 against 118 ms at 16 px).

Each thread's block is one call of `gemm`, below: BLAS called directly, on
blocks of bigger arrays in place, which attention's kernel (4_direct in
kernels/numba_attention.py) also uses on each head's columns.
"""

import ctypes
import os

import llvmlite.binding as llvm
import numba
import numpy as np
from numba import get_num_threads, njit, prange, types
from numba.extending import get_cython_function_address

from tinyvit.threads import POOL_BLAS_PATHS, inner_blas_single_threaded

MIN_ROWS = 32  # rows per thread below which a product runs on one thread


# -- BLAS called directly, on strided blocks of bigger arrays -------------------------------------
# np.dot inside njit wants contiguous operands (it copies the others, as small fresh arrays) and
# compiles its shape checks for every layout of its operands. `gemm` calls the BLAS product itself,
# on any row-major block whose rows are contiguous: one head's columns of the attention's qkv, say,
# read in place.
#
# Which BLAS: the pool's own OpenBLAS, from the scipy-openblas32 package, set to one thread; else
# SciPy's (the one numba's np.dot calls). Both are reached through the Fortran entry point
# sgemm(transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc), every argument by address,
# under one symbol name, so the compiled kernels (and numba's cache of them) do not depend on which
# library it is. Why a library of its own: the weight gradient x^T dy reads x transposed, and
# OpenBLAS 0.3.31 packs such an operand faster than SciPy's 0.3.30 (docs/benchmarks.md, "The
# pool's own BLAS, on an AVX2 EPYC"); and one of the pool's threads per call needs a BLAS set to
# one thread, which NumPy's, running the products outside the pool, must not be.

POOL_BLAS_ENV = "TINYVIT_POOL_BLAS"  # "scipy": SciPy's BLAS even where scipy-openblas32 is installed
_FORTRAN_GEMM = types.void(*[types.voidptr] * 13)
_SGEMM = types.ExternalFunction("tinyvit_pool_sgemm", _FORTRAN_GEMM)
_DGEMM = types.ExternalFunction("tinyvit_pool_dgemm", _FORTRAN_GEMM)


def scipy_openblas32_path():
    """The file of the scipy-openblas32 package's library, or None without the package."""
    try:
        import scipy_openblas32
    except ImportError:
        return None
    return os.path.join(scipy_openblas32.get_lib_dir(), scipy_openblas32.get_library(fullname=True))


def _own_openblas():
    """(sgemm, dgemm, path) of scipy-openblas32's library set to one thread, or None where it is
    not installed or does not load (then SciPy's BLAS runs the products)."""
    try:
        path = scipy_openblas32_path()
        if path is None:
            return None
        lib = ctypes.CDLL(path)
        lib.scipy_openblas_set_num_threads(1)
        sgemm, dgemm = lib.scipy_sgemm_, lib.scipy_dgemm_
    except (OSError, AttributeError, IndexError):  # no library file, not a library, no such symbol
        return None
    POOL_BLAS_PATHS.add(os.path.realpath(path))  # set_threads keeps it at one thread
    return ctypes.cast(sgemm, ctypes.c_void_p).value, ctypes.cast(dgemm, ctypes.c_void_p).value, path


def _pool_blas():
    """Register the pool's sgemm and dgemm under the names the kernels call; the library's path."""
    own = None if os.environ.get(POOL_BLAS_ENV) == "scipy" else _own_openblas()
    if own is None:
        sgemm, dgemm = (get_cython_function_address("scipy.linalg.cython_blas", f) for f in ("sgemm", "dgemm"))
        path = "scipy"
    else:
        sgemm, dgemm, path = own
    llvm.add_symbol("tinyvit_pool_sgemm", sgemm)
    llvm.add_symbol("tinyvit_pool_dgemm", dgemm)
    return path


POOL_BLAS = _pool_blas()
# gemm inside prange calls the pool's BLAS: one thread each. Where that is a SciPy that shares
# NumPy's BLAS (no BLAS of its own), BLAS threads would nest inside numba's: the products stay on
# BLAS's pool then.
_INNER_BLAS_ALONE = inner_blas_single_threaded() or POOL_BLAS != "scipy"
_NO, _YES = ord("n"), ord("t")  # BLAS's transpose flags


@njit(cache=True)
def gemm(a, a_transposed, b, b_transposed, out, alpha, beta):
    """out = alpha op(a) op(b) + beta out, where op(x) is x or x.T: 2-D arrays whose rows may be
    strided but whose columns are contiguous, all float32 or all float64; out must not overlap a or b.

    BLAS is column-major: a row-major block x with row stride ld is, to BLAS, the column-major
    block x.T with leading dimension ld. So out.T = op(b).T op(a).T is the call BLAS gets."""
    m, n = out.shape
    k = a.shape[0] if a_transposed else a.shape[1]
    size = out.itemsize
    scalars = np.empty(2, out.dtype)  # BLAS takes every argument by address
    scalars[0], scalars[1] = alpha, beta
    flags = np.empty(2, np.uint8)  # transb, transa: one character each
    flags[0], flags[1] = _YES if b_transposed else _NO, _YES if a_transposed else _NO
    ints = np.empty(6, np.int32)  # n, m, k, ldb, lda, ldc
    ints[0], ints[1], ints[2] = n, m, k
    ints[3], ints[4], ints[5] = b.strides[0] // size, a.strides[0] // size, out.strides[0] // size
    args = (flags[0:].ctypes, flags[1:].ctypes, ints[0:].ctypes, ints[1:].ctypes, ints[2:].ctypes,
            scalars[0:].ctypes, b.ctypes, ints[3:].ctypes, a.ctypes, ints[4:].ctypes,
            scalars[1:].ctypes, out.ctypes, ints[5:].ctypes)  # fmt: skip
    if size == 4:
        _SGEMM(*args)
    else:
        _DGEMM(*args)


@njit(cache=True)
def row_chunks(t, parts, rows, chunk):
    """[(c0, c1), ...]: thread t's block of `rows` rows split `parts` ways, `chunk` rows at a time
    (the last chunk ragged), for a product whose epilogue runs on each chunk while it is in cache."""
    r0, r1 = t * rows // parts, (t + 1) * rows // parts
    return [(c0, min(r1, c0 + chunk)) for c0 in range(r0, r1, chunk)]


@njit(parallel=True, cache=True)
def _matmul_rows(a, b, b_transposed, out, parts):
    """out (R, F) = a (R, K) @ op(b), rows split into `parts` blocks, one BLAS call each."""
    R = a.shape[0]
    for t in prange(parts):
        r0, r1 = t * R // parts, (t + 1) * R // parts
        gemm(a[r0:r1], False, b, b_transposed, out[r0:r1], 1.0, 0.0)


@njit(parallel=True, cache=True)
def _matmul_tn_rows(a, b, parts):
    """parts[t] (K, F) = a[r0:r1]^T @ b[r0:r1] for the t-th block of rows of a (R, K) and b (R, F)."""
    R, T = a.shape[0], parts.shape[0]
    for t in prange(T):
        r0, r1 = t * R // T, (t + 1) * R // T
        gemm(a[r0:r1], True, b[r0:r1], False, parts[t], 1.0, 0.0)


_on_pool = None  # True when numba's pool is OpenMP: decided at the first product


def products_on_pool() -> bool:
    """Whether the products run on numba's pool (its layer is OpenMP) or on BLAS's own threads."""
    global _on_pool
    if _on_pool is None:
        one = np.ones((1, 1), np.float32)  # float32: the version training compiles anyway
        _matmul_rows(one, one, False, np.empty((1, 1), np.float32), 1)  # starts numba's pool: its layer is known
        _on_pool = _INNER_BLAS_ALONE and numba.threading_layer() == "omp"
    return _on_pool


def pool_parts(rows: int) -> int:
    """The blocks of rows, one per thread, that a product of `rows` rows is split into on numba's
    pool; 0 where it runs on BLAS's own threads instead (too few rows, or not products_on_pool())."""
    parts = max(1, min(get_num_threads(), rows // MIN_ROWS))
    return parts if parts > 1 and products_on_pool() else 0


def operand(x):
    """(x, False) with x's rows contiguous, or (x.T, True) for an F-contiguous x: what gemm reads."""
    if x.flags.c_contiguous:
        return x, False
    if x.flags.f_contiguous:
        return x.T, True
    return np.ascontiguousarray(x), False


def matmul(a, b):
    """a (R, K) @ b (K, F) -> (R, F), a fresh array; a and b C- or F-contiguous (a transposed
    weight, `w.T`, is F-contiguous and read as such)."""
    parts = pool_parts(a.shape[0])
    if not parts:
        return a @ b
    out = np.empty((a.shape[0], b.shape[1]), dtype=np.result_type(a, b))
    _matmul_rows(np.ascontiguousarray(a), *operand(b), out, parts)
    return out


def matmul_tn(a, b):
    """a^T @ b for a (R, K), b (R, F) -> (K, F): the weight gradient x^T dy, a sum over the R rows."""
    parts = pool_parts(a.shape[0])
    if not parts:
        return a.T @ b
    partial = np.empty((parts, a.shape[1], b.shape[1]), dtype=np.result_type(a, b))
    _matmul_tn_rows(np.ascontiguousarray(a), np.ascontiguousarray(b), partial)
    return partial.sum(axis=0)

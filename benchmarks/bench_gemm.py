"""The matrix products of one training step on each CPU BLAS at hand: NumPy's (OpenBLAS), oneMKL, BLIS.

    python benchmarks/bench_gemm.py                          # cifar-small step, batch 128, 2 threads
    python benchmarks/bench_gemm.py --preset vit-b16 --batch 8
    TINYVIT_POOL_BLAS=scipy python benchmarks/bench_gemm.py  # the pool's products on SciPy's BLAS

For every linear layer of a block (and the patch embedding) it times the three
products a training step makes, on their exact shapes and transpositions:
forward y = x W (NN), backward dx = dy W^T (NT) and dW = x^T dy (TN), with
R = batch x tokens rows. The libraries alternate call by call within one
process (median of --repeats), so they share the machine's state.

- numpy: NumPy's matmul, i.e. the OpenBLAS NumPy ships, with --threads threads;
- mkl: oneMKL's cblas_sgemm through ctypes from libmkl_rt (`pip install mkl`),
  with --threads threads (its own OpenMP pool);
- blis: the `blis` package's gemm (`pip install blis`), single-threaded as
  built; timed on one thread and with the output rows (for dW, the summed-over
  rows) split over --threads Python threads, which it runs without the GIL;
- pool: tinyvit's own products (kernels/numba_matmul.py), the rows split over
  numba's pool, one call of the pool's BLAS per thread: scipy-openblas32's
  OpenBLAS, or SciPy's with TINYVIT_POOL_BLAS=scipy (the header names it);
- scipy 1 thread, scipy-openblas32 1 thread: SciPy's own OpenBLAS and the
  scipy-openblas32 package's, each through its cblas_sgemm on one thread, as
  each of the pool's threads calls them.
Libraries that are not installed are skipped. tinyvit runs NumPy's OpenBLAS
and the pool's; this measures whether another would pay.
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from tinyvit.config import get_preset
from tinyvit.threads import set_threads

ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112


def load_mkl(threads: int):
    """A function (a, b, ta, tb) -> op(a) @ op(b) on MKL's cblas_sgemm, or None without MKL."""
    paths = sorted(glob.glob(os.path.join(sys.prefix, "lib", "libmkl_rt.so*")))
    if not paths:
        return None
    lib = ctypes.CDLL(paths[0])
    lib.MKL_Set_Num_Threads(ctypes.c_int(threads))
    return _row_major_product(lib.cblas_sgemm)


def _row_major_product(f):
    """(a, b, ta, tb) -> op(a) @ op(b) through f, a cblas_sgemm with 32-bit integers, on row-major arrays."""
    i, p, s = ctypes.c_int, ctypes.c_void_p, ctypes.c_float
    f.argtypes = [i, i, i, i, i, i, s, p, i, p, i, s, p, i]
    f.restype = None

    def gemm(a, b, ta, tb):
        m, k = (a.shape[1], a.shape[0]) if ta else a.shape
        n = b.shape[0] if tb else b.shape[1]
        c = np.empty((m, n), dtype=np.float32)
        f(ROW_MAJOR, TRANS if ta else NO_TRANS, TRANS if tb else NO_TRANS, m, n, k, 1.0,
          a.ctypes.data, a.shape[1], b.ctypes.data, b.shape[1], 0.0, c.ctypes.data, n)  # fmt: skip
        return c

    return gemm


def load_blis(threads: int):
    """(one-thread gemm, split-over-threads gemm) on the blis package, or None without it."""
    try:
        from blis.py import gemm as blis_gemm
    except ImportError:
        return None
    pool = ThreadPoolExecutor(threads)

    def one(a, b, ta, tb):
        m = a.shape[1] if ta else a.shape[0]
        n = b.shape[0] if tb else b.shape[1]
        out = np.empty((m, n), dtype=np.float32)
        return blis_gemm(a, b, out=out, trans1=ta, trans2=tb, alpha=1.0, beta=0.0)

    def split(a, b, ta, tb):
        if ta:  # dW = x^T dy: split the summed-over rows, add the partial products
            bounds = np.linspace(0, a.shape[0], threads + 1).astype(int)
            parts = pool.map(lambda i: one(a[bounds[i]:bounds[i + 1]], b[bounds[i]:bounds[i + 1]], ta, tb),
                             range(threads))  # fmt: skip
            return sum(parts)
        bounds = np.linspace(0, a.shape[0], threads + 1).astype(int)
        return np.concatenate(list(pool.map(lambda i: one(a[bounds[i]:bounds[i + 1]], b, ta, tb), range(threads))))

    return one, split


def load_one_thread_openblas():
    """{name: gemm} on one thread for SciPy's own OpenBLAS and scipy-openblas32's (those installed)."""
    import scipy
    import scipy.linalg.cython_blas  # loads SciPy's BLAS
    from threadpoolctl import threadpool_info
    from tinyvit.kernels.numba_matmul import scipy_openblas32_path

    paths = {}
    scipy_dir = os.path.dirname(os.path.abspath(scipy.__file__))
    for pool in threadpool_info():
        if pool.get("internal_api") == "openblas" and os.path.abspath(pool["filepath"]).startswith(scipy_dir):
            paths["scipy 1 thread"] = pool["filepath"]  # in scipy.libs, beside the package
    own = scipy_openblas32_path()
    if own is not None:
        paths["scipy-openblas32 1 thread"] = own
    return {name: _cblas_sgemm(path) for name, path in paths.items()}


def _cblas_sgemm(path: str):
    """(a, b, ta, tb) -> op(a) @ op(b) on the scipy_cblas_sgemm of the OpenBLAS at path, one thread."""
    lib = ctypes.CDLL(path)
    lib.scipy_openblas_set_num_threads(1)
    return _row_major_product(lib.scipy_cblas_sgemm)


def pool_product(a, b, ta, tb):
    """op(a) @ op(b) as a training step computes it: on numba's pool (kernels/numba_matmul.py)."""
    from tinyvit.kernels import numba_matmul

    if ta:
        return numba_matmul.matmul_tn(a, b)
    return numba_matmul.matmul(a, b.T if tb else b)


def step_products(cfg, batch: int):
    """(name, a, b, ta, tb) for each product of a training step's linear layers (one block, and the patch embedding)."""
    R, D, M = batch * cfg.num_tokens, cfg.dim, cfg.mlp_dim
    layers = [("patch", batch * cfg.num_patches, cfg.patch_dim, D), ("qkv", R, D, 3 * D), ("proj", R, D, D),
              ("fc1", R, D, M), ("fc2", R, M, D)]  # fmt: skip
    rng = np.random.default_rng(0)
    out = []
    for name, rows, fin, fout in layers:
        x = rng.standard_normal((rows, fin), dtype=np.float32)
        w = rng.standard_normal((fin, fout), dtype=np.float32)
        dy = rng.standard_normal((rows, fout), dtype=np.float32)
        out += [(f"{name} y=xW {rows}x{fin}x{fout}", x, w, False, False, 2.0 * rows * fin * fout),
                (f"{name} dx=dyW^T", dy, w, False, True, 2.0 * rows * fin * fout),
                (f"{name} dW=x^Tdy", x, dy, True, False, 2.0 * rows * fin * fout)]  # fmt: skip
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="cifar-small")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=9)
    args = ap.parse_args(argv)
    set_threads(args.threads)
    libs = {"numpy": lambda a, b, ta, tb: (a.T if ta else a) @ (b.T if tb else b)}
    mkl = load_mkl(args.threads)
    if mkl:
        libs["mkl"] = mkl
    blis = load_blis(args.threads)
    if blis:
        libs["blis 1 thread"], libs[f"blis {args.threads} threads"] = blis
    missing = [n for n, lib in (("mkl", mkl), ("blis", blis)) if lib is None]
    from tinyvit.kernels.numba_matmul import POOL_BLAS

    libs["pool"] = pool_product
    libs.update(load_one_thread_openblas())
    cfg = get_preset(args.preset)
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    print(f"{args.preset}, batch {args.batch}, float32, {args.threads} threads; GFLOP/s, median of "
          f"{args.repeats} alternating calls; load average {load}" + (f"; not installed: {missing}" if missing else ""))
    print(f"the pool's BLAS: {POOL_BLAS}")
    width = max(16, *(len(n) + 2 for n in libs))
    print(f"  {'product':32s}" + "".join(f"{n:>{width}s}" for n in libs))
    totals = dict.fromkeys(libs, 0.0)
    for name, a, b, ta, tb, flops in step_products(cfg, args.batch):
        want = libs["numpy"](a, b, ta, tb)
        times = {n: [] for n in libs}
        for n, fn in libs.items():  # a first call, and a check that every library computes the same product
            got = fn(a, b, ta, tb)
            err = np.max(np.abs(got - want)) / np.max(np.abs(want))
            if err > 1e-4:
                raise RuntimeError(f"{n} gives a different {name}: relative error {err:.2g}")
        for _ in range(args.repeats):
            for n, fn in libs.items():
                t = time.perf_counter()
                fn(a, b, ta, tb)
                times[n].append(time.perf_counter() - t)
        for n in libs:
            totals[n] += float(np.median(times[n]))
        print(f"  {name:32s}" + "".join(f"{flops / np.median(times[n]) / 1e9:{width}.0f}" for n in libs))
    print(f"  {'all of them, ms':32s}" + "".join(f"{1e3 * totals[n]:{width}.1f}" for n in libs))


if __name__ == "__main__":
    main()

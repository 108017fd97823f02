"""One thread setting for both CPU pools: BLAS (matrix products) and numba (prange loops).

A training step alternates about two hundred times between BLAS products
(OpenBLAS's threads) and numba `prange` loops (numba's pool). Both pools get
the same count, so neither asks for more threads than there are cores. That is
not enough on its own: an idle pool that keeps spinning, waiting for its next
job, takes a core from the pool that runs now. On 2 cores this made a step
2.7 times slower. So, unless the user has chosen otherwise, `quiet_pools()`
(called when tinyvit is imported) makes idle BLAS threads sleep at once and
numba's spin only briefly:

- OpenBLAS: a thread timeout of 2^4 cycles (OPENBLAS_THREAD_TIMEOUT=4), so its
  threads go to sleep almost at once after a product. OpenBLAS reads that
  variable when it loads, which is when NumPy is first imported. If NumPy came
  first, the library is already running with its default (spin ~0.1 s after
  every product), so `quiet_pools` asks each loaded OpenBLAS to read its
  environment again (`openblas_read_env`) and stops its idle threads
  (`blas_thread_shutdown_`); the next product starts them anew, with the short
  timeout. threadpoolctl finds every loaded OpenBLAS (NumPy's, and SciPy's,
  which numba's `np.dot` uses), so import order does not matter.
- numba: the OpenMP threading layer, whose idle workers spin for a bounded
  time (GOMP_SPINCOUNT=100000: 2.6 ms of CPU per worker, measured) and then sleep.
  The step's matrix products run on this pool too (kernels/numba_matmul.py:
  each thread hands a block of rows to single-threaded BLAS), so the OpenBLAS
  pool stays idle during a step and numba's threads are awake when the next
  loop starts: a woken thread starts late, on caches another process may have
  used meanwhile. Where OpenMP is missing, numba falls back to its `workqueue`
  layer (workers that sleep at once), and the products to BLAS's own threads.
  numba reads the layer when it starts its pool, at the first parallel loop,
  so setting `numba.config.THREADING_LAYER_PRIORITY` works even when numba was
  imported first; libgomp reads GOMP_SPINCOUNT when it loads, which is when
  numba starts that pool (and any libgomp loaded later in the process reads it
  too: PyTorch's own, when PyTorch is imported after tinyvit). GNU OpenMP does not survive fork(): a program that
  forks after a parallel loop and runs numba kernels in the child should set
  NUMBA_THREADING_LAYER=workqueue (tinyvit itself never forks).

A third pool hides inside numba's loops: the BLAS that kernels call from inside
`prange`, many products at once. numba's `np.dot` (the early attention rungs)
calls SciPy's BLAS (pip's SciPy ships its own OpenBLAS, separate from NumPy's);
`gemm` (kernels/numba_matmul.py: the pool's products and the default attention)
calls the pool's own OpenBLAS, from the scipy-openblas32 package, or SciPy's
without it. If such an OpenBLAS uses more than one thread, each small product
above its threshold (65x64x65 already is) wakes a sleeping helper thread, on
cores that numba's threads already occupy: ViT-B/16's attention ran 20-40x
slower so (docs/benchmarks.md). The parallelism there is numba's, so
`set_threads` gives both one thread (`inner_blas_single_threaded`); a SciPy that
shares NumPy's BLAS is left alone.

Measured on 2 cores, cifar-small training step (docs/benchmarks.md, "idle
threads that spin"; benchmarks/bench_cpu.py): 67 images/s with both pools
spinning, 144 with the workqueue layer alone, 149 with the OpenBLAS timeout
alone, 181 with both. With NumPy imported first: docs/benchmarks.md, "Import order".
One pool for products and loops: docs/benchmarks.md, "One pool".
"""

from __future__ import annotations

import ctypes
import os
import sys

OPENBLAS_TIMEOUT = "4"  # log2 of the cycles an idle OpenBLAS thread spins before it sleeps (OpenBLAS's minimum)
NUMBA_LAYERS = ["omp", "workqueue", "tbb"]  # numba takes the first one it can load
OMP_SPIN = "100000"  # GOMP_SPINCOUNT: busy-wait iterations of an idle OpenMP worker before it sleeps
SET_HERE: set[str] = set()  # the environment variables quiet_pools set (the user had not)
POOL_BLAS_PATHS: set[str] = set()  # BLAS libraries only numba's threads call (kernels/numba_matmul.py): one thread


def quiet_pools() -> None:
    """Idle BLAS threads sleep, numba's spin briefly; products and loops share numba's pool
    (defaults only: see above).

    Safe to call any time no product or parallel loop is running; tinyvit's import calls it."""
    if "OPENBLAS_THREAD_TIMEOUT" not in os.environ:
        os.environ["OPENBLAS_THREAD_TIMEOUT"] = OPENBLAS_TIMEOUT
        SET_HERE.add("OPENBLAS_THREAD_TIMEOUT")
        _reread_loaded_openblas()
    if not any(k in os.environ for k in ("NUMBA_THREADING_LAYER", "NUMBA_THREADING_LAYER_PRIORITY")):
        os.environ["NUMBA_THREADING_LAYER_PRIORITY"] = " ".join(NUMBA_LAYERS)
        SET_HERE.add("NUMBA_THREADING_LAYER_PRIORITY")
        numba = sys.modules.get("numba")
        if numba is not None:  # imported before tinyvit: it read the environment already
            numba.config.THREADING_LAYER = "default"  # read again when its pool starts
            numba.config.THREADING_LAYER_PRIORITY = list(NUMBA_LAYERS)
    if not any(k in os.environ for k in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")):
        os.environ["GOMP_SPINCOUNT"] = OMP_SPIN  # read when libgomp loads (with numba's pool)
        SET_HERE.add("GOMP_SPINCOUNT")


def _reread_loaded_openblas() -> None:
    """Every OpenBLAS already loaded in this process re-reads its environment and restarts its pool."""
    if not any(name in sys.modules for name in ("numpy", "scipy")):
        return  # nothing has loaded a BLAS yet; it will read the environment when it loads
    from threadpoolctl import threadpool_info

    for pool in threadpool_info():
        if pool.get("internal_api") != "openblas":
            continue
        lib = ctypes.CDLL(pool["filepath"])
        if hasattr(lib, "openblas_read_env") and hasattr(lib, "blas_thread_shutdown_"):
            lib.openblas_read_env()  # the thread timeout is taken from the environment again...
            lib.blas_thread_shutdown_()  # ...and used when the pool is next started


def inner_blas_single_threaded() -> bool:
    """SciPy's own BLAS (what numba's np.dot calls inside parallel loops) runs on one thread, and so
    does the pool's own BLAS where there is one (POOL_BLAS_PATHS). False when SciPy has no BLAS of
    its own (it shares NumPy's, whose threads are left alone)."""
    import scipy
    import scipy.linalg.cython_blas
    from threadpoolctl import ThreadpoolController

    scipy_dir = os.path.dirname(os.path.abspath(scipy.__file__))
    own = (scipy_dir + os.sep, scipy_dir + ".libs" + os.sep)  # inside the SciPy package: not NumPy's
    found = False
    for lib in ThreadpoolController().lib_controllers:
        if lib.user_api != "blas":
            continue
        if os.path.abspath(lib.filepath).startswith(own):
            lib.set_num_threads(1)
            found = True
        elif os.path.realpath(lib.filepath) in POOL_BLAS_PATHS:
            lib.set_num_threads(1)
    return found


_limiter = None  # kept alive: threadpoolctl's limit lasts as long as this object


def set_threads(n: int | None = None) -> int:
    """Use n threads (default: all cores) for BLAS and, if numba is loaded, for numba (SciPy's own
    BLAS, which numba's loops call, keeps one: see above)."""
    global _limiter
    n = (os.cpu_count() or 1) if n is None else int(n)
    if n < 1:
        raise ValueError(f"threads must be at least 1, got {n}")
    from threadpoolctl import threadpool_limits

    _limiter = threadpool_limits(limits=n)
    numba = sys.modules.get("numba")  # a numpy-backend run need not load numba at all
    if numba is not None:
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
        inner_blas_single_threaded()
    return n

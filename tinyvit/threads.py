"""One thread setting for both CPU pools: BLAS (matrix products) and numba (prange loops).

A training step alternates about two hundred times between BLAS products
(OpenBLAS's threads) and numba `prange` loops (numba's pool). Both pools get
the same count, so neither asks for more threads than there are cores. That is
not enough on its own: an idle pool that keeps spinning, waiting for its next
job, takes a core from the pool that runs now. On 2 cores this made a step
2.7 times slower. So, unless the user has chosen otherwise:

- OPENBLAS_THREAD_TIMEOUT=4: OpenBLAS threads go to sleep almost at once after
  a product. OpenBLAS reads it when it loads, i.e. when NumPy is first
  imported, so `tinyvit/__init__.py` calls `quiet_pools()` before importing NumPy;
  a program that imports NumPy before tinyvit should set it itself.
- NUMBA_THREADING_LAYER=workqueue: numba's own simple pool, whose workers
  sleep between loops (the OpenMP layer's spin-wait has the same problem).
  It runs one parallel loop at a time: a program that calls numba kernels from
  several Python threads at once should choose another layer (omp or tbb).

Measured on 2 cores, cifar-small training step (docs/benchmarks.md, "idle
threads that spin"; benchmarks/bench_cpu.py): 67 images/s with both pools
spinning, 144 with the workqueue layer alone, 149 with the OpenBLAS timeout
alone, 181 with both.
"""

from __future__ import annotations

import os
import sys


def quiet_pools() -> None:
    """Make idle BLAS and numba threads sleep rather than spin (defaults only; see above)."""
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
    os.environ.setdefault("NUMBA_THREADING_LAYER", "workqueue")

_limiter = None  # kept alive: threadpoolctl's limit lasts as long as this object


def set_threads(n: int | None = None) -> int:
    """Use n threads (default: all cores) for BLAS and, if numba is loaded, for numba."""
    global _limiter
    n = (os.cpu_count() or 1) if n is None else int(n)
    if n < 1:
        raise ValueError(f"threads must be at least 1, got {n}")
    from threadpoolctl import threadpool_limits

    _limiter = threadpool_limits(limits=n)
    numba = sys.modules.get("numba")  # a numpy-backend run need not load numba at all
    if numba is not None:
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    return n

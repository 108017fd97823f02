"""One thread setting for both CPU pools: BLAS (matrix products) and numba (prange loops).

With 2 cores, a BLAS pool of 2 and a numba pool of 2 that both spin at once
would oversubscribe the machine; both pools work in turn within a step, so each
gets the same count and neither exceeds the cores.
"""

from __future__ import annotations

import os

_limiter = None  # kept alive: threadpoolctl's limit lasts as long as this object


def set_threads(n: int | None = None) -> int:
    """Use n threads (default: all cores) for BLAS and, if numba is loaded, for numba."""
    global _limiter
    n = (os.cpu_count() or 1) if n is None else int(n)
    if n < 1:
        raise ValueError(f"threads must be at least 1, got {n}")
    from threadpoolctl import threadpool_limits

    _limiter = threadpool_limits(limits=n)
    try:
        import numba

        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    except ImportError:
        pass
    return n

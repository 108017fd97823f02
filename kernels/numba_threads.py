"""Threads for the `numba` backend: one count for numba's pool and the BLAS pool, and idle threads
that sleep instead of spinning.

A training step alternates between BLAS products (OpenBLAS threads) and numba
`prange` loops (an OpenMP pool). Both pools get the same count (set_threads),
so they never ask for more threads than cores at once. But an OpenMP thread
spins for a while after each parallel loop, waiting for the next one; on a
2-core machine it then takes a core from the BLAS thread that runs next, and
on a machine shared with other work it takes it from everyone. OMP_WAIT_POLICY
=PASSIVE makes idle OpenMP threads sleep at once. OpenMP reads it when its
library loads, so this module sets it (unless the user already did) before
any numba kernel runs: `kernels/__init__.py` imports this module first.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from tinyvit.threads import set_threads  # the one setting for both pools

__all__ = ["set_threads"]

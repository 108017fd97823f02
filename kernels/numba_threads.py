"""Threads for the `numba` backend: one count for numba's pool and the BLAS pool.

The setting itself, and the defaults that keep idle threads of either pool
from spinning on cores the other pool needs, live in tinyvit.threads.
"""

from tinyvit.threads import set_threads  # the one setting for both pools

__all__ = ["set_threads"]

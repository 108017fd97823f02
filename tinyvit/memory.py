"""Keep freed activation memory in the process instead of handing it back to the OS each step.

A training step allocates its activations afresh (a cifar-narrow step at 32 px,
batch 128: about a hundred arrays of 4-8 MiB) and frees them all when backward
is done. glibc's malloc serves blocks of that size from memory it maps for each
one, or from the top of its heap, and gives both back to the OS on free once the
free top grows past a few MiB (its "trim threshold"). The next step then maps the
same memory again, and the OS faults in and zeroes its pages the first time a
kernel or a product writes to them: about 20,000 page faults for every 160 MiB
(tests/test_memory.py), spent on nothing. Measured on 2 cores, the cifar-narrow
step at 32 px took 510-519 ms with glibc's defaults and 404-420 ms with freed
memory kept (docs/benchmarks.md, "Freed memory").

`keep_freed_memory()` (called when tinyvit is imported) sets three of glibc's
malloc parameters:
  M_MMAP_THRESHOLD 32 MiB   blocks up to 32 MiB (glibc's maximum) come from the heap, not a fresh mapping
  M_MMAP_MAX 0              and so do bigger ones, from the main heap (a thread's own arena still maps
                            a block it cannot hold); with it, the threshold above no longer matters
                            there, but stays for a glibc that refuses M_MMAP_MAX
  M_TRIM_THRESHOLD 1 GiB    free memory at the top of a heap is kept up to 1 GiB
so each step reuses the pages of the one before. The second matters for blocks
above glibc's 32 MiB cap, which would otherwise be mapped afresh every time: at
batch 256, cifar-small's fc1 output and its GELU are 49 MiB each, and inference
ran 1.2x faster once they stopped faulting in (docs/benchmarks.md, "Freed memory").
Freed memory stays with the process (its resident size stays at the peak of a
step) until it exits, except that once the free top of the heap passes 1 GiB (a
big array freed last) glibc gives it back to the OS.
Defaults only: a user who sets MALLOC_MMAP_THRESHOLD_, MALLOC_MMAP_MAX_ or
MALLOC_TRIM_THRESHOLD_, or TINYVIT_KEEP_FREED_MEMORY=0, keeps glibc's behaviour.
Elsewhere than glibc (macOS, musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4  # mallopt's parameter numbers (malloc.h)
MMAP_THRESHOLD = 32 << 20  # glibc's largest allowed value on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = 1 << 30
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_")


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed blocks for reuse (see above). True if the settings were made."""
    if os.environ.get("TINYVIT_KEEP_FREED_MEMORY", "1") == "0" or any(k in os.environ for k in _USER_SETTINGS):
        return False
    mallopt = _mallopt()
    if mallopt is None:
        return False
    settings = ((M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    made = [mallopt(param, value) for param, value in settings]  # every one, even after a refusal
    return all(made)


def _mallopt():
    """glibc's mallopt(param, value) -> 1 on success, or None where the C library has none."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        fn = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn

"""What every CUDA kernel file shares: launch sizes, fresh device arrays, argument checks.

Not a kernel file. The launch sizes are module constants read at call time, so
the tests can shrink them (several small blocks instead of one big one, which
keeps the CUDA simulator fast and makes block edges take part).
"""

import math
import sys
import threading

import numpy as np
from numba import config, cuda

# Threads per block of the elementwise kernels: one thread per element.
ELEMENT_THREADS = 256
# Threads per block of the row kernels (one block per row: LayerNorm, softmax, cross-entropy).
# A power of two, at most MAX_ROW_THREADS, the size of their shared scratch.
ROW_THREADS = 128
MAX_ROW_THREADS = 1024  # kernels import this name itself: numba.cuda needs a shared array's size as a literal

# Under NUMBA_ENABLE_CUDASIM=1 kernels run as Python threads, and the simulator
# has no warp shuffles (cuda.shfl_*_sync); the reductions then use shared memory.
SIMULATING = bool(config.ENABLE_CUDASIM)


def _shared_arrays_for_the_whole_block():
    """The simulator's cuda.shared.array, made safe for the block's threads to call at once.

    The simulator gives each block one dict of shared arrays, keyed by the source line that
    asks for one: the first thread to reach the line makes the array, the others find it. It
    looks and then stores with no lock, so two threads that switch between the two steps
    each make an array of their own, and the block's threads no longer share it: the loads
    of a tiled product then go where half the threads never read (the lessons and tests
    switch threads often, sys.setswitchinterval, and saw wrong gradients now and then). The
    same lookup, under one lock."""
    from numba.cuda.simulator import kernelapi

    if not all(hasattr(kernelapi, n) for n in ("FakeCUDAShared", "types", "numpy_support")):
        return  # a simulator laid out otherwise: its own method stays
    lock = threading.Lock()
    dynamic = kernelapi.FakeCUDAShared.array

    def array(self, shape, dtype, alignment=None):
        if shape == 0 or alignment is not None:  # dynamic shared memory, or the simulator's own error
            return dynamic(self, shape, dtype, alignment)
        frame = sys._getframe(1)  # the kernel's line that asks for the array
        key = (frame.f_code.co_filename, frame.f_lineno)
        if isinstance(dtype, kernelapi.types.Type):
            dtype = kernelapi.numpy_support.as_dtype(dtype)
        with lock:
            found = self._allocations.get(key)
            if found is None:
                found = self._allocations[key] = np.empty(shape, dtype)
        return found

    kernelapi.FakeCUDAShared.array = array


if SIMULATING:
    _shared_arrays_for_the_whole_block()

FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def is_device_array(a) -> bool:
    return hasattr(a, "copy_to_host") and hasattr(a, "shape")


def check_device(name: str, a, ndim=None, dtype=None):
    """Raise ValueError unless `a` is a float device array (of rank `ndim`, of `dtype`)."""
    if not is_device_array(a):
        raise ValueError(f"{name} must be a device array (backend 'cuda'), got {type(a).__name__}")
    if np.dtype(a.dtype) not in FLOATS:
        raise ValueError(f"{name} must be float32 or float64, got {a.dtype}")
    if ndim is not None and a.ndim not in np.atleast_1d(ndim):
        raise ValueError(f"{name} must have rank {ndim}, got shape {tuple(a.shape)}")
    if dtype is not None and np.dtype(a.dtype) != np.dtype(dtype):
        raise ValueError(f"{name} must have dtype {np.dtype(dtype)} like the other operands, got {a.dtype}")


def check_same_shape(name_a: str, a, name_b: str, b):
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"{name_b} must have the shape of {name_a} {tuple(a.shape)}, got {tuple(b.shape)}")


def empty(shape, dtype):
    """A fresh, uninitialised device array."""
    return cuda.device_array(tuple(int(s) for s in shape), dtype=np.dtype(dtype))


def flat(a):
    """The 1-D view of a C-contiguous device array (no copy)."""
    return a.reshape(a.size)


def rows_view(a):
    """(..., D) -> (rows, D), a view of a C-contiguous device array."""
    D = tuple(a.shape)[-1]  # tuple(): the simulator's shape has no negative indexing
    return a.reshape(a.size // D, D)


def element_grid(n: int):
    """(blocks, threads) for one thread per element of n."""
    threads = ELEMENT_THREADS
    return max(1, math.ceil(n / threads)), threads


def row_threads() -> int:
    """Threads per block of the row kernels, checked to be a power of two that fits the scratch."""
    t = ROW_THREADS
    if t < 1 or t > MAX_ROW_THREADS or t & (t - 1):
        raise ValueError(f"ROW_THREADS must be a power of two in [1, {MAX_ROW_THREADS}], got {t}")
    return t

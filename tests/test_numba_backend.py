"""What is particular to the `numba` backend: where its ops come from, and its thread pools.

How its results compare with the specification is tests/test_conformance.py's
part, as for every backend; its kernels' variants are tested in test_numba_kernels.py.
"""

import numba
import pytest
from threadpoolctl import threadpool_info

from tinyvit.backend import get_backend

# The numba backend's ops that are not numba kernels, on purpose: its arrays are NumPy arrays, the
# class token is a slice, the thread setting is tinyvit.threads', and there is no device to wait
# for and nothing to compile ahead (the optional fields keep Backend's defaults).
NOT_KERNELS = {"asarray": "numpy", "to_numpy": "numpy", "zeros_like": "numpy", "class_token_forward": "numpy",
               "class_token_backward": "numpy", "set_threads": "tinyvit.threads", "synchronize": "the default",
               "jit": "the default", "use_dtype": "the default",
               # the relative position bias's gather from its small table (a product with a 0/1 matrix):
               # the specification's own; the biased attention is the fused kernel's
               "rel_pos_bias_forward": "numpy", "rel_pos_bias_backward": "numpy"}  # fmt: skip


def test_numba_backend_is_registered_with_every_op():
    """Every field of Backend: a numba kernel from tinyvit.kernels, or one of NOT_KERNELS, which are
    exactly the numpy backend's own functions (or tinyvit.threads.set_threads, or the default)."""
    from dataclasses import fields

    from tinyvit.backend import Backend
    from tinyvit.threads import set_threads

    backend, numpy = get_backend("numba"), get_backend("numpy")
    assert backend.name == "numba"
    ops = [f for f in fields(Backend) if f.name != "name"]
    assert len(ops) >= 25, "Backend lost its fields?"
    for f in ops:
        op = getattr(backend, f.name)
        assert callable(op), f"{f.name} is {op!r}"
        if f.name not in NOT_KERNELS:
            assert op.__module__.startswith("tinyvit.kernels.numba_"), f"{f.name} comes from {op.__module__}"
            assert op is not getattr(numpy, f.name), f"{f.name} is the numpy backend's"
        elif NOT_KERNELS[f.name] == "numpy":
            assert op is getattr(numpy, f.name), f"{f.name} should be the numpy backend's"
        elif NOT_KERNELS[f.name] == "the default":
            assert op is f.default, f"{f.name} should be Backend's default"
    assert backend.set_threads is set_threads


def test_set_threads_sets_numba_and_blas_pools():
    backend = get_backend("numba")
    try:
        backend.set_threads(1)
        assert numba.get_num_threads() == 1
        blas = [pool for pool in threadpool_info() if pool["user_api"] == "blas"]
        assert blas and all(pool["num_threads"] == 1 for pool in blas)
    finally:
        backend.set_threads(None)
    with pytest.raises(ValueError, match="at least 1"):
        backend.set_threads(0)

"""The `jax` backend: the NumPy specification itself, traced and compiled by XLA.

There is no second copy of any layer here. tinyvit.layers and the optimiser ops
of tinyvit.optim are written against the array namespace of their inputs
(tinyvit/layers/xp.py), so given JAX arrays the very same lines build an XLA
program; `jit` compiles the model's pure functions (`tinyvit.model.loss_and_grads`)
into one program per shape. `jax.grad` of the forward pass is not used for
training: it is the independent check of the hand-written backward
(tests/test_jax_backend.py).

float32 is JAX's default. A float64 model turns on JAX's x64 mode for the
process (`jax.config.update("jax_enable_x64", True)`), as JAX requires; set
JAX_ENABLE_X64=1 before starting Python to have it from the start.

Install with `pip install -e '.[jax]'` (CPU); for TPUs and NVIDIA GPUs install
the matching jax wheel as docs/scaling.md says.
"""

import dataclasses

import numpy as np

try:
    import jax
    import jax.numpy as jnp
except ImportError as e:  # the registry turns this into "backend 'jax' could not be loaded"
    raise ImportError(f"{e}; the jax backend needs `pip install -e '.[jax]'`") from e

from .numpy_backend import BACKEND as NUMPY


def asarray(x, dtype=None):
    """Host array (or JAX array) -> a JAX array of `dtype` on the default device (float64 turns on x64)."""
    if dtype is not None:
        use_dtype(dtype)
    return jnp.asarray(np.asarray(x) if not isinstance(x, jax.Array) else x, dtype=dtype)


def to_numpy(a):
    """JAX array -> a fresh NumPy array (waits for the value); gathered across processes if need be."""
    if isinstance(a, jax.Array) and not a.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.array(multihost_utils.process_allgather(a, tiled=True))
    return np.array(a, copy=True)


def use_dtype(dtype):
    """float64 needs JAX's x64 mode; turn it on for the process when a float64 model is built."""
    if np.dtype(dtype) == np.float64 and not jax.config.jax_enable_x64:
        jax.config.update("jax_enable_x64", True)


def synchronize():
    """Wait for every computation JAX has queued (for timing)."""
    jax.effects_barrier()


# The specification's own ops, from the numpy backend; only what touches arrays as a whole
# (making, copying, adding them), waiting and compiling is JAX's.
BACKEND = dataclasses.replace(
    NUMPY,
    name="jax",
    asarray=asarray,
    to_numpy=to_numpy,
    zeros_like=jnp.zeros_like,
    add=jnp.add,
    synchronize=synchronize,
    jit=jax.jit,
    use_dtype=use_dtype,
)

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

import numpy as np

try:
    import jax
    import jax.numpy as jnp
except ImportError as e:  # the registry turns this into "backend 'jax' could not be loaded"
    raise ImportError(f"{e}; the jax backend needs `pip install -e '.[jax]'`") from e

from . import layers
from .backend import Backend
from .optim import adamw_update, scale, sum_of_squares


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


BACKEND = Backend(
    name="jax",
    asarray=asarray,
    to_numpy=to_numpy,
    zeros_like=jnp.zeros_like,
    add=jnp.add,
    patchify_forward=layers.patchify_forward,
    patchify_backward=layers.patchify_backward,
    linear_forward=layers.linear_forward,
    linear_backward=layers.linear_backward,
    linear_gelu_forward=layers.linear_gelu_forward,
    linear_gelu_backward=layers.linear_gelu_backward,
    embed_forward=layers.embed_forward,
    embed_backward=layers.embed_backward,
    layernorm_forward=layers.layernorm_forward,
    layernorm_backward=layers.layernorm_backward,
    attention_forward=layers.attention_forward,
    attention_backward=layers.attention_backward,
    attention_probs=lambda cache: cache.probs,
    class_token_forward=layers.class_token_forward,
    class_token_backward=layers.class_token_backward,
    linear_gelu_tanh_forward=layers.linear_gelu_tanh_forward,
    linear_gelu_tanh_backward=layers.linear_gelu_tanh_backward,
    pos_embed_forward=layers.pos_embed_forward,
    pos_embed_backward=layers.pos_embed_backward,
    token_mean_forward=layers.token_mean_forward,
    token_mean_backward=layers.token_mean_backward,
    tanh_forward=layers.tanh_forward,
    tanh_backward=layers.tanh_backward,
    attention_bias_forward=layers.attention_bias_forward,
    attention_bias_backward=layers.attention_bias_backward,
    rel_pos_bias_forward=layers.rel_pos_bias_forward,
    rel_pos_bias_backward=layers.rel_pos_bias_backward,
    cross_entropy_forward=layers.cross_entropy_forward,
    cross_entropy_backward=layers.cross_entropy_backward,
    count_correct=layers.count_correct,
    adamw_update=adamw_update,
    sum_of_squares=sum_of_squares,
    scale=scale,
    synchronize=synchronize,
    jit=jax.jit,
    use_dtype=use_dtype,
)

"""The `numba` backend: compiled CPU kernels (numba.njit, parallel prange, BLAS for the products).

Arrays are plain NumPy arrays; every op has the signature of its NumPy
specification in tinyvit.layers and tinyvit.optim, and is checked against it
in tests/test_numba_kernels.py, tests/test_kernel_ladders.py and tests/test_conformance.py. float32 is for
training, float64 for checks (it agrees with the reference to 1e-10).

`set_threads(n)` (tinyvit.threads) sets one count for numba's pool
and the BLAS pool, so the two never oversubscribe the cores.
"""

from numba.core.registry import cpu_target

from tinyvit import layers
from tinyvit.backend import Backend
from tinyvit.numpy_backend import BACKEND as NUMPY
from tinyvit.threads import set_threads

from . import (
    numba_adamw,
    numba_attention,
    numba_embed,
    numba_gelu,
    numba_head,
    numba_layernorm,
    numba_linear,
    numba_loss,
    precompile,
)
from .numba_patchify import patchify_backward, patchify_forward

BACKEND = Backend(
    name="numba",
    asarray=NUMPY.asarray,  # plain NumPy arrays, as in the specification
    to_numpy=NUMPY.to_numpy,
    zeros_like=NUMPY.zeros_like,
    add=numba_embed.add,
    patchify_forward=patchify_forward,
    patchify_backward=patchify_backward,
    linear_forward=numba_linear.linear_forward,
    linear_backward=numba_linear.linear_backward,
    linear_gelu_forward=numba_gelu.linear_gelu_forward,
    linear_gelu_backward=numba_gelu.linear_gelu_backward,
    embed_forward=numba_embed.embed_forward,
    embed_backward=numba_embed.embed_backward,
    layernorm_forward=numba_layernorm.layernorm_forward,
    layernorm_backward=numba_layernorm.layernorm_backward,
    add_layernorm_forward=numba_layernorm.add_layernorm_forward,
    add_layernorm_backward=numba_layernorm.add_layernorm_backward,
    attention_forward=numba_attention.attention_forward,
    attention_backward=numba_attention.attention_backward,
    attention_probs=lambda cache: cache.probs,
    class_token_forward=layers.class_token_forward,
    class_token_backward=layers.class_token_backward,
    linear_gelu_tanh_forward=numba_head.linear_gelu_tanh_forward,
    linear_gelu_tanh_backward=numba_head.linear_gelu_tanh_backward,
    pos_embed_forward=numba_head.pos_embed_forward,
    pos_embed_backward=numba_head.pos_embed_backward,
    token_mean_forward=numba_head.token_mean_forward,
    token_mean_backward=numba_head.token_mean_backward,
    tanh_forward=numba_head.tanh_forward,
    tanh_backward=numba_head.tanh_backward,
    attention_bias_forward=numba_attention.attention_bias_forward,
    attention_bias_backward=numba_attention.attention_bias_backward,
    # the bias table's gather and its transpose: the specification (a BLAS product with a 0/1 matrix)
    rel_pos_bias_forward=layers.rel_pos_bias_forward,
    rel_pos_bias_backward=layers.rel_pos_bias_backward,
    cross_entropy_forward=numba_loss.cross_entropy_forward,
    cross_entropy_backward=numba_loss.cross_entropy_backward,
    count_correct=numba_loss.count_correct,
    adamw_update=numba_adamw.adamw_update,
    sum_of_squares=numba_adamw.sum_of_squares,
    scale=numba_adamw.scale,
    set_threads=set_threads,
)

# numba fills its typing and lowering registries (and imports SciPy) when it first loads or compiles a
# kernel, 0.6 s on a 2-core machine: here, inside get_backend's paused collector, not in the first step.
cpu_target.target_context.refresh()

# An empty kernel cache: a second process compiles the step's kernels alongside this one (kernels/precompile.py).
precompile.start_if_cold()

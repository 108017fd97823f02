"""The `numpy` backend: the specification itself, gathered into a Backend."""

import numpy as np

from . import layers
from .backend import Backend
from .optim import adamw_update, scale, sum_of_squares


def _asarray(x, dtype=None):
    return np.array(x, dtype=dtype, copy=True, order="C")  # a fresh C-ordered copy, as kernels expect


BACKEND = Backend(
    name="numpy",
    asarray=_asarray,
    to_numpy=lambda a: np.array(a, copy=True),
    zeros_like=np.zeros_like,
    add=np.add,
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
    add_layernorm_forward=layers.add_layernorm_forward,
    add_layernorm_backward=layers.add_layernorm_backward,
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
)

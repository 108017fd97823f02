"""The NumPy specification of every layer of a ViT: forward/backward pairs.

Each `x_forward(...)` returns (out, cache); each `x_backward(dout, cache)`
returns the gradients of forward's array arguments, in order. Nothing here
writes into its inputs, and every line runs on NumPy arrays and on JAX arrays
(see xp.py). Faster backends are checked against these.
"""

from .attention import (
    attention_backward,
    attention_bias_backward,
    attention_bias_forward,
    attention_forward,
    softmax,
)
from .embed import (
    class_token_backward,
    class_token_forward,
    embed_backward,
    embed_forward,
)
from .gelu import gelu_backward, gelu_forward, linear_gelu_backward, linear_gelu_forward
from .gelu_tanh import (
    gelu_tanh_backward,
    gelu_tanh_forward,
    linear_gelu_tanh_backward,
    linear_gelu_tanh_forward,
)
from .head import (
    pos_embed_backward,
    pos_embed_forward,
    tanh_backward,
    tanh_forward,
    token_mean_backward,
    token_mean_forward,
)
from .layernorm import (
    add_layernorm_backward,
    add_layernorm_forward,
    layernorm_backward,
    layernorm_forward,
)
from .linear import linear_backward, linear_forward
from .loss import count_correct, cross_entropy_backward, cross_entropy_forward
from .patchify import patchify, patchify_backward, patchify_forward, unpatchify
from .rel_pos import rel_pos_bias_backward, rel_pos_bias_forward

__all__ = [
    "add_layernorm_backward",
    "add_layernorm_forward",
    "attention_backward",
    "attention_bias_backward",
    "attention_bias_forward",
    "attention_forward",
    "class_token_backward",
    "class_token_forward",
    "count_correct",
    "cross_entropy_backward",
    "cross_entropy_forward",
    "embed_backward",
    "embed_forward",
    "gelu_backward",
    "gelu_forward",
    "gelu_tanh_backward",
    "gelu_tanh_forward",
    "layernorm_backward",
    "layernorm_forward",
    "linear_backward",
    "linear_forward",
    "linear_gelu_backward",
    "linear_gelu_forward",
    "linear_gelu_tanh_backward",
    "linear_gelu_tanh_forward",
    "patchify",
    "patchify_backward",
    "patchify_forward",
    "pos_embed_backward",
    "pos_embed_forward",
    "rel_pos_bias_backward",
    "rel_pos_bias_forward",
    "softmax",
    "tanh_backward",
    "tanh_forward",
    "token_mean_backward",
    "token_mean_forward",
    "unpatchify",
]

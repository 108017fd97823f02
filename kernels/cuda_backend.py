"""The `cuda` backend: numba.cuda kernels for every op of tinyvit.backend.Backend.

Arrays are numba device arrays. Parameters, activations, gradients and the
optimiser moments stay on the GPU for a whole training step; what crosses to
the host per step is the images and labels going in, and the loss and the
gradient norm (one float each) coming out. The count of correct predictions
(`count_correct`, for the running training accuracy) stays on the device as a
one-element array; the trainer reads it only when it shows the accuracy.

Where each op lives:
    cuda_matmul       the matrix products (tiled, register-blocked; batched for attention)
    cuda_linear       linear forward/backward
    cuda_gelu         linear + fused bias/GELU
    cuda_head         the official checkpoints' options: tanh GELU, no class token, mean pooling, pre_logits' tanh
    cuda_layernorm    LayerNorm, and the residual add fused with it
    cuda_attention    head split/merge, row softmax, attention forward/backward, with a bias; the relative position bias
    cuda_loss         cross-entropy
    cuda_adamw        the AdamW update
    cuda_reduce       block reductions, the gradient norm, column sums
    cuda_elementwise  add, fill, scale, patchify, class token and position embedding

Without a GPU the same kernels run under the CUDA simulator
(NUMBA_ENABLE_CUDASIM=1), which is how the tests check them on any machine.
"""

from numba import cuda

from tinyvit.backend import Backend

from . import cuda_elementwise as ew
from . import cuda_head as head
from .cuda_adamw import adamw_update
from .cuda_attention import (
    attention_backward,
    attention_bias_backward,
    attention_bias_forward,
    attention_forward,
    attention_probs,
    rel_pos_bias_backward,
    rel_pos_bias_forward,
)
from .cuda_gelu import linear_gelu_backward, linear_gelu_forward
from .cuda_layernorm import (
    add_layernorm_backward,
    add_layernorm_forward,
    layernorm_backward,
    layernorm_forward,
)
from .cuda_linear import linear_backward, linear_forward
from .cuda_loss import count_correct, cross_entropy_backward, cross_entropy_forward
from .cuda_reduce import sum_of_squares

BACKEND = Backend(
    name="cuda",
    asarray=ew.asarray,
    to_numpy=ew.to_numpy,
    zeros_like=ew.zeros_like,
    add=ew.add,
    patchify_forward=ew.patchify_forward,
    patchify_backward=ew.patchify_backward,
    linear_forward=linear_forward,
    linear_backward=linear_backward,
    linear_gelu_forward=linear_gelu_forward,
    linear_gelu_backward=linear_gelu_backward,
    embed_forward=ew.embed_forward,
    embed_backward=ew.embed_backward,
    layernorm_forward=layernorm_forward,
    layernorm_backward=layernorm_backward,
    add_layernorm_forward=add_layernorm_forward,
    add_layernorm_backward=add_layernorm_backward,
    attention_forward=attention_forward,
    attention_backward=attention_backward,
    attention_probs=attention_probs,
    class_token_forward=ew.class_token_forward,
    class_token_backward=ew.class_token_backward,
    linear_gelu_tanh_forward=head.linear_gelu_tanh_forward,
    linear_gelu_tanh_backward=head.linear_gelu_tanh_backward,
    pos_embed_forward=head.pos_embed_forward,
    pos_embed_backward=head.pos_embed_backward,
    token_mean_forward=head.token_mean_forward,
    token_mean_backward=head.token_mean_backward,
    tanh_forward=head.tanh_forward,
    tanh_backward=head.tanh_backward,
    attention_bias_forward=attention_bias_forward,
    attention_bias_backward=attention_bias_backward,
    rel_pos_bias_forward=rel_pos_bias_forward,
    rel_pos_bias_backward=rel_pos_bias_backward,
    cross_entropy_forward=cross_entropy_forward,
    cross_entropy_backward=cross_entropy_backward,
    count_correct=count_correct,
    adamw_update=adamw_update,
    sum_of_squares=sum_of_squares,
    scale=ew.scale,
    synchronize=cuda.synchronize,
)

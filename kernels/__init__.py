"""Compiled kernels behind the `numba` and `cuda` backends (chosen through tinyvit.backend).

numba CPU kernels, each module a version of one NumPy specification in tinyvit.layers / tinyvit.optim:
    numba_linear      linear layer: BLAS products, fused bias pass, parallel column sums
    numba_gelu        fc1 + exact GELU: fused bias + GELU passes, the rational float32 erf
    numba_layernorm   LayerNorm forward/backward, rows in parallel
    numba_attention   multi-head attention per (batch, head), fused scale + softmax
    numba_embed       class token + position embedding, the residual add
    numba_patchify    patchify and its inverse
    numba_loss        softmax cross-entropy with label smoothing
    numba_adamw       AdamW in place, the global gradient norm, clipping
    numba_backend     the Backend that gathers them
"""

"""Compiled kernels behind the `numba` and `cuda` backends (chosen through tinyvit.backend).

This folder installs as `tinyvit.kernels` (setup.cfg maps it); import it by that name.

numba CPU kernels, each module a version of one NumPy specification in tinyvit.layers / tinyvit.optim.
The op modules keep their variants plain to fast in a VARIANTS table (name -> (forward, backward);
a file with several ops has a table per op), the last being what the backend runs;
benchmarks/bench_kernels.py times them side by side:
    numba_linear      linear layer: 1_loops, 2_blas (BLAS products, fused bias pass, parallel column
                      sums), 3_pool (the products on numba's thread pool, numba_matmul),
                      4_fused_bias (the bias added to each chunk of rows right after its product)
    numba_gelu        fc1 + exact GELU: 1_erf_loops, 2_erfc_rows, 3_rational32 (float32 rational erf),
                      4_fused (bias and GELU on each chunk of rows right after its product)
    numba_layernorm   LayerNorm forward/backward: 1_loops, 2_parallel_rows; the residual add fused
                      into the LayerNorm after it (ADD_VARIANTS): 1_loops, 2_parallel_rows
    numba_attention   multi-head attention: 1_loops, 2_blas_heads, 3_flash (online softmax, no
                      (B, H, N, N)), 4_direct (BLAS on each head's columns in place), 5_kept (the
                      probabilities kept for backward where they fit)
    numba_embed       class token + position embedding, the residual add (ADD_VARIANTS): 1_loops,
                      2_parallel
    numba_loss        softmax cross-entropy with label smoothing: 1_loops, 2_parallel_rows
    numba_patchify    patchify and its inverse: 1_loops, 2_parallel (images in parallel, memory in order)
    numba_adamw       AdamW into fresh arrays, the global gradient norm, clipping (ADAMW_, SQUARES_,
                      SCALE_VARIANTS): 1_loops, 2_parallel (chunks), 3_by_size (serial for small arrays)
    numba_head        the official checkpoints' options: fc1 + tanh GELU, position embedding without
                      a class token, mean over tokens, the tanh of pre_logits (a table each): 1_loops,
                      2_parallel
    numba_matmul      products on numba's pool: each thread's block of rows to single-threaded BLAS
                      (`gemm`: BLAS called directly, on strided blocks of bigger arrays)
    numba_exp         a vectorisable exp (float64 and float32) for softmax and the GELU derivative
    numba_backend     the Backend that gathers them
    precompile        a second process that compiles the step's kernels while the first starts
    cache             one cache stamp for the whole folder: an edit to any kernel file recompiles
                      every kernel, so none keeps an edited helper's old code

numba.cuda GPU kernels, versions of the same specification, tested under the simulator:
    cuda_matmul       tiled shared-memory SGEMM, plain and register-blocked, transposed and batched forms
    cuda_reduce       block and warp reductions, the global gradient norm, column sums
    cuda_layernorm, cuda_attention, cuda_gelu, cuda_linear, cuda_loss, cuda_adamw, cuda_elementwise
    cuda_head         the official checkpoints' options (as numba_head)
    cuda_common       launch sizes and array helpers; cuda_backend gathers them into the Backend
"""

import os

from .cache import stamp_whole_folder

stamp_whole_folder(os.path.dirname(os.path.abspath(__file__)))  # before any kernel module is imported

"""Softmax cross-entropy with label smoothing on the GPU.

Variants (one each):
1. forward: one block per row of logits. block_max, then block_sum of
   exp(logit - max) give the log-sum-exp; the block writes the row's
   probabilities (backward needs them) and its loss
       -sum_k t_k log p_k = -(1 - s) log p_label - (s / K) sum_k log p_k,
   and thread 0 adds loss / B into one float64 total with cuda.atomic.add.
   Only that one number is copied back to the host: the loss of the step.
2. backward: elementwise, dlogits = dloss / B * (probs - targets), the
   targets rebuilt from the labels (s / K everywhere, plus 1 - s at the label).
3. count_correct: one thread per row finds the row's argmax (NumPy's: the
   first of ties, a NaN the largest) and, if it is the label, adds 1 to one
   int64 counter with cuda.atomic.add. The count stays on the device.

The labels arrive as a host int64 array and are copied to the device once per
step. The specification is tinyvit.layers.loss.
"""

import math

import numpy as np
from numba import cuda, float64

from tinyvit.errors import check_labels
from tinyvit.layers.loss import CrossEntropyCache

from . import cuda_common as common
from .cuda_common import MAX_ROW_THREADS
from .cuda_elementwise import fill
from .cuda_reduce import block_max, block_sum, reduce_threads


@cuda.jit
def _forward_kernel(logits, labels, smoothing, probs, total):
    scratch = cuda.shared.array(MAX_ROW_THREADS, float64)
    r = cuda.blockIdx.x
    t, nt = cuda.threadIdx.x, cuda.blockDim.x
    B, K = logits.shape
    m = -math.inf
    for j in range(t, K, nt):
        m = max(m, float64(logits[r, j]))
    m = block_max(m, scratch)
    acc = 0.0
    for j in range(t, K, nt):
        acc += math.exp(logits[r, j] - m)
    lse = m + math.log(block_sum(acc, scratch))  # log sum_k exp(logit_k)
    acc = 0.0
    for j in range(t, K, nt):
        logp = logits[r, j] - lse
        probs[r, j] = math.exp(logp)
        acc += logp
    sum_logp = block_sum(acc, scratch)
    if t == 0:
        label_logp = logits[r, labels[r]] - lse
        loss = -(1.0 - smoothing) * label_logp - (smoothing / K) * sum_logp
        cuda.atomic.add(total, 0, loss / B)


@cuda.jit
def _backward_kernel(probs, labels, smoothing, factor, dlogits):
    """dlogits = factor * (probs - targets), factor = dloss / B."""
    i = cuda.grid(1)
    if i >= probs.size:
        return
    K = probs.shape[1]
    r, k = i // K, i % K
    target = smoothing / K
    if k == labels[r]:
        target += 1.0 - smoothing
    dlogits[r, k] = factor * (probs[r, k] - target)


@cuda.jit
def _count_correct_kernel(logits, labels, total):
    r = cuda.grid(1)
    if r >= logits.shape[0]:
        return
    best, m = 0, logits[r, 0]
    for k in range(1, logits.shape[1]):
        if math.isnan(m):  # a NaN is the maximum: stop at the first one
            break
        v = logits[r, k]
        if v > m or math.isnan(v):
            best, m = k, v
    if best == labels[r]:
        cuda.atomic.add(total, 0, 1)


def count_correct(logits, labels):
    """logits (B, K) device, labels (B,) host or device ints -> a (1,) int64 device array: how many
    rows' argmax equal the label."""
    common.check_device("logits", logits, ndim=2)
    B, K = logits.shape
    if common.is_device_array(labels):  # already checked by whoever copied them (cross_entropy_forward)
        if labels.shape != (B,):
            raise ValueError(f"labels must have shape ({B},), got {labels.shape}")
    else:
        labels = cuda.to_device(check_labels(labels, K, B))
    total = fill((1,), np.int64, 0)
    if B:
        blocks, threads = common.element_grid(B)
        _count_correct_kernel[blocks, threads](logits, labels, total)
    return total


def cross_entropy_forward(logits, labels, smoothing=0.0):
    """logits (B, K) device, labels (B,) host ints in [0, K) -> (loss, a Python float; cache)."""
    common.check_device("logits", logits, ndim=2)
    B, K = logits.shape
    labels = check_labels(labels, K, B)
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
    d_labels = cuda.to_device(labels)
    probs = common.empty((B, K), logits.dtype)
    total = fill((1,), np.float64, 0.0)
    if B:
        _forward_kernel[B, reduce_threads(K)](logits, d_labels, float(smoothing), probs, total)
    return float(total.copy_to_host()[0]), CrossEntropyCache(probs, d_labels, float(smoothing))


def cross_entropy_backward(dloss, cache):
    """dloss (scalar) -> dlogits (B, K) = dloss * (probs - targets) / B."""
    probs, labels, smoothing = cache
    B, K = probs.shape
    dlogits = common.empty((B, K), probs.dtype)
    if B:
        blocks, threads = common.element_grid(probs.size)
        _backward_kernel[blocks, threads](probs, labels, smoothing, float(dloss) / B, dlogits)
    return dlogits

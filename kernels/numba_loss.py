"""Numba CPU kernels for softmax cross-entropy with label smoothing
(the specification is tinyvit.layers.loss).

The logits are small, (B, K), so this op is a small part of a step; its
ladder shows where the cost is in a row-wise op, not a large speed-up.

Variants, plain to fast (VARIANTS: name -> (forward, backward), the last is the default):
1_loops           one row after another: the log-sum-exp with the row max subtracted (no
                  overflow), the smoothed-target loss -sum_k t_k log p_k written without
                  building the (B, K) target matrix (s/K everywhere plus 1 - s at the label),
                  and the probabilities kept for backward; backward is
                  dlogits = dloss (probs - targets) / B, the targets again implicit.
2_parallel_rows   the same row kernels with rows spread over the cores (`prange`).

Also `count_correct` (not a layer): the argmax of each row, in parallel, compared with its
label, the hits summed by a prange reduction (for the running training accuracy).
"""

import math

import numpy as np
from numba import njit, prange

from tinyvit.errors import check_labels
from tinyvit.layers.loss import CrossEntropyCache


@njit(cache=True, inline="always")
def _row_loss(logits, labels, smoothing, probs, row_loss, b):
    """Row b: probs[b] (K,) and row_loss[b] written (float64 inside)."""
    K = logits.shape[1]
    m = logits[b, 0]
    for k in range(1, K):
        m = max(m, logits[b, k])
    total = 0.0
    for k in range(K):
        total += math.exp(logits[b, k] - m)
    log_total = math.log(total)
    loss = 0.0
    for k in range(K):
        log_p = (logits[b, k] - m) - log_total
        probs[b, k] = math.exp(log_p)
        loss -= (smoothing / K) * log_p  # the uniform part of the smoothed target
    loss -= (1.0 - smoothing) * ((logits[b, labels[b]] - m) - log_total)  # the one-hot part
    row_loss[b] = loss


@njit(cache=True, inline="always")
def _row_grad(probs, labels, smoothing, factor, dlogits, b):
    """Row b of dlogits = factor * (probs - targets)."""
    K = probs.shape[1]
    for k in range(K):
        dlogits[b, k] = factor * (probs[b, k] - smoothing / K)
    dlogits[b, labels[b]] -= factor * (1.0 - smoothing)


@njit(cache=True)
def cross_entropy_rows_loops(logits, labels, smoothing, probs, row_loss):
    """logits (B, K), labels (B,) -> probs (B, K) and each row's loss (B,), written; one row after another."""
    for b in range(logits.shape[0]):
        _row_loss(logits, labels, smoothing, probs, row_loss, b)


@njit(cache=True)
def cross_entropy_grad_loops(probs, labels, smoothing, factor, dlogits):
    """dlogits (B, K) = factor * (probs - targets), written; one row after another."""
    for b in range(probs.shape[0]):
        _row_grad(probs, labels, smoothing, factor, dlogits, b)


@njit(parallel=True, cache=True)
def cross_entropy_rows(logits, labels, smoothing, probs, row_loss):
    """logits (B, K), labels (B,) -> probs (B, K) and each row's loss (B,), written; rows in parallel."""
    for b in prange(logits.shape[0]):
        _row_loss(logits, labels, smoothing, probs, row_loss, b)


@njit(parallel=True, cache=True)
def cross_entropy_grad(probs, labels, smoothing, factor, dlogits):
    """dlogits (B, K) = factor * (probs - targets), written; rows in parallel."""
    for b in prange(probs.shape[0]):
        _row_grad(probs, labels, smoothing, factor, dlogits, b)


def _forward(kernel, logits, labels, smoothing):
    logits = np.ascontiguousarray(logits)
    B, K = logits.shape
    labels = check_labels(labels, K, B)
    probs = np.empty_like(logits)
    row_loss = np.empty(B, dtype=np.float64)
    kernel(logits, labels, float(smoothing), probs, row_loss)
    return float(row_loss.sum() / B), CrossEntropyCache(probs, labels, float(smoothing))


def _backward(kernel, dloss, cache):
    probs, labels, smoothing = cache
    dlogits = np.empty_like(probs)
    kernel(probs, labels, smoothing, float(dloss) / probs.shape[0], dlogits)
    return dlogits


def cross_entropy_forward_loops(logits, labels, smoothing=0.0):
    """logits (B, K), labels (B,) ints in [0, K) -> (loss, a Python float; cache); rows one after another."""
    return _forward(cross_entropy_rows_loops, logits, labels, smoothing)


def cross_entropy_backward_loops(dloss, cache):
    """dloss (scalar) -> dlogits (B, K) = dloss * (probs - targets) / B; rows one after another."""
    return _backward(cross_entropy_grad_loops, dloss, cache)


def cross_entropy_forward(logits, labels, smoothing=0.0):
    """logits (B, K), labels (B,) ints in [0, K) -> (loss, a Python float; cache); rows in parallel."""
    return _forward(cross_entropy_rows, logits, labels, smoothing)


def cross_entropy_backward(dloss, cache):
    """dloss (scalar) -> dlogits (B, K) = dloss * (probs - targets) / B; rows in parallel."""
    return _backward(cross_entropy_grad, dloss, cache)


@njit(parallel=True, cache=True)
def correct_rows(logits, labels):
    """How many rows of logits (B, K) have their argmax at labels (B,) (NumPy's argmax: first
    of ties, a NaN is the largest)."""
    B, K = logits.shape
    hits = 0
    for b in prange(B):
        best, m = 0, logits[b, 0]
        for k in range(1, K):
            if math.isnan(m):  # a NaN is the maximum: stop at the first one
                break
            v = logits[b, k]
            if v > m or math.isnan(v):
                best, m = k, v
        if best == labels[b]:
            hits += 1
    return hits


def count_correct(logits, labels):
    """logits (B, K), labels (B,) ints -> how many rows' argmax equal the label (a NumPy int64)."""
    logits = np.ascontiguousarray(logits)
    labels = check_labels(labels, logits.shape[1], logits.shape[0])
    return np.int64(correct_rows(logits, labels))


VARIANTS = {
    "1_loops": (cross_entropy_forward_loops, cross_entropy_backward_loops),
    "2_parallel_rows": (cross_entropy_forward, cross_entropy_backward),
}

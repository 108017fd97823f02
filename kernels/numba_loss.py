"""Numba CPU kernels for softmax cross-entropy with label smoothing
(the specification is tinyvit.layers.loss).

Variants, plain to fast:
1. `cross_entropy_rows`  per row, in parallel: the log-sum-exp with the row max subtracted,
                         the smoothed-target loss -sum_k t_k log p_k written without building
                         the (B, K) target matrix, and the probabilities kept for backward.
2. `cross_entropy_grad`  dlogits = dloss (probs - targets) / B, the targets again implicit:
                         s/K everywhere plus (1 - s) at the label.
3. `correct_rows`        the argmax of each row, in parallel, compared with its label; the
                         hits summed by a prange reduction (for the running accuracy).
"""

import math

import numpy as np
from numba import njit, prange

from tinyvit.errors import check_labels
from tinyvit.layers.loss import CrossEntropyCache


@njit(parallel=True, cache=True)
def cross_entropy_rows(logits, labels, smoothing, probs, row_loss):
    """logits (B, K), labels (B,) -> probs (B, K) and each row's loss (B,), written (float64 inside)."""
    B, K = logits.shape
    for b in prange(B):
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


@njit(parallel=True, cache=True)
def cross_entropy_grad(probs, labels, smoothing, factor, dlogits):
    """dlogits (B, K) = factor * (probs - targets), written."""
    B, K = probs.shape
    for b in prange(B):
        for k in range(K):
            dlogits[b, k] = factor * (probs[b, k] - smoothing / K)
        dlogits[b, labels[b]] -= factor * (1.0 - smoothing)


def cross_entropy_forward(logits, labels, smoothing=0.0):
    """logits (B, K), labels (B,) ints in [0, K) -> (loss, a Python float; cache)."""
    logits = np.ascontiguousarray(logits)
    B, K = logits.shape
    labels = check_labels(labels, K, B)
    probs = np.empty_like(logits)
    row_loss = np.empty(B, dtype=np.float64)
    cross_entropy_rows(logits, labels, float(smoothing), probs, row_loss)
    return float(row_loss.sum() / B), CrossEntropyCache(probs, labels, float(smoothing))


def cross_entropy_backward(dloss, cache):
    """dloss (scalar) -> dlogits (B, K) = dloss * (probs - targets) / B."""
    probs, labels, smoothing = cache
    dlogits = np.empty_like(probs)
    cross_entropy_grad(probs, labels, smoothing, float(dloss) / probs.shape[0], dlogits)
    return dlogits


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

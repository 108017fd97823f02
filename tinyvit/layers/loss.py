"""Softmax cross-entropy on integer labels, mean over the batch, optional label smoothing.

With smoothing s the target of each row is (1 - s) * onehot(label) + s / K,
so the loss is -mean_b sum_k target_bk * log softmax(logits)_bk.
"""

from typing import NamedTuple

import numpy as np


class CrossEntropyCache(NamedTuple):
    probs: np.ndarray  # (B, K)
    labels: np.ndarray  # (B,)
    smoothing: float


def _targets(labels, num_classes, smoothing, dtype):
    t = np.full((labels.shape[0], num_classes), smoothing / num_classes, dtype=dtype)
    t[np.arange(labels.shape[0]), labels] += 1.0 - smoothing
    return t  # (B, K)


def cross_entropy_forward(logits, labels, smoothing=0.0):
    """logits (B, K), labels (B,) ints in [0, K) -> (loss, a Python float; cache)."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))  # log-sum-exp, stable
    targets = _targets(labels, logits.shape[1], smoothing, logits.dtype)
    loss = -(targets * log_probs).sum() / logits.shape[0]
    return float(loss), CrossEntropyCache(np.exp(log_probs), labels, smoothing)


def cross_entropy_backward(dloss, cache):
    """dloss (scalar) -> dlogits (B, K) = dloss * (probs - targets) / B."""
    probs, labels, smoothing = cache
    targets = _targets(labels, probs.shape[1], smoothing, probs.dtype)
    return (dloss / probs.shape[0]) * (probs - targets)

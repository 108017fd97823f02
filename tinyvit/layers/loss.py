"""Softmax cross-entropy on integer labels, mean over the batch, optional label smoothing;
and the count of correct predictions that the trainer's running accuracy sums.

With smoothing s the target of each row is (1 - s) * onehot(label) + s / K,
so the loss is -mean_b sum_k target_bk * log softmax(logits)_bk.
"""

from typing import NamedTuple

import numpy as np

from .xp import namespace


class CrossEntropyCache(NamedTuple):
    probs: np.ndarray  # (B, K)
    labels: np.ndarray  # (B,)
    smoothing: float


def _targets(labels, num_classes, smoothing, dtype):
    xp = namespace(labels)
    onehot = (labels[:, None] == xp.arange(num_classes)).astype(dtype)  # (B, K)
    return onehot * (1.0 - smoothing) + smoothing / num_classes


def cross_entropy_forward(logits, labels, smoothing=0.0):
    """logits (B, K), labels (B,) ints in [0, K) -> (loss, a scalar of the logits' array type; cache).

    The loss stays an array scalar, so a compiled step never waits for it; callers
    turn it into a Python float where they print or log it."""
    xp = namespace(logits)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))  # log-sum-exp, stable
    targets = _targets(labels, logits.shape[1], smoothing, logits.dtype)
    loss = -(targets * log_probs).sum() / logits.shape[0]
    return loss, CrossEntropyCache(xp.exp(log_probs), labels, smoothing)


def cross_entropy_backward(dloss, cache):
    """dloss (scalar) -> dlogits (B, K) = dloss * (probs - targets) / B."""
    probs, labels, smoothing = cache
    targets = _targets(labels, probs.shape[1], smoothing, probs.dtype)
    return (dloss / probs.shape[0]) * (probs - targets)


def count_correct(logits, labels):
    """logits (B, K), labels (B,) -> how many rows have their largest logit at the label, a scalar.

    argmax as NumPy's: a tie goes to the first of the tied classes, a NaN counts as the largest.
    Not a layer and not differentiated: the trainer sums it for the running training accuracy,
    and a device backend keeps it on the device until the accuracy is shown."""
    return (logits.argmax(axis=1) == labels).sum()

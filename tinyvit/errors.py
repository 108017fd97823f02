"""The error tinyvit raises about what a user asked for or handed in, and the one check of
class labels that the model, the loss kernels and the data loaders share.

`UsageError` is for input the user controls: a command-line option, a dataset
spec, a data folder or archive, a checkpoint or image file, a download that
fails. The command-line tools (train, evaluate, predict) print these as one
line, `error: ...`, and exit; every other exception keeps its traceback, since
it points at a fault in the code rather than in the input. It is a ValueError,
so code that catches ValueError keeps working.
"""


import numpy as np


class UsageError(ValueError):
    """Bad input from the user: the message says what was expected and what came."""


def check_labels(labels, num_classes: int, count: int | None = None, name: str = "labels") -> np.ndarray:
    """Class labels (N,) as a C-contiguous int64 array; a ValueError unless they are integers in
    [0, num_classes), and, when `count` is given, exactly `count` of them. The caller
    that knows where the labels came from adds it to the message (or makes it a UsageError)."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or (count is not None and labels.shape != (count,)):
        raise ValueError(f"{name} must have shape ({'N' if count is None else count},), got {labels.shape}")
    if labels.size and labels.dtype.kind not in "iu":  # an empty list comes as float64: no labels is fine
        raise ValueError(f"{name} must be integers, got dtype {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{name} must be in [0, {num_classes}), got values from {labels.min()} to {labels.max()}")
    return np.ascontiguousarray(labels, dtype=np.int64)

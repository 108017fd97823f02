"""Training-time augmentation and input normalisation, for a whole batch at once.

`augment_batch` is the standard CIFAR recipe (He et al. 2016, used for ViTs
trained from scratch on small images): pad each image with `pad` pixels of
zeros (black) on every side, cut a random S x S window out of the padded image,
and mirror it left-right with probability 1/2. It is written as one gather:
every output pixel (b, i, j) reads padded[b, dy[b] + i, col[b, j]], where the
column index runs backwards for the flipped images, so there is no Python loop
over images.

`normalize` turns uint8 pixels into the model's input: (x / 255 - mean) / std
per channel.
"""

from __future__ import annotations

import numpy as np


def _check_images(images, what="images"):
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
        desc = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
        raise ValueError(f"{what} must be a uint8 array (B, H, W, C), got {desc}")


def augment_batch(images: np.ndarray, rng: np.random.Generator, pad: int = 4, flip=True, rows=None) -> np.ndarray:
    """Random crop after zero padding, then a random horizontal flip.

    images  uint8 (B, H, W, C); not modified
    rng     np.random.Generator: the same state gives the same output
    pad     pixels of zero padding on each side; the crop's offset is uniform
            in [-pad, pad] along each axis (pad=0: no crop)
    flip    True: mirror each image with probability 1/2; False: never;
            a float p in [0, 1]: mirror with probability p
    rows    (first, total): images are rows first.. of a batch of `total`; the
            draws are made for the whole batch and these rows take theirs, so
            each process of a multi-process run augments its own rows exactly
            as one process would augment them in the whole batch (None: all)
    returns a new uint8 array (B, H, W, C)

    The random numbers are drawn in a fixed order (offsets, then flips),
    whatever pad and flip are, so a run's later draws do not depend on them.
    """
    _check_images(images)
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")  # noqa: TRY004
    if isinstance(pad, bool) or not isinstance(pad, (int, np.integer)) or pad < 0:
        raise ValueError(f"pad must be a non-negative integer, got {pad!r}")
    p_flip = 0.5 if flip is True else 0.0 if flip is False else float(flip)
    if not 0.0 <= p_flip <= 1.0:
        raise ValueError(f"flip must be True, False or a probability in [0, 1], got {flip!r}")

    B, H, W, _ = images.shape
    first, total = (0, B) if rows is None else rows
    if not (0 <= first and first + B <= total):
        raise ValueError(f"rows must be (first, total) with {B} images inside the batch, got {rows!r}")
    offsets = rng.integers(0, 2 * pad + 1, size=(total, 2))[first : first + B]  # top-left corner in the padded image
    flips = (rng.random(total) < p_flip)[first : first + B]
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))  # zeros: (B, H+2p, W+2p, C)
    rows = offsets[:, :1] + np.arange(H)  # (B, H)
    cols = offsets[:, 1:] + np.arange(W)  # (B, W)
    cols = np.where(flips[:, None], cols[:, ::-1], cols)  # a mirror is the same window read right to left
    return padded[np.arange(B)[:, None, None], rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)


def normalize(images: np.ndarray, mean, std, dtype=np.float32) -> np.ndarray:
    """(images / 255 - mean) / std, per channel, computed in `dtype`.

    images     uint8 (..., C)
    mean, std  (C,), in [0, 1] units (Dataset.mean, Dataset.std)
    returns    dtype array, the shape of images
    """
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        desc = images.dtype if isinstance(images, np.ndarray) else type(images).__name__
        raise ValueError(f"normalize expects uint8 images, got {desc}")
    dtype = np.dtype(dtype)
    mean = np.asarray(mean, dtype).reshape(-1)
    std = np.asarray(std, dtype).reshape(-1)
    C = images.shape[-1] if images.ndim else 0
    if mean.shape != (C,) or std.shape != (C,):
        raise ValueError(f"mean and std must have one value per channel ({C}), got {mean.shape} and {std.shape}")
    if np.any(std <= 0):
        raise ValueError(f"std must be positive, got {std}")
    scale = 1 / (std * 255)  # fold the /255 into the division by std: one multiply per pixel
    shift = mean / std
    out = images.astype(dtype)
    out *= scale
    out -= shift
    return out

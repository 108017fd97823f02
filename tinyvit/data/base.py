"""The Dataset record every loader returns, and the helpers they share.

A Dataset is plain arrays: uint8 images (N, H, W, 3) in RGB order, int64 labels
(N,), the class names, and the per-channel mean and std of the training images
(in [0, 1] units) that `normalize` uses. Nothing here reads files; the loaders
(cifar10.py, folder.py, shapes.py) do that and hand their arrays to Dataset,
which checks them once so the trainer never meets a malformed batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import check_labels


def default_data_dir() -> Path:
    """Where datasets and caches live: $TINYVIT_DATA, else ~/.cache/tinyvit."""
    env = os.environ.get("TINYVIT_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "tinyvit"


def channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of uint8 images (N, H, W, 3), in [0, 1] units, as float32 (3,).

    A uint8 channel takes only 256 values, so a histogram of each channel gives
    the exact sums of x and x^2 without a float copy of the whole set.
    """
    values = np.arange(256, dtype=np.float64)
    mean, std = np.empty(3), np.empty(3)
    for c in range(3):
        counts = np.bincount(images[..., c].ravel(), minlength=256)
        n = counts.sum()
        m = counts @ values / n
        mean[c] = m
        std[c] = np.sqrt(max(counts @ values**2 / n - m * m, 0.0))
    return (mean / 255).astype(np.float32), (std / 255).astype(np.float32)


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """Resize uint8 images (N, h, w, 3) to (N, size, size, 3) with Pillow's bicubic filter.

    Pillow widens the filter when shrinking, so downscaling is antialiased.
    Images already at the size come back unchanged (no copy).
    """
    if images.shape[1:3] == (size, size):
        return images
    out = np.empty((len(images), size, size, 3), np.uint8)
    for i, img in enumerate(images):
        out[i] = np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.BICUBIC))
    return out


def check_image_size(image_size) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 1:
        raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
    return int(image_size)


@dataclass
class Dataset:
    """A train/test pair of labelled images.

    train_images, test_images  uint8 (N, S, S, 3), C-contiguous, RGB
    train_labels, test_labels  int64 (N,), values in [0, K)
    class_names                list of K names; label k is class_names[k]
    mean, std                  float32 (3,): per-channel statistics of the training
                               images in [0, 1] units (computed when not given)
    """

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: list[str]
    mean: np.ndarray | None = field(default=None)
    std: np.ndarray | None = field(default=None)

    def __post_init__(self):
        self.class_names = [str(c) for c in self.class_names]
        K = len(self.class_names)
        if K < 1:
            raise ValueError(f"dataset {self.name!r}: expected at least one class, got none")
        for split in ("train", "test"):
            images = getattr(self, f"{split}_images")
            labels = getattr(self, f"{split}_labels")
            if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 \
                    or images.shape[3] != 3 or images.shape[1] != images.shape[2]:
                desc = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
                raise ValueError(f"dataset {self.name!r}: {split}_images must be uint8 (N, S, S, 3), got {desc}")
            try:
                labels = check_labels(labels, K, len(images), name=f"{split}_labels")
            except ValueError as e:
                raise ValueError(f"dataset {self.name!r}: {e}") from e
            setattr(self, f"{split}_images", np.ascontiguousarray(images))
            setattr(self, f"{split}_labels", labels)
        if self.train_images.shape[1:] != self.test_images.shape[1:]:
            raise ValueError(
                f"dataset {self.name!r}: train and test images differ in shape: "
                f"{self.train_images.shape[1:]} vs {self.test_images.shape[1:]}"
            )
        if len(self.train_images) == 0:
            raise ValueError(f"dataset {self.name!r}: the training split is empty")
        if self.mean is None or self.std is None:
            self.mean, self.std = channel_stats(self.train_images)
        self.mean = np.asarray(self.mean, np.float32).reshape(3)
        self.std = np.asarray(self.std, np.float32).reshape(3)

    @property
    def image_size(self) -> int:
        """S, the side of every (square) image."""
        return self.train_images.shape[1]

    @property
    def num_classes(self) -> int:
        """K."""
        return len(self.class_names)

    def __repr__(self):
        return (
            f"Dataset({self.name!r}, train={self.train_images.shape}, test={self.test_images.shape}, "
            f"classes={self.num_classes})"
        )

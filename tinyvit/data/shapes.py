"""`shapes`: a small image-classification set drawn on the fly, no download needed.

Each image holds one filled shape (the class) in a random light colour, at a
random position and size, on a background of a random dark colour with a
gentle gradient and a little pixel noise. The shape is lighter than the
background in every channel, so it always stands out, but colour says nothing
about the class. A tiny ViT learns it to well above chance in seconds on a CPU
(the `testing` preset at 16 px: about 70% test accuracy after 10 epochs with
lr 3e-3, chance being 1/6), which makes it the set for quick starts, lessons
and tests.

Specs: "shapes" is 5000 training and 1000 test images; "shapes:N" is N
training and N // 5 test images. The same seed gives the same images, and the
training images do not depend on how many test images were asked for.
Generation is vectorised over images (one loop over the classes only).
"""

from __future__ import annotations

import numpy as np

from ..errors import UsageError
from .base import Dataset

CLASS_NAMES = ["circle", "ring", "square", "diamond", "triangle", "cross"]
DEFAULT_TRAIN, DEFAULT_TEST = 5000, 1000


# Each mask takes coordinates (u, v) relative to the shape's centre, in units
# of its radius (v grows downwards), and says which pixels the shape covers.
# The areas are kept within a factor of about two of each other, so size is
# not a give-away either.
def _circle(u, v):
    return u * u + v * v <= 1.0


def _ring(u, v):
    r2 = u * u + v * v
    return (r2 <= 1.0) & (r2 >= 0.5**2)


def _square(u, v):
    return np.maximum(np.abs(u), np.abs(v)) <= 0.8


def _diamond(u, v):
    return np.abs(u) + np.abs(v) <= 1.1


def _triangle(u, v):
    # apex at the top (v = -1), base at v = 0.9, as wide as the shape is tall
    return (v <= 0.9) & (np.abs(u) <= (v + 1.0) / 1.9)


def _cross(u, v):
    au, av = np.abs(u), np.abs(v)
    return ((au <= 0.3) & (av <= 1.0)) | ((av <= 0.3) & (au <= 1.0))


_MASKS = [_circle, _ring, _square, _diamond, _triangle, _cross]


def draw_shapes(n: int, image_size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n images (n, S, S, 3) uint8 and their labels (n,) int64, exactly balanced up to n % K."""
    K, S = len(CLASS_NAMES), image_size
    labels = rng.permutation(np.arange(n) % K).astype(np.int64)
    radius = rng.uniform(0.22, 0.40, n) * S  # pixels
    centre = rng.uniform(-1.0, 1.0, (n, 2)) * (S / 2 - radius[:, None] - 0.5) + S / 2  # keeps the shape inside
    background = rng.integers(0, 100, (n, 3))  # a dark colour
    foreground = rng.integers(156, 256, (n, 3))  # a light colour, 56 or more levels above it in every channel
    gradient = rng.normal(0.0, 12.0, (n, 2))  # levels across the image, in x and y
    noise = rng.normal(0.0, 6.0, (n, S, S, 1)).astype(np.float32)  # grey noise, the same on all channels

    grid = (np.arange(S, dtype=np.float32) + 0.5)  # pixel centres
    u = (grid[None, None, :] - centre[:, 0, None, None]) / radius[:, None, None]  # (n, 1, S)
    v = (grid[None, :, None] - centre[:, 1, None, None]) / radius[:, None, None]  # (n, S, 1)
    u, v = np.broadcast_arrays(u, v)  # (n, S, S)
    mask = np.zeros((n, S, S), bool)
    for k, shape in enumerate(_MASKS):
        idx = np.flatnonzero(labels == k)
        mask[idx] = shape(u[idx], v[idx])

    ramp = (grid / S - 0.5)[None, :]  # (1, S), from -0.5 to 0.5
    shade = gradient[:, 0, None, None] * ramp[:, None, :] + gradient[:, 1, None, None] * ramp[:, :, None]  # (n, S, S)
    colour = np.where(mask[..., None], foreground[:, None, None, :], background[:, None, None, :])  # (n, S, S, 3)
    images = colour + shade[..., None] + noise
    return np.clip(np.rint(images), 0, 255).astype(np.uint8), labels


def make_shapes(n_train: int = DEFAULT_TRAIN, n_test: int = DEFAULT_TEST, image_size: int = 32,
                seed: int = 0) -> Dataset:
    """The `shapes` dataset: n_train and n_test images of image_size pixels, fixed by seed."""
    for name, value in (("n_train", n_train), ("n_test", n_test)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < (name == "n_train"):
            raise ValueError(f"shapes: {name} must be a {'positive' if name == 'n_train' else 'non-negative'} "
                             f"integer, got {value!r}")
    if image_size < 8:
        raise UsageError(f"shapes: image_size must be at least 8 pixels to draw a shape, got {image_size}")
    # separate streams for train and test, so one does not shift when the other's size changes
    train_rng, test_rng = (np.random.default_rng([seed, split]) for split in (0, 1))
    train_images, train_labels = draw_shapes(n_train, image_size, train_rng)
    test_images, test_labels = draw_shapes(n_test, image_size, test_rng)
    return Dataset("shapes", train_images, train_labels, test_images, test_labels, list(CLASS_NAMES))


def parse_shapes_spec(spec: str) -> tuple[int, int]:
    """"shapes" -> (5000, 1000); "shapes:N" -> (N, N // 5)."""
    if spec == "shapes":
        return DEFAULT_TRAIN, DEFAULT_TEST
    count = spec.partition(":")[2]
    if not count.isdigit() or int(count) < 1:
        raise UsageError(f"shapes: expected 'shapes' or 'shapes:N' with N a positive integer, got {spec!r}")
    return int(count), int(count) // 5

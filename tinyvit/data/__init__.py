"""Datasets for tinyvit: uint8 images in, normalised float batches out.

    from tinyvit.data import load_dataset, augment_batch, normalize
    ds = load_dataset("cifar10")              # or "shapes", "shapes:N", "folder:PATH"
    x = augment_batch(ds.train_images[:128], rng)            # random crop + flip, uint8
    x = normalize(x, ds.mean, ds.std)                        # float32 (B, S, S, 3)

Specs:
    cifar10      CIFAR-10 (the official python-version files), downloaded into
                 data_dir on first use unless download=False (cifar10.py)
    shapes       5000 + 1000 generated images of 6 shape classes, no files (shapes.py)
    shapes:N     the same with N training and N // 5 test images
    folder:PATH  one subfolder of images per class, or PATH/train + PATH/test (folder.py)

data_dir defaults to $TINYVIT_DATA, else ~/.cache/tinyvit. Every image is square,
image_size pixels on a side, resized with Pillow where the source differs.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UsageError
from .augment import augment_batch, normalize
from .base import Dataset, channel_stats, check_image_size, default_data_dir

SPECS = ["cifar10", "shapes", "shapes:N", "folder:PATH"]


def load_dataset(spec: str, data_dir=None, image_size: int = 32, seed: int = 0, download: bool = True,
                 progress: bool = True) -> Dataset:
    """Load the dataset named by spec (see the module docstring) as a Dataset.

    data_dir    where downloads and caches live (None: default_data_dir())
    image_size  S, the side of the square images returned
    seed        fixes the generated `shapes` images and the train/test split of
                a folder without train/ and test/; CIFAR-10 ignores it
    download    allow fetching CIFAR-10 when it is not in data_dir
    progress    show a progress bar on stderr while downloading
    """
    # imported here so that `import tinyvit.data` stays light
    from .cifar10 import load_cifar10
    from .folder import load_folder
    from .shapes import make_shapes, parse_shapes_spec

    image_size = check_image_size(image_size)
    if not isinstance(spec, str):
        raise ValueError(f"dataset spec must be a string, one of {SPECS}; got {spec!r}")  # noqa: TRY004
    data_dir = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    if spec == "cifar10":
        return load_cifar10(data_dir, image_size=image_size, download=download, progress=progress)
    if spec == "shapes" or spec.startswith("shapes:"):
        n_train, n_test = parse_shapes_spec(spec)
        return make_shapes(n_train, n_test, image_size=image_size, seed=seed)
    if spec.startswith("folder:") and spec != "folder:":
        return load_folder(spec[len("folder:"):], data_dir, image_size=image_size, seed=seed)
    raise UsageError(f"unknown dataset {spec!r}: expected one of {', '.join(SPECS)}")


__all__ = ["SPECS", "Dataset", "augment_batch", "channel_stats", "default_data_dir", "load_dataset", "normalize"]

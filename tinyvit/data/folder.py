"""`folder:PATH`: a dataset from a folder of image files, one subfolder per class.

    PATH/<class>/<any name>.<ext>               split by the loader, or
    PATH/train/<class>/...  and  PATH/test/<class>/...

Class names are the subfolder names, sorted (the test classes must be among
the training ones). Any format Pillow reads is accepted, picked by file
extension (hidden files and other extensions are skipped); every image is
converted to RGB (an alpha channel is dropped, palettes and greyscale are
expanded) and resized to image_size x image_size with Pillow's bicubic
filter, which stretches images that are not square. Without train/ and test/,
TEST_FRACTION of each class (rounded, at least one image where the class has
two or more) goes to the test split, chosen by the seed.

Decoding is the slow part, so the decoded images are cached in
data_dir/folder-cache/ as an .npz, named by a hash of the folder's path, its
files (relative path, size and modification time) and image_size: a changed,
added or removed file gives a new cache. The cache holds no pickles and is
written to a temporary file that is renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from ..checkpoint import savez_atomic
from ..errors import UsageError
from .base import Dataset

TEST_FRACTION = 0.1
CACHE_DIR = "folder-cache"


def image_extensions() -> set[str]:
    """Lower-case file extensions Pillow can open (".png", ".jpg", ...)."""
    return {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}


def _class_files(root: Path, extensions: set[str]) -> dict[str, list[Path]]:
    """{class name: sorted image files} for the subfolders of root, with the errors a user can fix."""
    if not root.is_dir():
        raise UsageError(f"image folder {root} does not exist or is not a directory")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise UsageError(f"image folder {root} has no class subfolders: expected {root}/<class>/<image files>")
    found = {}
    for name in classes:
        files = sorted(
            p for p in (root / name).rglob("*")
            if p.is_file() and p.suffix.lower() in extensions
            and not any(part.startswith(".") for part in p.relative_to(root).parts)
        )
        if not files:
            raise UsageError(f"class folder {root / name} holds no image files (looked for {sorted(extensions)})")
        found[name] = files
    return found


def decode_image(path: Path, image_size: int) -> np.ndarray:
    """One file -> uint8 (S, S, 3); a file Pillow cannot read is a UsageError naming it."""
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            if img.size != (image_size, image_size):
                img = img.resize((image_size, image_size), Image.Resampling.BICUBIC)
            return np.asarray(img, np.uint8)
    except Exception as e:
        raise UsageError(f"cannot read image {path}: {type(e).__name__}: {e}") from e


def _read_cache(path: Path):
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in ("images", "labels", "in_test", "class_names")}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None  # missing or damaged: decode again


def stratified_split(labels: np.ndarray, num_classes: int, fraction: float, seed: int) -> np.ndarray:
    """A boolean mask (N,) choosing round(fraction * n_k) of each class's n_k items (at least 1 if n_k >= 2)."""
    rng = np.random.default_rng(seed)
    in_test = np.zeros(len(labels), bool)
    for k in range(num_classes):
        idx = np.flatnonzero(labels == k)
        n_test = min(max(round(fraction * len(idx)), 1), len(idx) - 1) if len(idx) >= 2 else 0
        in_test[rng.permutation(idx)[:n_test]] = True
    return in_test


def load_folder(path, data_dir, image_size: int = 32, seed: int = 0) -> Dataset:
    """The dataset in folder `path`, decoded once and cached in data_dir."""
    root = Path(path).expanduser().resolve()
    extensions = image_extensions()
    if not root.is_dir():
        raise UsageError(f"image folder {root} does not exist or is not a directory")
    split_layout = (root / "train").is_dir() and (root / "test").is_dir()
    if split_layout:
        train, test = _class_files(root / "train", extensions), _class_files(root / "test", extensions)
        extra = sorted(set(test) - set(train))
        if extra:
            raise UsageError(f"{root / 'test'} has classes {extra} that {root / 'train'} lacks")
    else:
        train, test = _class_files(root, extensions), {}
    class_names = sorted(train)
    entries = [(f, class_names.index(c), False) for c, files in train.items() for f in files]
    entries += [(f, class_names.index(c), True) for c, files in test.items() for f in files]

    listing = [(str(f.relative_to(root)), f.stat().st_size, f.stat().st_mtime_ns) for f, _, _ in entries]
    key = hashlib.sha256(json.dumps([str(root), image_size, listing]).encode()).hexdigest()[:20]
    cache_dir = Path(data_dir) / CACHE_DIR
    cache = cache_dir / f"{root.name}-{image_size}px-{key}.npz"
    cached = _read_cache(cache)
    if cached is None:
        images = np.empty((len(entries), image_size, image_size, 3), np.uint8)
        for i, (f, _, _) in enumerate(entries):
            images[i] = decode_image(f, image_size)
        cached = {
            "images": images,
            "labels": np.array([label for _, label, _ in entries], np.int64),
            "in_test": np.array([t for _, _, t in entries], bool),
            "class_names": np.array(class_names),
        }
        cache_dir.mkdir(parents=True, exist_ok=True)
        savez_atomic(cache, **cached)

    images, labels, in_test = cached["images"], cached["labels"], cached["in_test"]
    if not split_layout:
        in_test = stratified_split(labels, len(class_names), TEST_FRACTION, seed)
    return Dataset(
        f"folder:{root}", images[~in_test], labels[~in_test], images[in_test], labels[in_test],
        [str(c) for c in cached["class_names"]],
    )

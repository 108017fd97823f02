"""python -m tinyvit.predict: the top-5 classes of image files, with probabilities.

    python -m tinyvit.predict --checkpoint runs/cifar10/checkpoint.npz cat.jpg dog.png
    python -m tinyvit.predict --checkpoint ViT-B_16.npz cat.jpg            # an official ImageNet model
    python -m tinyvit.predict --checkpoint model.safetensors cat.jpg       # a timm model

Any checkpoint tinyvit.load_pretrained reads: the model's own normalisation is used.
Class names: --labels FILE (one per line), else the names a tinyvit checkpoint
stores, else the ImageNet-1k names for a 1000-class model, else the class index.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .backend import backend_names, default_backend_description
from .errors import UsageError
from .layers import softmax

IMAGENET1K_CLASSES = Path(__file__).parent / "data" / "imagenet1k_classes.txt"


def load_image(path, size: int) -> np.ndarray:
    """Any image Pillow reads -> (size, size, 3) uint8 RGB, resized with antialiasing."""
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB").resize((size, size), Image.BICUBIC))
    except (OSError, UnidentifiedImageError) as e:
        raise UsageError(f"cannot read image {path}: {e}") from e


def read_labels(path) -> list[str]:
    """Class names, one per line; a line `id<TAB>name` (as the ImageNet list is kept) gives the name."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read labels file {path}: {e}") from e
    return [line.split("\t", 1)[-1].strip() for line in lines if line.strip()]


def imagenet1k_names() -> list[str]:
    """The 1000 ImageNet-1k (ILSVRC-2012) class names in the usual index order (sorted WordNet ids)."""
    return read_labels(IMAGENET1K_CLASSES)


def class_names_for(path, num_classes: int, labels=None) -> list[str]:
    """The names to print: a labels file, a tinyvit checkpoint's own, ImageNet-1k's, or the indices."""
    if labels is not None:
        names = read_labels(labels)
        if len(names) != num_classes:
            raise UsageError(f"{labels} has {len(names)} names, the model has {num_classes} classes")
        return names
    names = _stored_class_names(path)
    if names and len(names) == num_classes:
        return names
    if num_classes == 1000:
        return imagenet1k_names()
    return [str(k) for k in range(num_classes)]


def _stored_class_names(path):
    from .tensorfile import NPZ, TensorFile

    with TensorFile(path) as tf:
        if tf.kind != NPZ or "state" not in tf.shapes:
            return None
        try:
            return json.loads(str(tf.read("state"))).get("class_names")
        except (json.JSONDecodeError, AttributeError):
            return None


def predict(model, images_uint8, top=5, normalization=None):
    """[(class index, probability), ...] top-`top` per image, most likely first.

    The images are normalised as the model expects (model.normalization), unless given."""
    from .data import normalize

    mean, std = normalization if normalization is not None else model.normalization
    x = normalize(images_uint8, np.asarray(mean, np.float32), np.asarray(std, np.float32), dtype=model.dtype)
    probs = softmax(model.forward(x).astype(np.float64))
    order = np.argsort(-probs, axis=1)[:, :top]
    return [[(int(k), float(p[k])) for k in row] for row, p in zip(order, probs)]


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m tinyvit.predict", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="a tinyvit, official (.npz) or timm (.safetensors) checkpoint")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any format Pillow reads)")
    p.add_argument("--top", type=int, default=5)
    p.add_argument("--labels", default=None, help="a text file of class names, one per line")
    p.add_argument("--heads", type=int, default=None, help="attention heads of a timm checkpoint of unusual width")
    p.add_argument("--backend", choices=backend_names(), default=None, help=f"default: {default_backend_description()}")
    args = p.parse_args(argv)
    from .pretrained import load_pretrained

    try:
        model = load_pretrained(args.checkpoint, backend=args.backend, heads=args.heads)
        names = class_names_for(args.checkpoint, model.cfg.num_classes, args.labels)
        images = np.stack([load_image(f, model.cfg.image_size) for f in args.images])
    except UsageError as e:
        sys.exit(f"error: {e}")
    for path, top in zip(args.images, predict(model, images, min(args.top, len(names)))):
        print(path)
        for k, prob in top:
            print(f"  {prob:7.2%}  {names[k]}")


if __name__ == "__main__":
    main()

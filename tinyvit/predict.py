"""python -m tinyvit.predict: the top-5 classes of image files, with probabilities.

    python -m tinyvit.predict --checkpoint runs/cifar10/checkpoint.npz cat.jpg dog.png
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from PIL import Image, UnidentifiedImageError

from .backend import backend_names, default_backend_description
from .errors import UsageError
from .evaluate import model_from_checkpoint
from .layers import softmax


def load_image(path, size: int) -> np.ndarray:
    """Any image Pillow reads -> (size, size, 3) uint8 RGB, resized with antialiasing."""
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB").resize((size, size), Image.BICUBIC))
    except (OSError, UnidentifiedImageError) as e:
        raise UsageError(f"cannot read image {path}: {e}") from e


def predict(model, images_uint8, mean, std, top=5):
    """[(class index, probability), ...] top-`top` per image, most likely first."""
    from .data import normalize

    probs = softmax(model.forward(normalize(images_uint8, mean, std, dtype=model.dtype)).astype(np.float64))
    order = np.argsort(-probs, axis=1)[:, :top]
    return [[(int(k), float(p[k])) for k in row] for row, p in zip(order, probs)]


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m tinyvit.predict", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="a .npz checkpoint written by tinyvit.train")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any format Pillow reads)")
    p.add_argument("--top", type=int, default=5)
    p.add_argument("--backend", choices=backend_names(), default=None, help=f"default: {default_backend_description()}")
    args = p.parse_args(argv)
    try:
        model, ck = model_from_checkpoint(args.checkpoint, args.backend)
        images = np.stack([load_image(f, ck.cfg.image_size) for f in args.images])
    except UsageError as e:
        sys.exit(f"error: {e}")
    names = ck.state.get("class_names") or [str(k) for k in range(ck.cfg.num_classes)]
    if "mean" not in ck.state or "std" not in ck.state:
        sys.exit(f"error: {args.checkpoint} holds no normalisation statistics (mean, std): not written by tinyvit.train")
    mean, std = np.asarray(ck.state["mean"], np.float32), np.asarray(ck.state["std"], np.float32)
    for path, top in zip(args.images, predict(model, images, mean, std, min(args.top, len(names)))):
        print(path)
        for k, prob in top:
            print(f"  {prob:7.2%}  {names[k]}")


if __name__ == "__main__":
    main()

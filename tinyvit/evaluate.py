"""python -m tinyvit.evaluate: accuracy, per-class accuracy and the confusion matrix of a checkpoint.

    python -m tinyvit.evaluate --checkpoint runs/cifar10/checkpoint.npz --data cifar10
    python -m tinyvit.evaluate --checkpoint runs/cifar10/checkpoint.npz --flip   # test-time flip averaging
    python -m tinyvit.evaluate --checkpoint runs/cifar10/checkpoint.npz --ema    # the run's moving average

With --flip every image is classified twice, as it is and mirrored left to right,
and the two logits are averaged before the loss and the argmax: the training
augmentation flips images, so both views are ones the model has learned from.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from .backend import backend_names, default_backend_description
from .errors import UsageError
from .layers import cross_entropy_forward


def evaluate_arrays(model, images, labels, mean=None, std=None, batch_size=256, progress=None, flip=False):
    """Mean loss, accuracy and predictions of `model` on uint8 images (B, H, W, C).

    mean, std: the normalisation; None takes the model's own (model.normalization).
    flip: average the logits of each image and its left-right mirror (test-time augmentation)."""
    from .data import normalize

    if mean is None or std is None:
        mean, std = (np.asarray(v, np.float32) for v in model.normalization)
    if len(labels) == 0:
        raise ValueError("there are no images to evaluate")
    total_loss, preds = 0.0, np.empty(len(labels), dtype=np.int64)
    for start in range(0, len(labels), batch_size):
        x = normalize(images[start : start + batch_size], mean, std, dtype=model.dtype)
        y = labels[start : start + batch_size]
        logits = model.forward(x).astype(np.float64)
        if flip:
            logits = 0.5 * (logits + model.forward(x[:, :, ::-1]).astype(np.float64))  # W is axis 2
        loss, _ = cross_entropy_forward(logits, y)  # the mean over this batch, without smoothing
        total_loss += loss * len(y)
        preds[start : start + len(y)] = logits.argmax(axis=1)
        if progress is not None:
            progress.update(len(y))
    return total_loss / len(labels), float((preds == labels).mean()), preds


def read_ema(path) -> dict:
    """The moving average of the parameters in a tinyvit checkpoint (name -> array); a UsageError
    naming the file when it holds none."""
    from .checkpoint import load_checkpoint

    ema = load_checkpoint(path).ema
    if not ema:
        raise UsageError(f"{path} holds no moving average of the parameters: it was trained without --ema")
    return ema


def confusion_matrix(labels, preds, num_classes):
    """(K, K): row = true class, column = predicted class."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (labels, preds), 1)
    return cm


def format_report(class_names, labels, preds) -> str:
    K = len(class_names)
    cm = confusion_matrix(labels, preds, K)
    width = max(6, max(len(n) for n in class_names))
    lines = [f"accuracy: {(preds == labels).mean():.4f} ({(preds == labels).sum()}/{len(labels)})", "", "per class:"]
    for k, name in enumerate(class_names):
        n = cm[k].sum()
        lines.append(f"  {name:<{width}} {cm[k, k] / max(n, 1):.4f}  ({cm[k, k]}/{n})")
    lines += ["", "confusion matrix (rows: true class, columns: predicted):"]
    lines.append(" " * (width + 2) + " ".join(f"{n[:5]:>5}" for n in class_names))
    for k, name in enumerate(class_names):
        lines.append(f"  {name:<{width}}" + " ".join(f"{c:>5}" for c in cm[k]))
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m tinyvit.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="a tinyvit, official (.npz) or timm (.safetensors) checkpoint")
    p.add_argument("--data", default=None, help="cifar10, shapes or folder:PATH (default: the data a tinyvit checkpoint was trained on)")
    p.add_argument("--data-dir", default=None, help="where datasets live (default: $TINYVIT_DATA or ~/.cache/tinyvit)")
    p.add_argument("--split", choices=["test", "train"], default="test")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--backend", choices=backend_names(), default=None, help=f"default: {default_backend_description()}")
    p.add_argument("--flip", action="store_true", help="average the logits of each image and its mirror image")
    p.add_argument("--ema", action="store_true", help="evaluate the moving average of a tinyvit checkpoint (trained with --ema)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    args = p.parse_args(argv)
    from tqdm import tqdm

    from .data import load_dataset
    from .pretrained import load_pretrained
    from .tensorfile import NPZ, TensorFile

    try:
        with TensorFile(args.checkpoint) as tf:
            state = json.loads(str(tf.read("state"))) if tf.kind == NPZ and "state" in tf.shapes else {}
        if args.data is None and "data" not in state:
            raise UsageError(f"{args.checkpoint} does not say what data it was trained on: pass --data")
        model = load_pretrained(args.checkpoint, backend=args.backend, dtype=state.get("dtype", "float32"))
        if args.ema:
            model.load_params(read_ema(args.checkpoint))
        ds = load_dataset(args.data or state["data"], data_dir=args.data_dir, image_size=model.cfg.image_size,
                          seed=state.get("seed", 0))  # fmt: skip
    except UsageError as e:
        sys.exit(f"error: {e}")
    images, labels = (ds.test_images, ds.test_labels) if args.split == "test" else (ds.train_images, ds.train_labels)
    if len(labels) == 0:
        sys.exit(f"error: the {args.split} split of {ds.name!r} has no images")
    if len(ds.class_names) != model.cfg.num_classes:
        sys.exit(f"error: the data has {len(ds.class_names)} classes, the checkpoint's model {model.cfg.num_classes}")
    with tqdm(total=len(labels), desc=f"evaluating {args.split}", unit="img", file=sys.stderr) as bar:
        loss, acc, preds = evaluate_arrays(model, images, labels, batch_size=args.batch_size, progress=bar,
                                           flip=args.flip)  # fmt: skip
    if args.json:
        cm = confusion_matrix(labels, preds, len(ds.class_names))
        print(json.dumps({"accuracy": acc, "loss": loss, "class_names": ds.class_names,
                          "per_class_accuracy": (np.diag(cm) / np.maximum(cm.sum(1), 1)).tolist(),
                          "confusion_matrix": cm.tolist()}))  # fmt: skip
    else:
        print(f"loss: {loss:.4f}")
        print(format_report(ds.class_names, labels, preds))


if __name__ == "__main__":
    main()

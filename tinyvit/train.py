"""python -m tinyvit.train: train a ViT, evaluate it each epoch, save checkpoints.

    python -m tinyvit.train --data cifar10
    python -m tinyvit.train --data shapes --preset testing --epochs 2
    python -m tinyvit.train --data cifar10 --out runs/c10 --resume

Each epoch ends with an evaluation on the test split, a line appended to
OUT/metrics.jsonl and a checkpoint OUT/checkpoint.npz (written atomically).
Ctrl-C, --max-minutes and --max-steps stop cleanly: evaluate, save, exit.
A non-finite loss stops training with a message naming the step and keeps the
last good checkpoint. --resume continues exactly where the checkpoint left off:
batch order and augmentation are drawn from generators seeded by (seed, epoch,
batch), so a resumed run takes the same steps as one that was never stopped
and ends with the same parameters, up to rounding (NumPy's SIMD sums depend on
where an array lies in memory; in float64 the runs agree to about 1e-12).
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import time
from pathlib import Path

import numpy as np

from .backend import backend_names, default_backend, get_backend
from .checkpoint import load_checkpoint, save_checkpoint
from .config import PRESETS, get_preset
from .data.base import resize_images
from .evaluate import evaluate_arrays
from .model import ViT, count_params
from .optim import AdamW, lr_at
from .resolution import params_at_resolution
from .threads import set_threads

MODEL_FLAGS = ("image_size", "patch_size", "dim", "depth", "heads", "mlp_dim")
# Options that may differ on --resume without changing what is computed.
RUN_FLAGS = ("resume", "max_minutes", "max_steps", "threads", "backend", "progress", "out", "data_dir")


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default where it says something: not for switches, not for None."""

    def _get_help_string(self, action):
        if action.default is None or isinstance(action.default, bool):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tinyvit.train", description=__doc__.split("\n\n")[0], formatter_class=_Help)
    g = p.add_argument_group("data")
    g.add_argument("--data", default="cifar10", help="cifar10, shapes, or folder:PATH")
    g.add_argument("--data-dir", default=None, help="where datasets live (default: $TINYVIT_DATA or ~/.cache/tinyvit)")
    g.add_argument("--no-augment", dest="augment", action="store_false", help="no random crop and flip")
    g = p.add_argument_group("model (a preset, then any field overridden)")
    g.add_argument("--preset", default="cifar-narrow", choices=sorted(PRESETS))
    for name in MODEL_FLAGS:
        g.add_argument("--" + name.replace("_", "-"), type=int, default=None, help=f"override the preset's {name}")
    g.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=20)
    g.add_argument("--batch-size", type=int, default=128)
    g.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
    g.add_argument("--min-lr", type=float, default=1e-5, help="learning rate at the end of the cosine")
    g.add_argument("--weight-decay", type=float, default=0.05, help="AdamW's decoupled decay (not on biases, norms, embeddings)")
    g.add_argument("--warmup-epochs", type=float, default=1.0, help="linear warmup length, in epochs")
    g.add_argument("--label-smoothing", type=float, default=0.1)
    g.add_argument("--clip-norm", type=float, default=1.0, help="global gradient norm limit (0: off)")
    g.add_argument("--progressive", default="", metavar="SIZE:EPOCHS,...",
                   help="train the first epochs at lower resolutions, e.g. 16:3,24:2 (then --image-size)")
    g = p.add_argument_group("run")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--backend", default=None, choices=backend_names(), help="default: the fastest available")
    g.add_argument("--threads", type=int, default=None, help="CPU threads for BLAS and numba (default: all cores)")
    g.add_argument("--out", default=None, help="output directory (default: runs/<data>)")
    g.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.npz")
    g.add_argument("--max-minutes", type=float, default=None, help="stop after this much wall-clock, then evaluate and save")
    g.add_argument("--max-steps", type=int, default=None, help="stop after this many optimiser steps in total")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    return p


def parse_progressive(text: str, final_size: int, patch: int, epochs: int) -> list[tuple[int, int]]:
    """'16:3,24:2' -> [(16, 3), (24, 2)]; each size must be a multiple of the patch size."""
    phases = []
    for part in filter(None, text.split(",")):
        try:
            size, n = (int(v) for v in part.split(":"))
        except ValueError:
            raise ValueError(f"--progressive expects SIZE:EPOCHS[,SIZE:EPOCHS...], got {text!r}") from None
        if size % patch or size <= 0 or size > final_size or n < 0:
            raise ValueError(f"--progressive size {size} must be a positive multiple of the patch size {patch} "
                             f"and at most the image size {final_size}; epochs {n} must be >= 0")  # fmt: skip
        phases.append((size, n))
    if sum(n for _, n in phases) > epochs:
        raise ValueError(f"--progressive covers {sum(n for _, n in phases)} epochs, more than --epochs {epochs}")
    return phases


def size_for_epoch(epoch: int, phases, final_size: int) -> int:
    for size, n in phases:
        if epoch < n:
            return size
        epoch -= n
    return final_size


class Stopper:
    """Turns the first Ctrl-C into a request to stop after the current step; a second one interrupts."""

    def __init__(self):
        self.requested = None

    def __enter__(self):
        self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = "interrupted (Ctrl-C)"
        print("\nstopping after this step: saving a checkpoint (Ctrl-C again to abort)", file=sys.stderr)

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self._old)


class NonFiniteLoss(RuntimeError):
    pass


def _kept(ckpt_path: Path) -> str:
    return f"the last good checkpoint {ckpt_path} is kept" if ckpt_path.exists() else "no checkpoint was written yet"


def _options(args) -> dict:
    return {k: v for k, v in vars(args).items() if k not in RUN_FLAGS}


def train(args) -> dict:
    """Run training as the parsed args say; returns the summary (also written to OUT/summary.json)."""
    from tqdm import tqdm

    from .data import augment_batch, load_dataset, normalize

    out = Path(args.out or f"runs/{args.data.replace(':', '_').replace('/', '_')}")
    ckpt_path = out / "checkpoint.npz"
    state = {"epoch": 0, "batch": 0, "step": 0, "elapsed_s": 0.0}
    ck = None
    if args.resume:
        ck = load_checkpoint(ckpt_path)
        saved = ck.state["options"]
        defaults = build_parser()
        clash = sorted(k for k, v in saved.items() if getattr(args, k) not in (v, defaults.get_default(k)))
        if clash:
            raise ValueError(f"--resume continues with the options saved in {ckpt_path}; these differ from them: "
                             + ", ".join(f"--{k.replace('_', '-')}" for k in clash))  # fmt: skip
        for k, v in saved.items():  # the run continues with the options it started with
            setattr(args, k, v)
        state.update({k: ck.state[k] for k in state})
        if state["epoch"] >= args.epochs:
            raise ValueError(f"{ckpt_path} is a finished run ({state['epoch']} of {args.epochs} epochs): nothing to resume")
    elif ckpt_path.exists():
        raise ValueError(f"{ckpt_path} already exists: pass --resume to continue it, or choose another --out")

    overrides = {k: getattr(args, k) for k in MODEL_FLAGS if getattr(args, k) is not None}
    base_cfg = get_preset(args.preset, **overrides)
    final_size = base_cfg.image_size
    phases = parse_progressive(args.progressive, final_size, base_cfg.patch_size, args.epochs)
    for name in ("epochs", "batch_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if not 0.0 <= args.label_smoothing < 1.0:
        raise ValueError(f"--label-smoothing must be in [0, 1), got {args.label_smoothing}")
    if args.lr <= 0:
        raise ValueError(f"--lr must be positive, got {args.lr}")
    for name in ("clip_norm", "weight_decay", "warmup_epochs", "min_lr", "max_steps", "max_minutes"):
        value = getattr(args, name)
        if value is not None and value < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {value}")

    backend = get_backend(args.backend or default_backend())
    threads = set_threads(args.threads)  # BLAS and numba alike
    ds = load_dataset(args.data, data_dir=args.data_dir, image_size=final_size, seed=args.seed, progress=args.progress)
    if len(ds.test_labels) == 0:
        raise ValueError(f"dataset {args.data!r} has no test images; the trainer evaluates on them every epoch")
    cfg = base_cfg.replace(num_classes=len(ds.class_names))
    n_train = len(ds.train_labels)
    steps_per_epoch = n_train // args.batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"--batch-size {args.batch_size} is larger than the training set ({n_train} images)")
    total_steps = args.epochs * steps_per_epoch
    warmup_steps = round(args.warmup_epochs * steps_per_epoch)
    mean, std = ds.mean, ds.std

    def make_model(size, params):
        if params is None:  # a fresh model at this size
            return ViT(cfg.replace(image_size=size), seed=args.seed, dtype=args.dtype, backend=backend)
        model_cfg, model_params = params_at_resolution(params, cfg, size)
        return ViT(model_cfg, seed=args.seed, dtype=args.dtype, backend=backend, params=model_params)

    def make_optimizer(model):
        return AdamW(model, lr=args.lr, weight_decay=args.weight_decay, clip_norm=args.clip_norm)

    if ck is not None:
        model = ViT(ck.cfg, dtype=args.dtype, backend=backend, params=ck.params)
        opt = make_optimizer(model)
        opt.load_state_dict(ck.opt_state)
    else:
        model = make_model(size_for_epoch(0, phases, final_size), None)
        opt = make_optimizer(model)

    resized = {final_size: (ds.train_images, ds.test_images)}

    def images_at(size):
        if size not in resized:
            resized[size] = (resize_images(ds.train_images, size), resize_images(ds.test_images, size))
        return resized[size]

    def checkpoint():
        meta = {**state, "options": _options(args), "seed": args.seed, "dtype": args.dtype,
                "class_names": ds.class_names, "mean": mean.tolist(), "std": std.tolist(), "data": args.data}  # fmt: skip
        save_checkpoint(ckpt_path, model.numpy_params(), model.cfg, meta, opt.state_dict())

    out.mkdir(parents=True, exist_ok=True)
    metrics_file = out / "metrics.jsonl"
    print(f"tinyvit: {args.data} ({n_train} train / {len(ds.test_labels)} test), {cfg.depth} blocks of width {cfg.dim}, "
          f"{count_params(cfg):,} parameters, backend {backend.name}, {threads} threads, {args.epochs} epochs "
          f"of {steps_per_epoch} steps -> {out}", file=sys.stderr)  # fmt: skip

    start_time = time.perf_counter() - state["elapsed_s"]
    stop_reason = None
    last = {}

    def should_stop():
        """Why to stop before the next step, or None: checked before each step, so limits are exact."""
        if stopper.requested:
            return stopper.requested
        if args.max_minutes is not None and time.perf_counter() - start_time >= 60 * args.max_minutes:
            return f"--max-minutes {args.max_minutes} reached"
        if args.max_steps is not None and state["step"] >= args.max_steps:
            return f"--max-steps {args.max_steps} reached"
        return None

    with Stopper() as stopper:
        while state["epoch"] < args.epochs and stop_reason is None:
            epoch = state["epoch"]
            size = size_for_epoch(epoch, phases, final_size)
            if model.cfg.image_size != size:  # progressive resolution: grow the grid, interpolate pos_embed
                model = make_model(size, model.numpy_params())
                moments = opt.state_dict()
                opt = make_optimizer(model)
                for k in ("m/pos_embed", "v/pos_embed"):  # the grid changed: its moments start afresh
                    moments[k] = np.zeros(model.params["pos_embed"].shape, np.float32)
                opt.load_state_dict(moments)
            train_images, test_images = images_at(size)
            perm = np.random.default_rng([args.seed, epoch]).permutation(n_train)
            seen = correct = 0
            loss_sum, lr = 0.0, lr_at(state["step"] + 1, args.lr, warmup_steps, total_steps, args.min_lr)
            t_epoch = time.perf_counter()
            bar = tqdm(total=steps_per_epoch, initial=state["batch"], desc=f"epoch {epoch + 1}/{args.epochs} {size}px",
                       unit="step", disable=not args.progress, file=sys.stderr, dynamic_ncols=True)  # fmt: skip
            for b in range(state["batch"], steps_per_epoch):
                stop_reason = should_stop()
                if stop_reason:
                    break
                idx = perm[b * args.batch_size : (b + 1) * args.batch_size]
                batch = train_images[idx]
                if args.augment:
                    # the crop's padding scales with the resolution: 4 px at 32 px, as in the usual CIFAR recipe
                    batch = augment_batch(batch, np.random.default_rng([args.seed, epoch, b]), pad=max(1, size // 8))
                x, y = normalize(batch, mean, std, dtype=model.dtype), ds.train_labels[idx]
                loss, grads, logits = model.loss_and_grads(x, y, args.label_smoothing, return_logits=True)
                loss = float(loss)  # a backend scalar inside the step; a Python float from here on
                if not math.isfinite(loss):
                    bar.close()
                    raise NonFiniteLoss(f"loss is {loss} at step {state['step'] + 1} (epoch {epoch + 1}, batch {b + 1}); "
                                        f"stopped without saving; {_kept(ckpt_path)}")  # fmt: skip
                lr = lr_at(state["step"] + 1, args.lr, warmup_steps, total_steps, args.min_lr)
                try:
                    opt.step(grads, lr)
                except FloatingPointError as e:
                    bar.close()
                    raise NonFiniteLoss(f"{e} at step {state['step'] + 1}; {_kept(ckpt_path)}") from e
                state["step"] += 1
                state["batch"] = b + 1
                seen += len(y)
                correct += int((logits.argmax(1) == y).sum())
                loss_sum += loss * len(y)
                rate = seen / (time.perf_counter() - t_epoch)
                bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}", lr=f"{lr:.2e}", img_s=f"{rate:.0f}")
                bar.update(1)
            bar.close()
            train_time = time.perf_counter() - t_epoch
            if state["batch"] >= steps_per_epoch:
                state["epoch"], state["batch"] = epoch + 1, 0
            test_loss, test_acc, _ = evaluate_arrays(model, test_images, ds.test_labels, mean, std)
            state["elapsed_s"] = time.perf_counter() - start_time
            last = {"epoch": epoch + 1, "step": state["step"], "image_size": size, "lr": lr,
                    "train_loss": loss_sum / seen if seen else None, "train_acc": correct / seen if seen else None,
                    "test_loss": test_loss, "test_acc": test_acc, "images_per_s": seen / max(train_time, 1e-9),
                    "elapsed_min": state["elapsed_s"] / 60, "partial_epoch": state["batch"] != 0}  # fmt: skip
            with open(metrics_file, "a") as f:
                f.write(json.dumps(last) + "\n")
            checkpoint()
            trained = f"train loss {loss_sum / seen:.4f} acc {correct / seen:.4f}" if seen else "no steps"
            print(f"epoch {epoch + 1}: {trained} | test loss {test_loss:.4f} acc {test_acc:.4f} | "
                  f"{state['elapsed_s'] / 60:.1f} min", file=sys.stderr)  # fmt: skip
    summary = {"test_acc": last.get("test_acc"), "test_loss": last.get("test_loss"), "epochs_done": state["epoch"],
               "steps": state["step"], "minutes": state["elapsed_s"] / 60, "stopped": stop_reason,
               "checkpoint": str(ckpt_path), "backend": backend.name, "params": count_params(cfg)}  # fmt: skip
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"done{' (' + stop_reason + ')' if stop_reason else ''}: test accuracy {summary['test_acc']:.4f} after "
          f"{summary['steps']} steps in {summary['minutes']:.1f} min; checkpoint {ckpt_path}", file=sys.stderr)  # fmt: skip
    return summary


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        train(args)
    except NonFiniteLoss as e:
        sys.exit(f"error: {e}")
    except ValueError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()

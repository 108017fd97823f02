"""python -m tinyvit.train: train a ViT, evaluate it each epoch, save checkpoints.

    python -m tinyvit.train --data cifar10     # the 30-minute recipe: RECIPES, docs/training.md
    python -m tinyvit.train --data shapes --preset testing --epochs 2
    python -m tinyvit.train --data cifar10 --out runs/c10 --resume
    python -m tinyvit.train --init ViT-B_16.npz --data folder:flowers --image-size 384   # fine-tune

Each epoch ends with an evaluation on the test split (with --eval-every N only
every N-th epoch, the last at each resolution and the last), a line appended to
OUT/metrics.jsonl and a checkpoint OUT/checkpoint.npz (written atomically).
With --init the model starts from a pretrained checkpoint (any file
tinyvit.load_pretrained reads): its shape, weights and input normalisation, a
new zero head for the data's classes, and by default the paper's fine-tuning
optimiser (SGD with momentum 0.9, no weight decay, no label smoothing). A temporary file left
beside the checkpoint by a run killed while saving is removed by the next run.
With --ema a moving average of the weights is kept beside them, evaluated each
epoch and saved in the checkpoint; --eval-flip evaluates each image and its mirror.
The next batches are prepared in a background thread (--prefetch), which changes
nothing but the speed.
Ctrl-C, --max-minutes and --max-steps stop cleanly: evaluate, save, exit.
A non-finite loss stops training with a message naming the step and keeps the
last good checkpoint. --resume continues exactly where the checkpoint left off:
batch order and augmentation are drawn from generators seeded by (seed, epoch,
batch), so a resumed run takes the same steps as one that was never stopped
and ends with the same parameters, up to rounding (NumPy's SIMD sums depend on
where an array lies in memory; in float64 the runs agree to about 1e-12).

Reading order: `train` is the loop. `set_up` checks the options, resumes or
starts, loads the data and builds the step; `train_epoch` runs one epoch's
steps; a step (`HostStep`) is one optimiser update and reports a `StepResult`;
`end_epoch` evaluates, logs and writes the checkpoint; `finish` writes the summary.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .backend import (
    Backend,
    backend_hint,
    backend_names,
    default_backend,
    default_backend_description,
    get_backend,
)
from .checkpoint import load_checkpoint, remove_stale_temporaries, save_checkpoint
from .config import CLASSIFIERS, POS_EMBEDS, PRESETS, ViTConfig, get_preset
from .data.base import Dataset, resize_images
from .ema import ema_decay, ema_start, ema_update
from .errors import UsageError
from .evaluate import evaluate_arrays
from .model import ATTENTION_INITS, ViT, count_params
from .optim import SGD, AdamW, AdamWHyper, lr_at
from .prefetch import Prefetch
from .pretrained import load_pretrained, read_config
from .resolution import params_at_resolution, resize_pos_embed
from .threads import set_threads

MODEL_FLAGS = ("image_size", "patch_size", "dim", "depth", "heads", "mlp_dim")
MODEL_CHOICES = {"pos_embed": POS_EMBEDS, "classifier": CLASSIFIERS}  # ViTConfig's options the flags can set
MODEL_OPTIONS = (*MODEL_FLAGS, *MODEL_CHOICES, "rel_pos_bias")
# Options that may differ on --resume without changing what is computed.
RUN_FLAGS = ("resume", "max_minutes", "max_steps", "threads", "backend", "progress", "out", "data_dir", "prefetch",
             "eval_every", "devices", "shard_params", "coordinator", "num_processes", "process_id")

# What a flag left out means. `--data cifar10` trains from scratch with its own recipe
# (docs/training.md: sized to end within 30 minutes on a 2-core CPU, evaluations included);
# any other run, and a fine-tuning run (--init), takes the plain defaults. A flag given always wins.
PLAIN_DEFAULTS = {"preset": "cifar-narrow", "epochs": 20, "progressive": "", "warmup_epochs": 1.0, "decay_over": "steps",
                  "crop_pad": 0.125, "init_attention": "xavier", "ema": 0.0, "eval_flip": False, "eval_every": 1}  # fmt: skip
RECIPES = {
    "cifar10": {"preset": "cifar-narrow", "classifier": "gap", "init_attention": "mimetic",
                "epochs": 27, "progressive": "16:18,24:5", "lr": 2e-3, "warmup_epochs": 1.0, "decay_over": "final",
                "weight_decay": 0.1, "label_smoothing": 0.1, "crop_pad": 0.0625, "ema": 0.0, "eval_flip": False,
                "eval_every": 4},
}  # fmt: skip


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default where it says something: not for switches, not for None."""

    def _get_help_string(self, action):
        if action.default is None or isinstance(action.default, bool):
            return action.help
        return super()._get_help_string(action)


def flag_text(name: str, value) -> str:
    """The command-line flag that sets option `name` to `value`: flag_text("eval_flip", False) == "--no-eval-flip"."""
    flag = name.replace("_", "-")
    if isinstance(value, bool):
        return f"--{flag}" if value else f"--no-{flag}"
    return f"--{flag} {value}"


def build_parser() -> argparse.ArgumentParser:
    recipe = " ".join(flag_text(k, v) for k, v in RECIPES["cifar10"].items())
    p = argparse.ArgumentParser(prog="python -m tinyvit.train", description=__doc__.split("\n\n")[0], formatter_class=_Help,
                                epilog=f"--data cifar10 (without --init) gives every flag left out the value of its "
                                       f"30-minute recipe (docs/training.md): {recipe}")  # fmt: skip
    g = p.add_argument_group("data")
    g.add_argument("--data", default="cifar10", help="cifar10, shapes, or folder:PATH")
    g.add_argument("--data-dir", default=None, help="where datasets live (default: $TINYVIT_DATA or ~/.cache/tinyvit)")
    g.add_argument("--no-augment", dest="augment", action="store_false", help="no random crop and flip")
    g.add_argument("--crop-pad", type=float, default=None, metavar="FRACTION",
                   help="the random crop's zero padding as a fraction of the image side, at least 1 px (0: flips only; "
                        "default 0.125: 4 px at 32 px)")
    g = p.add_argument_group("model (a preset, then any field overridden)")
    g.add_argument("--preset", default=None, choices=sorted(PRESETS), help="default: cifar-narrow")
    for name in MODEL_FLAGS:
        g.add_argument("--" + name.replace("_", "-"), type=int, default=None, help=f"override the preset's {name}")
    g.add_argument("--pos-embed", default=None, choices=POS_EMBEDS,
                   help="position embedding: learned (the presets'), sincos2d (fixed 2-D sines and cosines) or none")
    g.add_argument("--classifier", default=None, choices=CLASSIFIERS,
                   help="what the head reads: the class token (the presets'), or gap, the mean of all tokens")
    g.add_argument("--rel-pos-bias", type=int, default=None, metavar="K",
                   help="a learned attention bias per head for each row/column offset between patches, clipped to K (0: none)")
    g.add_argument("--init-attention", default=None, choices=ATTENTION_INITS,
                   help="qkv and proj weights: xavier (default), or mimetic (W_q W_k^T near +identity, W_v W_proj near -identity)")
    g.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    g.add_argument("--init", default=None, metavar="PATH",
                   help="start from a pretrained checkpoint (official .npz, timm .safetensors, tinyvit .npz): "
                        "its shape, weights and normalisation, a new head; only --image-size (and --heads for timm) may be given")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=None, help="default: 20")
    g.add_argument("--batch-size", type=int, default=128)
    g.add_argument("--optimizer", default=None, choices=["adamw", "sgd"],
                   help="default: sgd (momentum, the paper's fine-tuning) with --init, else adamw")
    g.add_argument("--lr", type=float, default=None, help="peak learning rate (default: 0.01 for sgd, 2e-3 for adamw)")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD's momentum")
    g.add_argument("--min-lr", type=float, default=1e-5, help="learning rate at the end of the cosine")
    g.add_argument("--weight-decay", type=float, default=None,
                   help="not on biases, norms, embeddings: AdamW's decoupled decay (default 0.05; the cifar10 recipe 0.1), SGD's L2 term (default 0)")
    g.add_argument("--warmup-epochs", type=float, default=None, help="linear warmup length, in epochs (default: 1)")
    g.add_argument("--decay-over", default=None, choices=["steps", "compute", "final"],
                   help="the cosine runs over optimiser steps (default), or over compute: each step counts as its "
                        "image size's share of FLOPs, so epochs at lower resolution take less of the decay; or final: "
                        "the peak is held until the final resolution starts and the cosine runs over its steps")
    g.add_argument("--label-smoothing", type=float, default=None, help="default: 0.1, and 0 with --init (as the paper fine-tunes)")
    g.add_argument("--clip-norm", type=float, default=1.0, help="global gradient norm limit (0: off)")
    g.add_argument("--progressive", default=None, metavar="SIZE:EPOCHS,...",
                   help="train the first epochs at lower resolutions, e.g. 16:3,24:2 (then --image-size); default: none")
    g.add_argument("--ema", type=float, default=None, metavar="DECAY",
                   help="keep a moving average of the weights with this decay (e.g. 0.999), evaluated and saved beside them (default 0: off)")
    g.add_argument("--eval-flip", action=argparse.BooleanOptionalAction, default=None,
                   help="evaluate on each test image and its mirror image, logits averaged (default: off)")
    g.add_argument("--eval-every", type=int, default=None, metavar="N",
                   help="evaluate on the test split after every N-th epoch, the last epoch at each resolution, "
                        "the last epoch and any stop (default: 1, every epoch)")
    g = p.add_argument_group("run")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--backend", default=None, choices=backend_names(), help=f"default: {default_backend_description()}")
    g.add_argument("--threads", type=int, default=None, help="CPU threads for BLAS and numba (default: all cores)")
    g.add_argument("--out", default=None, help="output directory (default: runs/<data>)")
    g.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.npz")
    g.add_argument("--max-minutes", type=float, default=None, help="stop after this much wall-clock, then evaluate and save")
    g.add_argument("--max-steps", type=int, default=None, help="stop after this many optimiser steps in total")
    g.add_argument("--prefetch", type=int, default=2, metavar="N",
                   help="prepare the next N batches in a background thread (0: on the main thread); the steps are the same")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress output (a bar on a terminal, else a line every 5%% of an epoch)")
    g = p.add_argument_group("scale-out (--backend jax; see docs/scaling.md)")
    g.add_argument("--devices", type=int, default=None, help="use the first N devices (default: every device JAX finds)")
    g.add_argument("--shard-params", action="store_true",
                   help="shard parameters and AdamW moments over the devices (FSDP style) instead of replicating them")
    g.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                   help="multi-process: the address of process 0 (auto-detected on Cloud TPU VMs and under SLURM)")
    g.add_argument("--num-processes", type=int, default=None, help="multi-process: how many processes take part")
    g.add_argument("--process-id", type=int, default=None, help="multi-process: this process's index, from 0")
    return p


def parse_progressive(text: str, final_size: int, patch: int, epochs: int) -> list[tuple[int, int]]:
    """'16:3,24:2' -> [(16, 3), (24, 2)]; each size must be a multiple of the patch size."""
    phases = []
    for part in filter(None, text.split(",")):
        try:
            size, n = (int(v) for v in part.split(":"))
        except ValueError:
            raise UsageError(f"--progressive expects SIZE:EPOCHS[,SIZE:EPOCHS...], got {text!r}") from None
        if size % patch or size <= 0 or size > final_size or n < 0:
            raise UsageError(f"--progressive size {size} must be a positive multiple of the patch size {patch} "
                             f"and at most the image size {final_size}; epochs {n} must be >= 0")  # fmt: skip
        phases.append((size, n))
    if sum(n for _, n in phases) > epochs:
        raise UsageError(f"--progressive covers {sum(n for _, n in phases)} epochs, more than --epochs {epochs}")
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
    """A step's loss or gradient norm is not finite: training stops without saving."""


# -- the step ----------------------------------------------------------------------------------


def to_float(backend: Backend, scalar) -> float:
    """A backend scalar (a number, or a one-element backend array) as a Python float.

    The trainer calls it only where a number is shown or written, so a device
    backend copies a scalar to the host only then."""
    if isinstance(scalar, (int, float, np.number)):
        return float(scalar)
    return float(np.asarray(backend.to_numpy(scalar)).reshape(-1)[0])


class StepResult(NamedTuple):
    """What one training step reports, as backend scalars (see to_float)."""

    loss: Any  # the batch's mean loss, label smoothing included
    grad_norm: Any  # the global gradient norm, before clipping
    correct: Any  # how many of the batch's images the model (before this update) classified right


class HostStep:
    """One optimiser step on a backend driven from Python (numpy, numba, cuda).

        step = HostStep(model, optimizer, label_smoothing)
        result = step(images, labels, lr)      # -> StepResult

    The step owns the training state, on the backend: the parameters in
    `step.model.params` and the optimiser's moments in `step.optimizer.state`; each call
    replaces them with the updated arrays. The step is the model's hand-written
    loss_and_grads, then AdamW or SGD (global-norm clipping first), one backend op at a
    time. A step that compiles all of it into one function can take its place
    (tinyvit.distributed.JaxStep is one): the trainer needs only `model` (to
    evaluate), `host_params()` and `optimizer_state()` (to checkpoint), and the call.

    Raises FloatingPointError when the loss or the gradient norm is not
    finite, before any parameter changes.
    """

    def __init__(self, model: ViT, optimizer: AdamW | SGD, label_smoothing: float):
        self.model, self.optimizer, self.label_smoothing = model, optimizer, label_smoothing

    def __call__(self, images: np.ndarray, labels: np.ndarray, lr: float) -> StepResult:
        """images (B, H, W, C) normalised, labels (B,) ints -> StepResult, after one update at rate lr."""
        ops = self.model.backend
        loss, grads, logits = self.model.loss_and_grads(images, labels, self.label_smoothing, return_logits=True)
        value = to_float(ops, loss)  # read every step: a bad loss must stop the run before it updates anything
        if not math.isfinite(value):
            raise FloatingPointError(f"loss is {value}")
        grad_norm = self.optimizer.step(grads, lr)  # FloatingPointError for a non-finite norm, nothing updated
        return StepResult(loss, grad_norm, ops.count_correct(logits, labels))

    def host_params(self) -> dict[str, np.ndarray]:
        """The parameters as host arrays (the checkpoint's format)."""
        return self.model.numpy_params()

    def optimizer_state(self) -> dict:
        """The optimiser's moments and step count as host arrays (the checkpoint's format)."""
        return self.optimizer.state_dict()


# -- set-up and resume -------------------------------------------------------------------------


@dataclass
class Position:
    """Where a run stands; saved in every checkpoint, so --resume starts from here."""

    epoch: int = 0  # epochs finished
    batch: int = 0  # batches done in the current epoch
    step: int = 0  # optimiser steps in total
    elapsed_s: float = 0.0  # training wall-clock so far, over every resume


@dataclass
class Run:
    """What stays fixed through a run: the options, the data, the schedule, the backend, the files."""

    args: argparse.Namespace
    out: Path
    ds: Dataset
    cfg: ViTConfig  # the final model; progressive phases change only its image_size
    phases: list[tuple[int, int]]
    backend: Backend
    threads: int
    steps_per_epoch: int
    mean: np.ndarray  # (3,) the normalisation the model expects: the data's, or a pretrained model's own
    std: np.ndarray
    mesh: Any = None  # --backend jax: the device mesh the step runs over
    process: int = 0  # multi-process: this process's index; each feeds its own rows of every batch
    processes: int = 1
    _resized: dict = field(default_factory=dict)
    _costs: dict = field(default_factory=dict)

    @property
    def writer(self) -> bool:
        """Only one process writes files and progress: process 0."""
        return self.process == 0

    @property
    def ckpt_path(self) -> Path:
        return self.out / "checkpoint.npz"

    def lr(self, step: int) -> float:
        """The learning rate of optimiser step `step` (counted from 1): warmup and cosine over the
        run's work, where each step is one unit of work (--decay-over steps) or its FLOPs at its
        epoch's image size over those at the final size (--decay-over compute); or warmup, the peak
        held until the final resolution starts, and the cosine over its steps (--decay-over final)."""
        a = self.args
        warmup = round(a.warmup_epochs * self.steps_per_epoch)
        total = a.epochs * self.steps_per_epoch
        if a.decay_over == "final":
            final = next(e for e in range(a.epochs) if self.size_for_epoch(e) == self.cfg.image_size)
            return lr_at(step, a.lr, warmup, total, a.min_lr, hold=final * self.steps_per_epoch)
        work = self.work_done
        return lr_at(work(step), a.lr, work(warmup), work(total), a.min_lr)

    def work_done(self, steps: int) -> float:
        """The work of the first `steps` optimiser steps (see lr)."""
        if self.args.decay_over == "steps":
            return float(steps)
        epoch, within = divmod(steps, self.steps_per_epoch)
        cost = [self.step_cost(self.size_for_epoch(e)) for e in range(epoch + 1)]
        return self.steps_per_epoch * sum(cost[:epoch]) + within * cost[epoch]

    def step_cost(self, size: int) -> float:
        """A step's FLOPs at `size` pixels over its FLOPs at the final size."""
        if size not in self._costs:
            self._costs[size] = self.cfg.replace(image_size=size).forward_flops() / self.cfg.forward_flops()
        return self._costs[size]

    def size_for_epoch(self, epoch: int) -> int:
        return size_for_epoch(epoch, self.phases, self.cfg.image_size)

    def images_at(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        """(train, test) uint8 images at `size` pixels, resized once and kept."""
        if size not in self._resized:
            ds = self.ds
            same = size == ds.image_size
            self._resized[size] = (ds.train_images, ds.test_images) if same else \
                (resize_images(ds.train_images, size), resize_images(ds.test_images, size))  # fmt: skip
        return self._resized[size]

    def batch(self, epoch: int, b: int, order: np.ndarray, images: np.ndarray, dtype) -> tuple[np.ndarray, np.ndarray]:
        """Batch b of the epoch: normalised images (B, S, S, 3) and labels (B,); augmented from a
        generator seeded by (seed, epoch, b), so a resumed run draws the same crops and flips."""
        from .data import augment_batch, normalize

        a = self.args
        idx = order[b * a.batch_size : (b + 1) * a.batch_size]
        local = a.batch_size // self.processes  # several processes: each loads only its own rows
        first = self.process * local
        idx = idx[first : first + local]
        batch = images[idx]
        if a.augment:
            # the crop's padding scales with the resolution: by default 4 px at 32 px, as in the usual CIFAR recipe
            pad = max(1, int(a.crop_pad * images.shape[1])) if a.crop_pad > 0 else 0
            batch = augment_batch(batch, np.random.default_rng([a.seed, epoch, b]), pad=pad, rows=(first, a.batch_size))
        return normalize(batch, self.mean, self.std, dtype=dtype), self.ds.train_labels[idx]


def _options(args) -> dict:
    return {k: v for k, v in vars(args).items() if k not in RUN_FLAGS}


def _kept(ckpt_path: Path) -> str:
    return f"the last good checkpoint {ckpt_path} is kept" if ckpt_path.exists() else "no checkpoint was written yet"


def fill_defaults(args) -> None:
    """Give each flag left out its value: the data's recipe for a run from scratch, else PLAIN_DEFAULTS.
    (lr, weight decay and label smoothing left out of both depend on the optimiser: see set_up.)"""
    recipe = {} if args.init else RECIPES.get(args.data, {})
    for name, value in {**PLAIN_DEFAULTS, **recipe}.items():
        if getattr(args, name) is None:
            setattr(args, name, value)


def check_options(args, cfg: ViTConfig) -> list[tuple[int, int]]:
    """Refuse option values that cannot train; returns the progressive phases."""
    phases = parse_progressive(args.progressive, cfg.image_size, cfg.patch_size, args.epochs)
    for name in ("epochs", "batch_size"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if not 0.0 <= args.label_smoothing < 1.0:
        raise UsageError(f"--label-smoothing must be in [0, 1), got {args.label_smoothing}")
    if args.lr <= 0:
        raise UsageError(f"--lr must be positive, got {args.lr}")
    if not 0.0 <= args.momentum < 1.0:
        raise UsageError(f"--momentum must be in [0, 1), got {args.momentum}")
    if not 0.0 <= args.ema < 1.0:
        raise UsageError(f"--ema must be in [0, 1) (0: off), got {args.ema}")
    if args.eval_every < 1:
        raise UsageError(f"--eval-every must be at least 1, got {args.eval_every}")
    if not 0.0 <= args.crop_pad < 0.5:
        raise UsageError(f"--crop-pad is a fraction of the image side in [0, 0.5), got {args.crop_pad}")
    if args.prefetch < 0:
        raise UsageError(f"--prefetch must be >= 0, got {args.prefetch}")
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be at least 1, got {args.threads}")
    for name in ("clip_norm", "weight_decay", "warmup_epochs", "min_lr", "max_steps", "max_minutes"):
        value = getattr(args, name)
        if value is not None and value < 0:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 0, got {value}")
    return phases


def resume_checkpoint(args, ckpt_path: Path):
    """With --resume: the checkpoint to continue, its options copied into args; else None.

    Refuses a finished run, options that differ from the saved ones, and (without
    --resume) an existing checkpoint that a fresh run would overwrite."""
    if not args.resume:
        if ckpt_path.exists():
            raise UsageError(f"{ckpt_path} already exists: pass --resume to continue it, or choose another --out")
        return None
    ck = load_checkpoint(ckpt_path)
    saved = {"decay_over": "steps", "crop_pad": 0.125, **ck.state["options"]}  # checkpoints from before these flags
    defaults = build_parser()
    clash = sorted(k for k, v in saved.items() if getattr(args, k) not in (v, defaults.get_default(k)))
    if clash:
        raise UsageError(f"--resume continues with the options saved in {ckpt_path}; these differ from them: "
                         + ", ".join(f"--{k.replace('_', '-')}" for k in clash))  # fmt: skip
    for k, v in saved.items():  # the run continues with the options it started with
        setattr(args, k, v)
    if ck.state["epoch"] >= args.epochs:
        raise UsageError(f"{ckpt_path} is a finished run ({ck.state['epoch']} of {args.epochs} epochs): nothing to resume")
    return ck


def build_step(run: Run, cfg: ViTConfig, params=None, optimizer_state=None) -> HostStep:
    """A step for a model of `cfg`: fresh (seeded) parameters, or the given ones and optimiser state.

    `jax`: one compiled step over the run's device mesh (tinyvit.distributed.JaxStep);
    every other backend: HostStep."""
    a = run.args
    model = ViT(cfg, seed=a.seed, dtype=a.dtype, backend=run.backend, params=params, normalization=(run.mean, run.std),
                attention_init=a.init_attention)  # fmt: skip
    if run.mesh is not None:
        from .distributed import JaxStep

        step = JaxStep(model, run.mesh, AdamWHyper(weight_decay=a.weight_decay), a.clip_norm, a.label_smoothing,
                       shard_params=a.shard_params)  # fmt: skip
        if optimizer_state is not None:
            step.load_optimizer_state(optimizer_state)
        return step
    if a.optimizer == "sgd":
        optimizer = SGD(model, lr=a.lr, momentum=a.momentum, weight_decay=a.weight_decay, clip_norm=a.clip_norm)
    else:
        optimizer = AdamW(model, lr=a.lr, weight_decay=a.weight_decay, clip_norm=a.clip_norm)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    return HostStep(model, optimizer, a.label_smoothing)


def set_up(args) -> tuple[Run, Position, HostStep, dict | None]:
    """Check the options, resume or start, load the data: the run, where it stands, its step and
    (with --ema) the moving average of the parameters, as backend arrays."""
    from .data import load_dataset

    out = Path(args.out or f"runs/{args.data.replace(':', '_').replace('/', '_')}")
    for stale in remove_stale_temporaries(out / "checkpoint.npz"):
        print(f"removed {stale}, left by a run stopped while saving", file=sys.stderr)
    ck = resume_checkpoint(args, out / "checkpoint.npz")
    position = Position(**{k: ck.state[k] for k in asdict(Position())}) if ck else Position()
    fill_defaults(args)
    if args.optimizer is None:
        args.optimizer = "sgd" if args.init else "adamw"
    if args.lr is None:
        args.lr = 0.01 if args.optimizer == "sgd" else 2e-3
    if args.weight_decay is None:
        args.weight_decay = 0.0 if args.optimizer == "sgd" else 0.05
    if args.label_smoothing is None:
        args.label_smoothing = 0.0 if args.init else 0.1
    base_cfg = model_config(args, ck)
    phases = check_options(args, base_cfg)

    if args.backend is None and (hint := backend_hint()):
        print(hint, file=sys.stderr)
    backend = get_backend(args.backend or default_backend())
    mesh, process, processes = scale_out(args, backend)
    if mesh is not None and args.optimizer == "sgd":
        raise UsageError("--optimizer sgd runs on the numpy, numba and cuda backends; the jax step is AdamW's: "
                         "pass --optimizer adamw")  # fmt: skip
    threads = set_threads(args.threads)  # BLAS and numba alike
    ds = load_dataset(args.data, data_dir=args.data_dir, image_size=base_cfg.image_size, seed=args.seed,
                      progress=args.progress and sys.stderr.isatty())  # fmt: skip
    if len(ds.test_labels) == 0:
        raise UsageError(f"dataset {args.data!r} has no test images; the trainer evaluates on them every epoch")
    steps_per_epoch = len(ds.train_labels) // args.batch_size
    if steps_per_epoch < 1:
        raise UsageError(f"--batch-size {args.batch_size} is larger than the training set ({len(ds.train_labels)} images)")
    cfg = base_cfg.replace(num_classes=len(ds.class_names))
    mean, std, init = ds.mean, ds.std, None
    if ck is not None:
        mean, std = np.asarray(ck.state["mean"], np.float32), np.asarray(ck.state["std"], np.float32)
    elif args.init:  # the normalisation the pretrained weights expect, not this data's statistics
        first = size_for_epoch(0, phases, base_cfg.image_size)
        init = load_pretrained(args.init, num_classes=cfg.num_classes, image_size=first, backend=backend,
                               dtype=args.dtype, heads=args.heads)  # fmt: skip
        mean, std = (np.asarray(v, np.float32) for v in init.normalization)
        cfg = init.cfg.replace(image_size=base_cfg.image_size)  # a new head drops pre_logits, as the official code does
    run = Run(args, out, ds, cfg, phases, backend, threads, steps_per_epoch, mean, std, mesh, process, processes)
    if ck is not None:
        try:
            step = build_step(run, ck.cfg, ck.params, ck.opt_state)
        except (ValueError, KeyError) as e:  # parameters or moments that do not fit the checkpoint's config
            raise UsageError(f"{run.ckpt_path} does not hold a usable model and optimiser state: {e!r}") from e
    elif init is not None:
        step = build_step(run, init.cfg, init.numpy_params())
    else:
        step = build_step(run, cfg.replace(image_size=run.size_for_epoch(0)))
    return run, position, step, start_ema(run, step, ck)


def start_ema(run: Run, step: HostStep, ck) -> dict | None:
    """With --ema: the checkpoint's moving average (resume), else one equal to the parameters; else None."""
    if not run.args.ema:
        return None
    ops, params = step.model.backend, step.model.params
    if ck is None:
        return ema_start(ops, params)
    if set(ck.ema) != set(params):
        raise UsageError(f"{run.ckpt_path} holds no moving average of every parameter to resume --ema from")
    return {k: ops.asarray(np.asarray(ck.ema[k]), step.model.dtype) for k in params}


def scale_out(args, backend: Backend):
    """--backend jax: join a multi-process job if there is one, build the device mesh, check that
    the global batch splits evenly. Returns (mesh, this process's index, process count);
    (None, 0, 1) for the other backends, which run in one process on one device."""
    flags = [f for f in ("devices", "coordinator", "num_processes", "process_id") if getattr(args, f) is not None]
    flags += ["shard_params"] if args.shard_params else []
    if backend.name != "jax":
        if flags:
            raise UsageError(f"--{flags[0].replace('_', '-')} needs --backend jax, got --backend {backend.name}")
        return None, 0, 1
    import jax

    from .distributed import data_mesh, initialize

    initialize(args.coordinator, args.num_processes, args.process_id)
    mesh = data_mesh(args.devices)
    n, processes = mesh.devices.size, jax.process_count()
    if args.batch_size % n:
        raise UsageError(f"--batch-size {args.batch_size} must divide by the {n} devices it is split over")
    if args.batch_size % processes:
        raise UsageError(f"--batch-size {args.batch_size} must divide by the {processes} processes that load it")
    return mesh, jax.process_index(), processes


def model_config(args, ck) -> ViTConfig:
    """The final model's config but its class count: a resumed run's own, a pretrained file's
    (--init, with --image-size), or the preset with the model flags."""
    if ck is not None and "final_config" in ck.state:  # whatever the flags or the --init file say now
        return ViTConfig.from_dict(ck.state["final_config"])
    if args.init:
        fixed = [k for k in MODEL_OPTIONS if k not in ("image_size", "heads") and getattr(args, k) is not None]
        fixed += ["init_attention"] if args.init_attention != "xavier" else []
        if fixed:
            raise UsageError(f"--init takes the model's shape from {args.init}; "
                             + ", ".join(f"--{k.replace('_', '-')}" for k in fixed) + " cannot change it")  # fmt: skip
        cfg = read_config(args.init, heads=args.heads)
        if args.image_size is not None:
            if args.image_size < 1 or args.image_size % cfg.patch_size:
                raise UsageError(f"--image-size {args.image_size} must be a multiple of {args.init}'s patch size {cfg.patch_size}")
            cfg = cfg.replace(image_size=args.image_size)
        return cfg
    overrides = {k: getattr(args, k) for k in MODEL_OPTIONS if getattr(args, k) is not None}
    try:
        return get_preset(args.preset, **overrides)
    except ValueError as e:  # the config's own checks, of values the user chose
        raise UsageError(f"the model options do not fit together: {e}") from e


def step_at_resolution(run: Run, step: HostStep, ema: dict | None, size: int) -> tuple[HostStep, dict | None]:
    """The same step and moving average, or (progressive resolution) ones whose model takes
    `size`-pixel images: a learned pos_embed interpolated to the new grid, and so are its optimiser
    moments and its moving average; the rest kept.

    The moments follow the parameter, as the step count does: zeroed moments under a step
    count in the thousands would make AdamW's updates of pos_embed several times the learning
    rate (for a steady gradient, m / sqrt(v) is 3.2 at the first step, 6.5 at the tenth, still
    1.3 at the thousandth, where it would be 1 with moments of its own age), while the learning
    rate is still high."""
    if step.model.cfg.image_size == size:
        return step, ema
    cfg, params = params_at_resolution(step.host_params(), run.cfg, size)
    moments = step.optimizer_state()
    for k in [k for k in moments if k.endswith("/pos_embed")]:  # AdamW's m and v, SGD's momentum
        # bilinear: v stays >= 0 (each new value is a convex mix of old ones)
        moments[k] = resize_pos_embed(np.asarray(moments[k]), cfg.grid_size, cfg.has_class_token)
    step = build_step(run, cfg, params, moments)
    if ema is not None:
        ops = step.model.backend
        _, host = params_at_resolution({k: ops.to_numpy(v) for k, v in ema.items()}, run.cfg, size)
        ema = {k: ops.asarray(host[k], step.model.dtype) for k in params}
    return step, ema


# -- one epoch ---------------------------------------------------------------------------------


@dataclass
class EpochStats:
    """One epoch's steps: counts, the last learning rate, and the running loss and accuracy.

    Step results are kept as backend scalars and summed on the host only when read."""

    backend: Backend
    lr: float
    seen: int = 0
    seconds: float = 0.0
    stop: str | None = None  # why the epoch ended early, if it did
    _loss_sum: float = 0.0
    _correct: int = 0
    _unread: list = field(default_factory=list)

    def add(self, result: StepResult, batch: int, lr: float) -> None:
        self._unread.append((result, batch))
        self.seen, self.lr = self.seen + batch, lr

    def read(self) -> tuple[float, float] | tuple[None, None]:
        """(mean loss, accuracy) over the images seen so far, or (None, None) before any step."""
        for result, batch in self._unread:
            self._loss_sum += to_float(self.backend, result.loss) * batch
            self._correct += round(to_float(self.backend, result.correct))
        self._unread.clear()
        if not self.seen:
            return None, None
        return self._loss_sum / self.seen, self._correct / self.seen


class Progress:
    """An epoch's progress on stderr, showing the running loss and accuracy.

    On a terminal: a bar redrawn in place (tqdm), its figures refreshed every
    REFRESH_S seconds. Elsewhere (a log file, CI, a job scheduler) redraws would
    fill the log, so: one plain line each time another EVERY_PERCENT of the
    epoch is done. The running figures are read (for a device backend: copied
    to the host) only when they are shown.
    """

    EVERY_PERCENT = 5
    REFRESH_S = 0.5

    def __init__(self, desc: str, total: int, initial: int = 0, enabled: bool = True, stream=None):
        self.stream = sys.stderr if stream is None else stream
        self.desc, self.total, self.done, self.enabled = desc, total, initial, enabled
        self.started, self.last_shown = time.perf_counter(), -math.inf
        self.next_percent = (100 * initial // total // self.EVERY_PERCENT + 1) * self.EVERY_PERCENT
        self.bar = None
        if enabled and self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit="step", file=self.stream, dynamic_ncols=True)

    def _figures(self, stats: EpochStats) -> dict:
        loss, acc = stats.read()
        rate = stats.seen / max(time.perf_counter() - self.started, 1e-9)
        return {"loss": f"{loss:.3f}", "acc": f"{acc:.3f}", "lr": f"{stats.lr:.2e}", "img_s": f"{rate:.0f}"}

    def update(self, stats: EpochStats) -> None:
        """One more step done."""
        self.done += 1
        if not self.enabled:
            return
        if self.bar is not None:
            now = time.perf_counter()
            if now - self.last_shown >= self.REFRESH_S or self.done == self.total:
                self.bar.set_postfix(self._figures(stats), refresh=False)
                self.last_shown = now
            self.bar.update(1)
        elif 100 * self.done >= self.next_percent * self.total:
            percent = 100 * self.done // self.total
            self.next_percent = (percent // self.EVERY_PERCENT + 1) * self.EVERY_PERCENT
            figures = " ".join(f"{k} {v}" for k, v in self._figures(stats).items())
            print(f"{self.desc}: {percent:3d}% ({self.done}/{self.total} steps) {figures}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def stop_reason(args, position: Position, stopper: Stopper, start_time: float) -> str | None:
    """Why to stop before the next step, or None: checked before each step, so limits are exact."""
    if stopper.requested:
        return stopper.requested
    if args.max_minutes is not None and time.perf_counter() - start_time >= 60 * args.max_minutes:
        return f"--max-minutes {args.max_minutes} reached"
    if args.max_steps is not None and position.step >= args.max_steps:
        return f"--max-steps {args.max_steps} reached"
    return None


def train_epoch(run: Run, step: HostStep, ema: dict | None, position: Position, stopper: Stopper,
                start_time: float) -> tuple[EpochStats, dict | None]:  # fmt: skip
    """The steps of epoch `position.epoch` from batch `position.batch` on, until its end or a stop;
    returns the epoch's figures and the moving average (--ema) after its last step.

    Advances `position` after every step; at the epoch's end, to the next epoch. The batches
    are made --prefetch ahead in a background thread (tinyvit.prefetch): the same batches."""
    args, epoch, size = run.args, position.epoch, step.model.cfg.image_size
    train_images, _ = run.images_at(size)
    order = np.random.default_rng([args.seed, epoch]).permutation(len(run.ds.train_labels))
    stats = EpochStats(run.backend, lr=run.lr(position.step + 1))
    t_epoch = time.perf_counter()
    progress = Progress(f"epoch {epoch + 1}/{args.epochs} {size}px", run.steps_per_epoch, position.batch,
                        args.progress and run.writer)  # fmt: skip
    make = lambda b: run.batch(epoch, b, order, train_images, step.model.dtype)
    with Prefetch(make, range(position.batch, run.steps_per_epoch), args.prefetch) as batches:
        for b in range(position.batch, run.steps_per_epoch):
            stats.stop = stop_reason(args, position, stopper, start_time)
            if stats.stop:
                break
            images, labels = next(batches)
            lr = run.lr(position.step + 1)
            try:
                result = step(images, labels, lr)
            except FloatingPointError as e:
                progress.close()
                raise NonFiniteLoss(f"step {position.step + 1} (epoch {epoch + 1}, batch {b + 1}): {e}; "
                                    f"stopped without saving; {_kept(run.ckpt_path)}") from e  # fmt: skip
            position.step, position.batch = position.step + 1, b + 1
            if ema is not None:
                ema = ema_update(step.model.backend, ema, step.model.params, ema_decay(position.step, args.ema))
            stats.add(result, len(labels) * run.processes, lr)  # the results are of the global batch
            progress.update(stats)
    progress.close()
    stats.seconds = time.perf_counter() - t_epoch
    if position.batch >= run.steps_per_epoch:
        position.epoch, position.batch = epoch + 1, 0
    return stats, ema


# -- end of an epoch ---------------------------------------------------------------------------


def end_epoch(run: Run, step: HostStep, ema: dict | None, position: Position, stats: EpochStats, epoch: int,
              start_time: float) -> dict:  # fmt: skip
    """Evaluate on the test split (and the moving average, with --ema) when this epoch is one to
    evaluate (`due_for_evaluation`), append the epoch's metrics to OUT/metrics.jsonl (test figures
    null when not evaluated), write the checkpoint, print one line; returns the metrics."""
    args, ds, model = run.args, run.ds, step.model
    evaluated = due_for_evaluation(run, position, stats, epoch)
    test_loss = test_acc = None
    if evaluated:
        _, test_images = run.images_at(model.cfg.image_size)
        test_loss, test_acc, _ = evaluate_arrays(model, test_images, ds.test_labels, run.mean, run.std,
                                                 flip=args.eval_flip)  # fmt: skip
    ema_metrics = {}
    if ema is not None and evaluated:
        trained, model.params = model.params, ema  # evaluate the average with the same compiled model
        try:
            loss, acc, _ = evaluate_arrays(model, test_images, ds.test_labels, run.mean, run.std, flip=args.eval_flip)
        finally:
            model.params = trained
        ema_metrics = {"ema_test_loss": loss, "ema_test_acc": acc}
    position.elapsed_s = time.perf_counter() - start_time
    train_loss, train_acc = stats.read()
    metrics = {"epoch": epoch + 1, "step": position.step, "image_size": model.cfg.image_size, "lr": stats.lr,
               "train_loss": train_loss, "train_acc": train_acc, "test_loss": test_loss, "test_acc": test_acc,
               "images_per_s": stats.seen / max(stats.seconds, 1e-9), "elapsed_min": position.elapsed_s / 60,
               "partial_epoch": position.batch != 0, **ema_metrics}  # fmt: skip
    params, moments = step.host_params(), step.optimizer_state()  # with several processes, all gather
    host_ema = None if ema is None else {k: model.backend.to_numpy(v) for k, v in ema.items()}
    if not run.writer:
        return metrics
    with open(run.out / "metrics.jsonl", "a") as f:
        f.write(json.dumps(metrics) + "\n")
    meta = {**asdict(position), "options": _options(args), "seed": args.seed, "dtype": args.dtype,
            "class_names": ds.class_names, "mean": run.mean.tolist(), "std": run.std.tolist(), "data": args.data,
            "final_config": run.cfg.to_dict()}  # fmt: skip
    save_checkpoint(run.ckpt_path, params, model.cfg, meta, moments, host_ema)
    trained = f"train loss {train_loss:.4f} acc {train_acc:.4f}" if stats.seen else "no steps"
    averaged = f" | ema acc {ema_metrics['ema_test_acc']:.4f}" if ema_metrics else ""
    tested = f"test loss {test_loss:.4f} acc {test_acc:.4f}" if evaluated else f"not evaluated (--eval-every {args.eval_every})"
    print(f"epoch {epoch + 1}: {trained} | {tested}{averaged} | {position.elapsed_s / 60:.1f} min", file=sys.stderr)
    return metrics


def due_for_evaluation(run: Run, position: Position, stats: EpochStats, epoch: int) -> bool:
    """Whether epoch `epoch` ends with an evaluation: every --eval-every-th epoch, the last one at
    each resolution, the last one, and wherever training stops (a stop or an unfinished epoch)."""
    args, done = run.args, epoch + 1
    if stats.stop or position.batch != 0 or done % args.eval_every == 0 or done >= args.epochs:
        return True
    return run.size_for_epoch(done) != run.size_for_epoch(epoch)  # the resolution changes next


# -- the loop ----------------------------------------------------------------------------------


def train(args) -> dict:
    """Run training as the parsed args say; returns the summary (also written to OUT/summary.json)."""
    run, position, step, ema = set_up(args)
    run.out.mkdir(parents=True, exist_ok=True)
    ds, cfg = run.ds, run.cfg
    where = f"{run.threads} threads" if run.mesh is None else \
        f"{run.mesh.devices.size} devices in {run.processes} process{'es' if run.processes > 1 else ''}"  # fmt: skip
    if run.writer:
        print(f"tinyvit: {args.data} ({len(ds.train_labels)} train / {len(ds.test_labels)} test), {cfg.depth} blocks "
              f"of width {cfg.dim}, {count_params(cfg):,} parameters, backend {run.backend.name}, {where}, "
              f"{args.epochs} epochs of {run.steps_per_epoch} steps -> {run.out}", file=sys.stderr)  # fmt: skip

    start_time = time.perf_counter() - position.elapsed_s
    stop, metrics = None, {}
    with Stopper() as stopper:
        while position.epoch < args.epochs and stop is None:
            epoch = position.epoch
            step, ema = step_at_resolution(run, step, ema, run.size_for_epoch(epoch))
            stats, ema = train_epoch(run, step, ema, position, stopper, start_time)
            metrics = end_epoch(run, step, ema, position, stats, epoch, start_time)
            stop = stats.stop
    return finish(run, position, metrics, stop)


def finish(run: Run, position: Position, metrics: dict, stop: str | None) -> dict:
    """Write OUT/summary.json, print the last line, return the summary."""
    summary = {"test_acc": metrics.get("test_acc"), "test_loss": metrics.get("test_loss"),
               **{k: metrics[k] for k in ("ema_test_acc", "ema_test_loss") if k in metrics},
               "epochs_done": position.epoch, "steps": position.step, "minutes": position.elapsed_s / 60,
               "stopped": stop, "checkpoint": str(run.ckpt_path), "backend": run.backend.name,
               "params": count_params(run.cfg)}  # fmt: skip
    if not run.writer:
        return summary
    (run.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"done{' (' + stop + ')' if stop else ''}: test accuracy {summary['test_acc']:.4f} after "
          f"{summary['steps']} steps in {summary['minutes']:.1f} min; checkpoint {run.ckpt_path}", file=sys.stderr)  # fmt: skip
    return summary


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        train(args)
    except (UsageError, NonFiniteLoss) as e:  # anything else is a fault in the code: keep its traceback
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()

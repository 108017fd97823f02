"""Checkpoints: one `.npz` that NumPy reads with allow_pickle=False.

Keys:
    param/<name>        every parameter
    opt/m/<name>, opt/v/<name>, opt/step   AdamW's moments and step count
    ema/<name>          the moving average of every parameter, when the run keeps one (--ema)
    config              the ViTConfig, as JSON text
    state               JSON text: epoch, batch in epoch, step, seed, the training
                        options, the data's class names and normalisation
Nothing in it is a pickle, so loading one cannot run code. Writes go to a
temporary file in the same directory, flushed to disk, then renamed over the
old checkpoint: a crash mid-write leaves the previous checkpoint whole, and at
worst the temporary file, which the next run removes (remove_stale_temporaries).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from .config import ViTConfig
from .errors import UsageError


def savez_atomic(path, **arrays) -> Path:
    """np.savez to a temporary file beside `path`, flushed to disk, then renamed over it.

    The file gets the permissions any new file gets here (0666 less the umask), not the
    owner-only 0600 of mkstemp's temporary file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def remove_stale_temporaries(path) -> list[Path]:
    """Delete the temporary files savez_atomic leaves beside `path` when killed mid-write.

    Only names of savez_atomic's own pattern, <name>.<random>.tmp, are touched. Returns the removed paths."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    removed = []
    for tmp in path.parent.glob(path.name + ".*.tmp"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def save_checkpoint(path, params: dict, cfg: ViTConfig, state: dict, opt_state: dict | None = None,
                    ema: dict | None = None) -> Path:  # fmt: skip
    """Write params (name -> ndarray), config, JSON-able state, optimizer state and the
    parameters' moving average (name -> ndarray, or None) atomically."""
    arrays = {f"param/{k}": np.asarray(v) for k, v in params.items()}
    arrays.update({f"ema/{k}": np.asarray(v) for k, v in (ema or {}).items()})
    for k, v in (opt_state or {}).items():
        arrays[f"opt/{k}"] = np.asarray(v)
    arrays["config"] = np.array(json.dumps(cfg.to_dict()))
    arrays["state"] = np.array(json.dumps(state))
    return savez_atomic(path, **arrays)


class Checkpoint:
    """A loaded checkpoint: .cfg, .params, .opt_state, .state, .ema (empty without a moving average)."""

    def __init__(self, cfg: ViTConfig, params: dict, opt_state: dict, state: dict, ema: dict | None = None):
        self.cfg, self.params, self.opt_state, self.state = cfg, params, opt_state, state
        self.ema = ema or {}


def load_checkpoint(path) -> Checkpoint:
    """Read a checkpoint written by save_checkpoint; a clear UsageError for anything else."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"checkpoint {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception as e:
        raise UsageError(f"checkpoint {path} is not a readable .npz file: {e}") from e
    for key in ("config", "state"):
        if key not in data:
            raise UsageError(f"checkpoint {path} has no {key!r} entry: not a tinyvit checkpoint")
    try:
        cfg = ViTConfig.from_dict(json.loads(str(data["config"])))
        state = json.loads(str(data["state"]))
    except (json.JSONDecodeError, TypeError) as e:
        raise UsageError(f"checkpoint {path} has a malformed config or state: {e}") from e
    params = {k[len("param/"):]: v for k, v in data.items() if k.startswith("param/")}
    opt_state = {k[len("opt/"):]: v for k, v in data.items() if k.startswith("opt/")}
    ema = {k[len("ema/"):]: v for k, v in data.items() if k.startswith("ema/")}
    return Checkpoint(cfg, params, opt_state, state, ema)

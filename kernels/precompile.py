"""A second process that compiles the step's numba kernels while the first one starts.

With an empty cache numba compiles each kernel the first time it is called, one after
another, on one core (its compiler holds a lock): on a 2-core laptop the first training
step of a fresh install waits about 25 s for it, while the other core has nothing to do.

`start_if_cold()` (called when the numba backend loads) gives that core the work: when some
kernel listed in precompile.txt has nothing usable in the cache yet (never compiled here, or
compiled before some kernel file changed: kernels/cache.py), it launches
`python -m tinyvit.kernels.precompile`, which compiles the listed kernels from the end of the
list, the backward pass and the optimiser, towards its start. Each kernel lands in numba's
cache when it is done; the training process, compiling from the forward pass on, finds
those already there and loads them instead of compiling them again. Nothing changes but the
time: a kernel missing from the list, or one the helper has not reached, compiles in the
training process as before, and `TINYVIT_PRECOMPILE=0` switches the helper off.

precompile.txt lists the kernels a float32 training step and an evaluation call, in the
order of their first call, with the argument types of each (numba's own names):

    python -m tinyvit.kernels.precompile --record     # rewrite it after changing a kernel
"""

from __future__ import annotations

import argparse
import atexit
import importlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

LIST = Path(__file__).with_name("precompile.txt")
PACKAGE = "tinyvit.kernels"


# -- the list: one kernel and its argument types per line ------------------------------------------


def type_text(t) -> str | None:
    """numba type -> the expression in numba.types that rebuilds it; None for a type this list does not keep."""
    from numba.core import types

    if isinstance(t, types.Array):
        readonly = "" if t.mutable else ", readonly=True"
        return f"Array({type_text(t.dtype)}, {t.ndim}, {t.layout!r}{readonly})"
    if isinstance(t, types.Boolean):
        return "boolean"
    if isinstance(t, types.Number):
        return str(t)  # float32, int64, ...
    if isinstance(t, types.UniTuple):
        inner = type_text(t.dtype)
        return None if inner is None else f"UniTuple({inner}, {t.count})"
    if isinstance(t, types.NoneType):
        return "none"
    return None


def kernel(line: str):
    """'module function: ...' -> that kernel's numba dispatcher."""
    module, function = line.partition(": ")[0].split()
    return getattr(importlib.import_module(f"{PACKAGE}.{module}"), function)


def parse_line(line: str):
    """'module function: type; type; ...' -> (the dispatcher, a tuple of numba types)."""
    from numba.core import types

    args = line.partition(": ")[2]
    sig = tuple(eval(a, vars(types)) for a in args.split("; ")) if args else ()  # our own file's names of numba types
    return kernel(line), sig


def read_list() -> list[str]:
    return [line for line in LIST.read_text().splitlines() if line and not line.startswith("#")]


# -- the helper process ------------------------------------------------------------------------------


def compile_all(lines: list[str]) -> None:
    """Compile (or load from the cache) each listed kernel, the last line first."""
    for line in reversed(lines):
        try:
            dispatcher, sig = parse_line(line)
            dispatcher.compile(sig)
        except Exception as e:  # noqa: BLE001 - a stale line: the training process compiles that kernel itself
            print(f"precompile: skipped {line.split(':')[0]}: {type(e).__name__}: {e}", file=sys.stderr)


def cold(lines: list[str]) -> bool:
    """True when some listed kernel has nothing usable in numba's cache: never compiled here, or
    compiled before a kernel file changed (kernels/cache.py), which numba reads as an empty index."""
    return any(not kernel(line)._cache._cache_file._load_index() for line in lines)  # numba's cache internals


_helper: subprocess.Popen | None = None


def start_if_cold() -> None:
    """Launch the helper process if the cache lacks a listed kernel (at most once per process)."""
    global _helper
    if _helper is not None or os.environ.get("TINYVIT_PRECOMPILE", "1") == "0" or not LIST.exists():
        return
    try:
        if not cold(read_list()):
            return
    except Exception:  # noqa: BLE001 - another numba's cache layout: no helper, kernels compile as they are called
        return
    env = dict(os.environ, TINYVIT_PRECOMPILE="0")
    _helper = subprocess.Popen([sys.executable, "-m", f"{PACKAGE}.precompile"], env=env, stdout=subprocess.DEVNULL)
    atexit.register(_helper.kill)  # a short program leaves no compiler running behind it


# -- recording the list ------------------------------------------------------------------------------

RECORD = """
import tempfile
import numpy as np
from numba.core import event
from tinyvit import ViT, get_preset, train
from tinyvit.kernels.precompile import type_text
from tinyvit.optim import AdamW

seen, depth = [], [0]
class Listener(event.Listener):
    def on_start(self, ev):
        depth[0] += 1
        d = ev.data["dispatcher"]
        if depth[0] == 1 and d.py_func.__module__.startswith("tinyvit.kernels."):
            args = [type_text(t) for t in ev.data["args"]]
            if None not in args:
                seen.append(f"{d.py_func.__module__.rpartition('.')[2]} {d.py_func.__name__}: {'; '.join(args)}")
    def on_end(self, ev):
        depth[0] -= 1

rng = np.random.default_rng(0)
with event.install_listener("numba:compile", Listener()), tempfile.TemporaryDirectory() as out:
    model = ViT(get_preset("cifar-small"), backend="numba")  # the step of benchmarks/startup.py
    loss, grads = model.loss_and_grads(rng.random((8, 32, 32, 3), np.float32), rng.integers(0, 10, 8))
    AdamW(model).step(grads)
    train.main(["--data", "shapes:64", "--classifier", "gap", "--init-attention", "mimetic", "--image-size", "16",
                "--batch-size", "16", "--epochs", "1", "--max-steps", "2", "--no-progress", "--out", out])
print("\\n".join(dict.fromkeys(seen)))
"""


def recorded(cache: str) -> list[str]:
    """The kernels (and argument types) a float32 step compiles in a fresh process with the numba cache `cache`."""
    env = dict(os.environ, NUMBA_CACHE_DIR=cache, TINYVIT_PRECOMPILE="0")
    out = subprocess.run([sys.executable, "-c", RECORD], env=env, check=True, capture_output=True, text=True).stdout
    return out.strip().splitlines()


def record() -> None:
    """Rewrite precompile.txt from what a step compiles with an empty cache."""
    with tempfile.TemporaryDirectory(prefix="tinyvit-numba-cache-") as cache:
        lines = recorded(cache)
    header = "# python -m tinyvit.kernels.precompile --record: the kernels of a float32 step, in the order of their first call"
    LIST.write_text("\n".join([header, *lines]) + "\n")
    print(f"wrote {len(lines)} kernels to {LIST}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--record", action="store_true", help="rewrite the list from a fresh process's first step")
    args = p.parse_args(argv)
    if args.record:
        record()
    else:
        compile_all(read_list())


if __name__ == "__main__":
    main()

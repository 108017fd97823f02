"""Cold and warm start of the `numba` backend: a fresh process, to the end of its first training step.

    python benchmarks/startup.py

Cold: an empty NUMBA_CACHE_DIR, so every kernel the step needs is compiled, by the
process itself and by the helper process the numba backend starts on a cold cache
(kernels/precompile.py); and once more with the helper switched off
(TINYVIT_PRECOMPILE=0), everything compiled in the one process.
Warm: the same cache, now filled (`cache=True` on every kernel), so they load.
Each run is a new Python process that imports tinyvit, builds the cifar-small
model and runs one forward + backward + AdamW step on a batch of 8; the time is
wall-clock from just before the process starts to the end of that step (the system's
monotonic clock, read by this process and by the child). What the child's exit takes
after it (Python freeing numba's objects, about half a second) is printed apart.
Targets: cold under 20 s, warm under 1 s.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

STEP = """
import numpy as np
from tinyvit import ViT, get_preset
from tinyvit.optim import AdamW
model = ViT(get_preset("cifar-small"), backend="numba")
rng = np.random.default_rng(0)
loss, grads = model.loss_and_grads(rng.random((8, 32, 32, 3), np.float32), rng.integers(0, 10, 8))
AdamW(model).step(grads)
import time
print(time.clock_gettime(time.CLOCK_MONOTONIC))
"""


def timed_run(cache_dir: str, **extra) -> tuple[float, float]:
    """(seconds from the start to the end of the first step, seconds from there to the exit)"""
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir, **extra)
    start = time.clock_gettime(time.CLOCK_MONOTONIC)
    run = subprocess.run([sys.executable, "-c", STEP], env=env, check=True, capture_output=True, text=True)
    end = time.clock_gettime(time.CLOCK_MONOTONIC)
    step_done = float(run.stdout.split()[-1])
    return step_done - start, end - step_done


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--warm-runs", type=int, default=3, help="warm starts to time (the fastest is reported)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tinyvit-numba-cache-") as cache:
        alone, _ = timed_run(cache, TINYVIT_PRECOMPILE="0")
    with tempfile.TemporaryDirectory(prefix="tinyvit-numba-cache-") as cache:
        cold, _ = timed_run(cache)
        warm, exit_after = min(timed_run(cache) for _ in range(args.warm_runs))
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    print(f"cold start (empty numba cache): {cold:.1f} s   (target < 20 s)")
    print(f"  without the helper process:   {alone:.1f} s   (TINYVIT_PRECOMPILE=0)")
    print(f"warm start (cache filled):      {warm:.2f} s   (target < 1 s)")
    print(f"  and the exit after its step:  {exit_after:.2f} s")
    print(f"load average after: {load}")


if __name__ == "__main__":
    main()

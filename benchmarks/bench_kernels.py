"""Time every variant of one numba op side by side, on one shape (by default, a step of cifar-small).

    python benchmarks/bench_kernels.py attention
    python benchmarks/bench_kernels.py linear_gelu --shape 8320,192,768 --repeats 20
    python benchmarks/bench_kernels.py layernorm --preset vit-b16 --batch 8

Each kernel file lists its variants, plain to fast, in a VARIANTS table (the
last one is what the `numba` backend runs). Forward and forward + backward are
timed for each, the variants alternating within one process so they share the
machine's state; the report is the median of the repeats, with the load
average beside it. Variants slower than --slow-limit seconds for one call (the
plain loops, on big shapes) are timed with fewer repeats.

--shape, per op (defaults from --preset and --batch):
    linear          R,IN,OUT      rows x (R, IN) through a (IN, OUT) weight (default: the qkv layer)
    linear_gelu     R,IN,M        fc1 + GELU
    layernorm       R,D
    attention       B,N,D,H       qkv (B, N, 3D), H heads
    embed           B,N,D         patch tokens (B, N-1, D) -> (B, N, D)
    add             R,D           the residual add
    cross_entropy   B,K
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from tinyvit.kernels import (
    numba_attention,
    numba_embed,
    numba_gelu,
    numba_layernorm,
    numba_linear,
    numba_loss,
)

from tinyvit.config import get_preset
from tinyvit.threads import set_threads


def default_shape(op: str, cfg, batch: int) -> tuple[int, ...]:
    R, N, D = batch * cfg.num_tokens, cfg.num_tokens, cfg.dim
    return {
        "linear": (R, D, 3 * D),
        "linear_gelu": (R, D, cfg.mlp_dim),
        "layernorm": (R, D),
        "attention": (batch, N, D, cfg.heads),
        "embed": (batch, N, D),
        "add": (R, D),
        "cross_entropy": (batch, cfg.num_classes),
    }[op]


def cases(op: str, shape: tuple[int, ...], dtype, rng):
    """(variants: name -> (forward, backward or None), forward's arguments, dout's shape, FLOPs of forward)."""

    def draw(*s):
        return rng.standard_normal(s).astype(dtype)

    if op in ("linear", "linear_gelu"):
        R, fin, fout = shape
        module = numba_linear if op == "linear" else numba_gelu
        return module.VARIANTS, (draw(R, fin), draw(fin, fout), draw(fout)), (R, fout), 2.0 * R * fin * fout
    if op == "layernorm":
        R, D = shape
        return numba_layernorm.VARIANTS, (draw(R, D), draw(D), draw(D)), (R, D), 0.0
    if op == "attention":
        B, N, D, H = shape
        return numba_attention.VARIANTS, (draw(B, N, 3 * D), H), (B, N, D), 4.0 * B * N * N * D
    if op == "embed":
        B, N, D = shape
        return numba_embed.VARIANTS, (draw(B, N - 1, D), draw(D), draw(N, D)), (B, N, D), 0.0
    if op == "add":
        R, D = shape
        variants = {name: (fn, None) for name, fn in numba_embed.ADD_VARIANTS.items()}
        return variants, (draw(R, D), draw(R, D)), None, 0.0
    if op == "cross_entropy":
        B, K = shape
        return numba_loss.VARIANTS, (draw(B, K), rng.integers(0, K, B), 0.1), None, 0.0
    raise ValueError(f"unknown op {op!r}")


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def main(argv=None):
    ops = ("linear", "linear_gelu", "layernorm", "attention", "embed", "add", "cross_entropy")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 3)[3],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("op", choices=ops)
    ap.add_argument("--shape", default=None, help="comma-separated sizes, per op as below (default: a training step)")
    ap.add_argument("--preset", default="cifar-small", help="model whose step gives the default shape")
    ap.add_argument("--batch", type=int, default=128, help="batch of that step")
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=11, help="timed calls per variant, alternating (median reported)")
    ap.add_argument("--slow-limit", type=float, default=1.0, help="seconds per call above which a variant gets 3 repeats")
    args = ap.parse_args(argv)

    set_threads(args.threads)
    cfg = get_preset(args.preset)
    shape = tuple(int(s) for s in args.shape.split(",")) if args.shape else default_shape(args.op, cfg, args.batch)
    rng = np.random.default_rng(0)
    dtype = np.dtype(args.dtype)
    try:
        variants, fargs, dout_shape, flops = cases(args.op, shape, dtype, rng)
    except ValueError as e:
        ap.error(f"--shape {args.shape} for {args.op}: {e}")
    dout = rng.standard_normal(dout_shape).astype(dtype) if dout_shape else None
    if args.op == "cross_entropy":
        dout = 1.0

    def forward(fn):
        return lambda: fn(*fargs)

    def both(fwd, bwd):
        def run():
            _, cache = fwd(*fargs)
            return bwd(dout, cache)

        return run

    timers = {}
    for name, (fwd, bwd) in variants.items():
        timers[name, "forward"] = forward(fwd)
        if bwd is not None and dout is not None:
            timers[name, "forward + backward"] = both(fwd, bwd)
    slow = set()
    for key, fn in timers.items():  # compile (or load) and a first, untimed call
        fn()
        t = time.perf_counter()
        fn()
        if time.perf_counter() - t > args.slow_limit:
            slow.add(key)
    times = {key: [] for key in timers}
    for rep in range(args.repeats):
        for key, fn in timers.items():
            if key in slow and rep >= 3:
                continue
            t = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t)

    print(f"{args.op}, shape {','.join(map(str, shape))}, {dtype}, {args.threads} threads, "
          f"median of {args.repeats} alternating calls; load average {loadavg()}")  # fmt: skip
    print(f"  {'variant':16s} {'pass':20s} {'ms':>10s} {'x default':>10s}" + ("   GFLOP/s" if flops else ""))
    default = list(variants)[-1]
    for (name, kind), ts in times.items():
        ms = 1e3 * float(np.median(ts))
        ref = 1e3 * float(np.median(times[default, kind]))
        rate = f"   {flops * (3 if 'backward' in kind else 1) / (ms / 1e3) / 1e9:7.1f}" if flops else ""
        print(f"  {name:16s} {kind:20s} {ms:10.2f} {ms / ref:9.2f}x{rate}")
    print(f"load average at the end: {loadavg()}")


if __name__ == "__main__":
    main()

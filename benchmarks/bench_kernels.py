"""Time every variant of one numba op side by side, on one shape (by default, a step of cifar-narrow).

    python benchmarks/bench_kernels.py attention
    python benchmarks/bench_kernels.py linear_gelu --shape 8320,192,768 --repeats 20
    python benchmarks/bench_kernels.py layernorm --preset vit-b16 --batch 8
    python benchmarks/bench_kernels.py adamw --shape 128

Each kernel file lists its variants, plain to fast, in a VARIANTS table (the
last one is what the `numba` backend runs; a file with several ops has one
table per op). Forward and forward + backward are timed for each, the
variants alternating within one process so they share the machine's state;
the report is the median of the repeats, with the load average beside it.
The default shape is a training step of the 30-minute recipe's model
(cifar-narrow: 32 px, patch 4, D 128, MLP 256) at batch 128.
Variants slower than --slow-limit seconds for one call (the plain loops, on
big shapes) are timed with fewer repeats. The optimiser's ops have no
backward: one call is one update of one parameter (adamw), or the squared
norm (sum_of_squares) or the scaling (scale) of one gradient.

--shape, per op (defaults from --preset and --batch):
    linear            R,IN,OUT      rows x (R, IN) through a (IN, OUT) weight (default: the qkv layer)
    linear_gelu       R,IN,M        fc1 + GELU
    layernorm         R,D
    add_layernorm     R,D           the residual add fused with the LayerNorm after it (first in
                                    the table: the separate add and LayerNorm it replaces)
    attention         B,N,D,H       qkv (B, N, 3D), H heads
    embed             B,N,D         patch tokens (B, N-1, D) -> (B, N, D)
    add               R,D           the residual add
    cross_entropy     B,K
    patchify          B,H,W,C,P     images (B, H, W, C) into P x P patches
    adamw             one parameter's shape, any number of sizes (default D,4D; a bias: D)
    sum_of_squares    as adamw
    scale             as adamw
    linear_gelu_tanh  R,IN,M        fc1 + the tanh form of GELU
    pos_embed         B,N,D         the position embedding without a class token (N patches)
    token_mean        B,N,D         the mean over N tokens
    tanh              R,F           pre_logits' activation (default: the pooled (B, D))
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from tinyvit.kernels import (
    numba_adamw,
    numba_attention,
    numba_embed,
    numba_gelu,
    numba_head,
    numba_layernorm,
    numba_linear,
    numba_loss,
    numba_patchify,
)

from tinyvit.config import get_preset
from tinyvit.optim import AdamWStep
from tinyvit.threads import set_threads

OPS = ("linear", "linear_gelu", "layernorm", "add_layernorm", "attention", "embed", "add", "cross_entropy", "patchify",
       "adamw", "sum_of_squares", "scale", "linear_gelu_tanh", "pos_embed", "token_mean", "tanh")  # fmt: skip
OPTIMIZER_TABLES = {
    "adamw": numba_adamw.ADAMW_VARIANTS,
    "sum_of_squares": numba_adamw.SQUARES_VARIANTS,
    "scale": numba_adamw.SCALE_VARIANTS,
}


def default_shape(op: str, cfg, batch: int) -> tuple[int, ...]:
    R, N, D = batch * cfg.num_tokens, cfg.num_tokens, cfg.dim
    if op in OPTIMIZER_TABLES:
        return (D, 4 * D)
    return {
        "linear": (R, D, 3 * D),
        "linear_gelu": (R, D, cfg.mlp_dim),
        "layernorm": (R, D),
        "add_layernorm": (R, D),
        "attention": (batch, N, D, cfg.heads),
        "embed": (batch, N, D),
        "add": (R, D),
        "cross_entropy": (batch, cfg.num_classes),
        "patchify": (batch, cfg.image_size, cfg.image_size, cfg.channels, cfg.patch_size),
        "linear_gelu_tanh": (R, D, cfg.mlp_dim),
        "pos_embed": (batch, cfg.num_patches, D),
        "token_mean": (batch, cfg.num_patches, D),
        "tanh": (batch, D),
    }[op]


def cases(op: str, shape: tuple[int, ...], dtype, rng):
    """(variants: name -> (forward, backward or None), forward's arguments, backward's dout or None,
    FLOPs of forward)."""

    def draw(*s):
        return rng.standard_normal(s).astype(dtype)

    if op in ("linear", "linear_gelu", "linear_gelu_tanh"):
        R, fin, fout = shape
        table = {"linear": numba_linear.VARIANTS, "linear_gelu": numba_gelu.VARIANTS,
                 "linear_gelu_tanh": numba_head.GELU_TANH_VARIANTS}[op]  # fmt: skip
        return table, (draw(R, fin), draw(fin, fout), draw(fout)), draw(R, fout), 2.0 * R * fin * fout
    if op == "layernorm":
        R, D = shape
        return numba_layernorm.VARIANTS, (draw(R, D), draw(D), draw(D)), draw(R, D), 0.0
    if op == "add_layernorm":  # two outputs, s and y: a gradient for each
        R, D = shape
        variants = {"add + layernorm": _separate_add_layernorm(), **numba_layernorm.ADD_VARIANTS}
        return variants, (draw(R, D), draw(R, D), draw(D), draw(D)), (draw(R, D), draw(R, D)), 0.0
    if op == "attention":
        B, N, D, H = shape
        return numba_attention.VARIANTS, (draw(B, N, 3 * D), H), draw(B, N, D), 4.0 * B * N * N * D
    if op == "embed":
        B, N, D = shape
        return numba_embed.VARIANTS, (draw(B, N - 1, D), draw(D), draw(N, D)), draw(B, N, D), 0.0
    if op == "add":
        R, D = shape
        variants = {name: (fn, None) for name, fn in numba_embed.ADD_VARIANTS.items()}
        return variants, (draw(R, D), draw(R, D)), None, 0.0
    if op == "cross_entropy":
        B, K = shape
        return numba_loss.VARIANTS, (draw(B, K), rng.integers(0, K, B), 0.1), 1.0, 0.0  # dloss = 1
    if op == "patchify":
        B, H, W, C, P = shape
        if H % P or W % P:
            raise ValueError(f"the patch side {P} must divide the image sides {H}x{W}")
        return numba_patchify.VARIANTS, (draw(B, H, W, C), P), draw(B, (H // P) * (W // P), P * P * C), 0.0
    if op in OPTIMIZER_TABLES:  # no backward: one call is the whole op, on one array of `shape`
        variants = {name: (fn, None) for name, fn in OPTIMIZER_TABLES[op].items()}
        if op == "adamw":
            hp = AdamWStep(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.05, step=10)
            args = (draw(*shape), draw(*shape), 0.1 * draw(*shape), 0.01 * np.abs(draw(*shape)), hp)
        elif op == "sum_of_squares":
            args = ([draw(*shape)],)
        else:
            args = ([draw(*shape)], 0.5)
        return variants, args, None, 0.0
    if op == "pos_embed":
        B, N, D = shape
        return numba_head.POS_EMBED_VARIANTS, (draw(B, N, D), draw(N, D)), draw(B, N, D), 0.0
    if op == "token_mean":
        B, N, D = shape
        return numba_head.TOKEN_MEAN_VARIANTS, (draw(B, N, D),), draw(B, D), 0.0
    if op == "tanh":
        R, F = shape
        return numba_head.TANH_VARIANTS, (draw(R, F),), draw(R, F), 0.0
    raise ValueError(f"unknown op {op!r}")


def _separate_add_layernorm():
    """The residual add and the LayerNorm as two kernels (what add_layernorm fuses), as (forward, backward)."""

    def forward(x, h, weight, bias):
        s = numba_embed.add(x, h)
        y, cache = numba_layernorm.layernorm_forward(s, weight, bias)
        return (s, y), cache

    def backward(dout, cache):
        ds, dy = dout
        dx, dweight, dbias = numba_layernorm.layernorm_backward(dy, cache)
        return numba_embed.add(ds, dx), dweight, dbias

    return forward, backward


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 3)[3],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("op", choices=OPS)
    ap.add_argument("--shape", default=None, help="comma-separated sizes, per op as below (default: a training step)")
    ap.add_argument("--preset", default="cifar-narrow", help="model whose step gives the default shape")
    ap.add_argument("--batch", type=int, default=128, help="batch of that step")
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=11, help="timed calls per variant, alternating (median reported)")
    ap.add_argument("--slow-limit", type=float, default=1.0, help="seconds per call above which a variant gets 3 repeats")
    args = ap.parse_args(argv)

    cfg = get_preset(args.preset)
    shape = tuple(int(s) for s in args.shape.split(",")) if args.shape else default_shape(args.op, cfg, args.batch)
    rng = np.random.default_rng(0)
    dtype = np.dtype(args.dtype)
    try:
        variants, fargs, dout, flops = cases(args.op, shape, dtype, rng)
    except ValueError as e:
        ap.error(f"--shape {args.shape} for {args.op}: {e}")
    set_threads(args.threads)

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

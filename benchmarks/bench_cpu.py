"""CPU benchmark: the `numba` backend against PyTorch eager on the targets of the CPU speed work.

    python benchmarks/bench_cpu.py                  # every target, 3 alternating rounds, 2 threads
    python benchmarks/bench_cpu.py --quick          # 1 round, fewer repeats, a smaller peak sgemm
    python benchmarks/bench_cpu.py --only cifar-small-train,vit-b16-infer --rounds 5
    python benchmarks/bench_cpu.py --profile        # also the per-op profile of a step (numba and numpy)

Targets (each one a fresh process per framework that imports NumPy first, as users' programs do,
the frameworks alternating round by round; the figure is the median over rounds of each process's
median step time):
    cifar-small-train     cifar-small, training step (forward, backward, clipping, AdamW), batch 128
    cifar-small-infer     cifar-small, forward only, batch 256 (PyTorch with scaled_dot_product_attention)
    vit-b16-infer         the paper's ViT-B/16 at 224 px, 1000 classes, forward only, batch 8
    cifar-narrow-16/24/32 the recipe model at 16, 24 and 32 px, training step, batch 128
Also printed: the machine's float32 sgemm peak, each training step's matrix-product GFLOP/s as a
share of it, and the peak resident memory of a cifar-small training step per framework.
PyTorch is optional (install torch==2.13.0 into .venv for the comparison); tinyvit never imports it.
With jax installed, the `jax` backend's compiled step (one CPU device) and forward are timed too.
Numbers depend on what else runs: read them with the load average printed beside them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from collections import defaultdict

import numpy as np  # first, as users' programs do: tinyvit's thread set-up must hold anyway

from tinyvit import threads as threads_module
from tinyvit.backend import Backend, get_backend
from tinyvit.config import get_preset
from tinyvit.model import ViT
from tinyvit.optim import AdamW
from tinyvit.threads import set_threads


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return "unknown"


def best_time(fn, repeats: int) -> float:
    """The fastest of `repeats` runs after one warm-up run (seconds)."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def median_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def paired_ratios(a: list, b: list) -> list:
    """a[r] / b[r] for every round r that measured both (a failed measurement is None)."""
    return [x / y for x, y in zip(a, b) if x is not None and y is not None]


def sgemm_peak(n: int) -> float:
    """GFLOP/s of an (n, n) @ (n, n) float32 product: the machine's matmul ceiling."""
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    b = a.copy()
    return 2 * n**3 / best_time(lambda: a @ b, 3) / 1e9


def step_flops(cfg, batch: int) -> float:
    """Matrix-product FLOPs of one training step: forward, and twice that for backward."""
    return 3.0 * cfg.forward_flops(batch)


def batch_data(cfg, batch: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((batch, cfg.image_size, cfg.image_size, cfg.channels)).astype(np.float32)
    return images, rng.integers(0, cfg.num_classes, batch)


# -- tinyvit ----------------------------------------------------------------------------------


def timed_backend(name: str, totals: dict, sync=lambda: None) -> Backend:
    """The backend `name` with every op wrapped to add its wall time to totals[op].

    A GPU's ops only queue work: pass its `sync` (cuda.synchronize) to wait for the
    device before and after each op, so that each op is charged its own kernels."""
    backend = get_backend(name)

    def wrap(op, fn):
        def timed(*args, **kwargs):
            sync()
            t = time.perf_counter()
            out = fn(*args, **kwargs)
            sync()
            totals[op] += time.perf_counter() - t
            return out

        return timed

    ops = {f.name: wrap(f.name, getattr(backend, f.name)) for f in dataclasses.fields(backend) if f.name != "name"}
    return dataclasses.replace(backend, **ops)


def train_step_fn(model, images, labels):
    opt = AdamW(model, lr=1e-4)

    def step():
        _, grads = model.loss_and_grads(images, labels)
        opt.step(grads)

    return step


def op_profile(name: str, cfg, batch: int, steps: int, sync=lambda: None) -> dict:
    """Seconds per training step spent in each backend op (mean over `steps` after a warm-up)."""
    totals: dict = defaultdict(float)
    model = ViT(cfg, backend=timed_backend(name, totals, sync))
    step = train_step_fn(model, *batch_data(cfg, batch))
    step()
    sync()
    totals.clear()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    totals["(whole step)"] = time.perf_counter() - t
    return {k: v / steps for k, v in totals.items()}


def tinyvit_train(name: str, cfg, batch: int, repeats: int) -> float:
    """Images/s of a training step on backend `name` (`jax`: the compiled step on one CPU device)."""
    model = ViT(cfg, backend=name)
    images, labels = batch_data(cfg, batch)
    if name == "jax":
        from tinyvit.distributed import JaxStep, data_mesh
        from tinyvit.optim import AdamWHyper

        step = JaxStep(model, data_mesh(1), AdamWHyper(), clip_norm=1.0, label_smoothing=0.0)
        return batch / median_time(lambda: float(step(images, labels, 1e-4).loss), repeats)
    return batch / median_time(train_step_fn(model, images, labels), repeats)


def tinyvit_infer(name: str, cfg, batch: int, repeats: int) -> float:
    model = ViT(cfg, backend=name)
    images, _ = batch_data(cfg, batch)
    return batch / median_time(lambda: model.forward(images), repeats)


# -- PyTorch ----------------------------------------------------------------------------------


def torch_model(cfg):
    """The same ViT in PyTorch: pre-LN blocks, nn.Linear, scaled_dot_product_attention, exact GELU."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            D = cfg.dim
            self.norm1, self.norm2 = nn.LayerNorm(D, eps=1e-6), nn.LayerNorm(D, eps=1e-6)
            self.qkv, self.proj = nn.Linear(D, 3 * D), nn.Linear(D, D)
            self.fc1, self.fc2 = nn.Linear(D, cfg.mlp_dim), nn.Linear(cfg.mlp_dim, D)

        def forward(self, x):
            B, N, D = x.shape
            H = cfg.heads
            qkv = self.qkv(self.norm1(x)).reshape(B, N, 3, H, D // H).permute(2, 0, 3, 1, 4)
            a = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (B, H, N, Dh)
            x = x + self.proj(a.transpose(1, 2).reshape(B, N, D))
            return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))

    class TorchViT(nn.Module):
        def __init__(self):
            super().__init__()
            D = cfg.dim
            self.patch_embed = nn.Linear(cfg.patch_dim, D)
            self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
            self.pos_embed = nn.Parameter(0.02 * torch.randn(1, cfg.num_tokens, D))
            self.blocks = nn.ModuleList(Block() for _ in range(cfg.depth))
            self.norm, self.head = nn.LayerNorm(D, eps=1e-6), nn.Linear(D, cfg.num_classes)

        def forward(self, images):  # (B, H, W, C)
            B, P, g = images.shape[0], cfg.patch_size, cfg.grid_size
            x = images.reshape(B, g, P, g, P, cfg.channels).permute(0, 1, 3, 2, 4, 5).reshape(B, g * g, -1)
            x = self.patch_embed(x)
            x = torch.cat([self.cls_token.expand(B, -1, -1), x], dim=1) + self.pos_embed
            for blk in self.blocks:
                x = blk(x)
            return self.head(self.norm(x[:, 0]))

    return TorchViT()


def torch_train(cfg, batch: int, repeats: int) -> float:
    import torch

    model = torch_model(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    images, labels = (torch.from_numpy(a) for a in batch_data(cfg, batch))

    def step():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    return batch / median_time(step, repeats)


def torch_infer(cfg, batch: int, repeats: int) -> float:
    import torch

    model = torch_model(cfg).eval()
    images = torch.from_numpy(batch_data(cfg, batch)[0])
    with torch.no_grad():
        return batch / median_time(lambda: model(images), repeats)


def have_jax() -> bool:
    try:
        import jax  # noqa: F401
    except ImportError:
        return False
    return True


def have_torch() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


# -- peak memory, one framework per process -----------------------------------------------------


def vm_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def memory_child(framework: str, preset: str, batch: int, threads: int) -> None:
    """Run in a subprocess: print JSON with resident memory before a training step and at its peak (MiB)."""
    cfg = get_preset(preset)
    set_threads(threads)
    if framework == "torch":
        import torch

        torch.set_num_threads(threads)
        model = torch_model(cfg)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        images, labels = (torch.from_numpy(a) for a in batch_data(cfg, batch))

        def step():
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(images), labels).backward()
            opt.step()
    else:
        model = ViT(cfg, backend=framework)
        step = train_step_fn(model, *batch_data(cfg, batch))
        # compile (or load) every kernel on a tiny batch first, so the peak is the step's, not the compiler's
        train_step_fn(ViT(cfg, backend=framework), *batch_data(cfg, 2))()
    before = vm_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:  # reset VmHWM to the current RSS
        f.write("5")
    step()
    step()
    print(json.dumps({"before_mib": before / 1024, "peak_mib": vm_kib("VmHWM") / 1024}))


def peak_memory(framework: str, args) -> dict | None:
    cmd = [sys.executable, __file__, "--_memory", framework, "--preset", args.preset,
           "--batch", str(args.batch), "--threads", str(args.threads)]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        print(f"  memory run for {framework} failed: {out.stderr.strip()[-300:]}")
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- one measurement per process ------------------------------------------------------------------

TARGETS = {  # name -> (preset, image size or None for the preset's, task, batch)
    "cifar-small-train": ("cifar-small", None, "train", 128),
    "cifar-small-infer": ("cifar-small", None, "infer", 256),
    "vit-b16-infer": ("vit-b16", None, "infer", 8),
    "cifar-narrow-16": ("cifar-narrow", 16, "train", 128),
    "cifar-narrow-24": ("cifar-narrow", 24, "train", 128),
    "cifar-narrow-32": ("cifar-narrow", 32, "train", 128),
}


def target_cfg(name: str):
    preset, size, _, _ = TARGETS[name]
    cfg = get_preset(preset)
    return cfg if size is None else cfg.replace(image_size=size)


def measure_child(framework: str, target: str, repeats: int, threads: int) -> None:
    """Run in a fresh process: print JSON with the median images/s of `target` on `framework`."""
    _, _, task, batch = TARGETS[target]
    cfg = target_cfg(target)
    set_threads(threads)
    if framework == "torch":
        for name in threads_module.SET_HERE:  # PyTorch as users run it: not with tinyvit's thread defaults
            os.environ.pop(name, None)  # (GOMP_SPINCOUNT would reach PyTorch's own libgomp, read at import)
        import torch

        torch.set_num_threads(threads)
        rate = (torch_train if task == "train" else torch_infer)(cfg, batch, repeats)
    else:
        rate = (tinyvit_train if task == "train" else tinyvit_infer)(framework, cfg, batch, repeats)
    print(json.dumps({"images_per_s": rate}))


def measure(framework: str, target: str, repeats: int, threads: int) -> float | None:
    cmd = [sys.executable, __file__, "--_child", framework, target, "--repeats", str(repeats),
           "--threads", str(threads)]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in threads_module.SET_HERE}  # the user's environment
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if out.returncode != 0:
        print(f"  {framework} {target} failed: {out.stderr.strip()[-500:]}")
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])["images_per_s"]


# -- the report -------------------------------------------------------------------------------


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join(TARGETS), help=f"comma-separated targets among {', '.join(TARGETS)}")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=None, help="alternating rounds of processes (default 3, 1 quick)")
    ap.add_argument("--repeats", type=int, default=None, help="timed steps per process (default 7, 3 quick)")
    ap.add_argument("--quick", action="store_true", help="1 round, 3 repeats and a smaller peak sgemm")
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    ap.add_argument("--no-jax", action="store_true", help="skip the jax backend (timed when jax is installed)")
    ap.add_argument("--profile", action="store_true", help="also the per-op profile of a cifar-small step (numba, numpy)")
    ap.add_argument("--_child", nargs=2, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_memory", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--preset", default="cifar-small", help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, default=128, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 7)
    if args._child:
        return measure_child(*args._child, repeats, args.threads)
    if args._memory:
        return memory_child(args._memory, args.preset, args.batch, args.threads)
    targets = [t for t in args.only.split(",") if t]
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        ap.error(f"unknown targets {unknown}; expected some of {list(TARGETS)}")
    rounds = args.rounds or (1 if args.quick else 3)
    frameworks = ["numba", "torch"] if have_torch() and not args.no_torch else ["numba"]
    frameworks += ["jax"] if have_jax() and not args.no_jax else []

    set_threads(args.threads)
    print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs; threads {args.threads}; load average {loadavg()}")
    print(f"numpy {np.__version__}; frameworks {frameworks}; {rounds} rounds x {repeats} timed steps per process")
    if "torch" not in frameworks:
        print("PyTorch: not installed (or --no-torch); comparisons with it are skipped")
    peak = sgemm_peak(2048 if args.quick else 4096)
    print(f"float32 matmul peak (sgemm, NumPy's BLAS): {peak:.0f} GFLOP/s")

    if args.profile:
        cfg = get_preset("cifar-small")
        print("\nper op, seconds per cifar-small training step, batch 128 (all calls of the op in one step)")
        prof_nb = op_profile("numba", cfg, 128, repeats)
        prof_np = op_profile("numpy", cfg, 128, 1)
        print(f"  {'op':24s} {'numpy':>9s} {'numba':>9s} {'speed-up':>9s}")
        for op in sorted(prof_nb, key=lambda k: -prof_nb[k]):
            a, b = prof_np.get(op, float("nan")), prof_nb[op]
            print(f"  {op:24s} {a:9.4f} {b:9.4f} {a / b if b else float('nan'):8.1f}x")

    rates: dict = defaultdict(list)
    for r in range(rounds):
        for target in targets:
            for fw in frameworks if r % 2 == 0 else frameworks[::-1]:
                rate = measure(fw, target, repeats, args.threads)
                rates[fw, target].append(rate)  # None where it failed: the lists stay aligned by round

    print(f"\nimages/s, median over rounds (min-max); load average now {loadavg()}")
    print("numba/torch is the ratio of the medians; 'per round' the median (min-max) of each round's own ratio,")
    print("the two processes of a round measured one after the other, so the machine's slower drift cancels")
    print(f"  {'target':20s} {'numba':>20s} {'torch':>20s} {'numba/torch':>11s} {'per round':>18s} "
          f"{'step % of peak':>15s} {'jax':>20s}")  # fmt: skip
    for target in targets:
        cells, med = [], {}
        for fw in ("numba", "torch", "jax"):
            got = [rate for rate in rates.get((fw, target), []) if rate is not None]
            med[fw] = float(np.median(got)) if got else float("nan")
            cells.append(f"{med[fw]:8.1f} ({min(got):.0f}-{max(got):.0f})" if got else "-")
        share = ""
        if TARGETS[target][2] == "train":
            gflops = step_flops(target_cfg(target), TARGETS[target][3]) / TARGETS[target][3] * med["numba"] / 1e9
            share = f"{100 * gflops / peak:5.0f}% ({gflops:.0f} GF/s)"
        per_round = paired_ratios(rates.get(("numba", target), []), rates.get(("torch", target), []))
        paired = f"{np.median(per_round):.2f}x ({min(per_round):.2f}-{max(per_round):.2f})" if per_round else "-"
        print(f"  {target:20s} {cells[0]:>20s} {cells[1]:>20s} {med['numba'] / med['torch']:10.2f}x {paired:>18s} "
              f"{share:>15s} {cells[2]:>20s}")  # fmt: skip

    print("\npeak resident memory of a cifar-small training step, batch 128 (each in its own process)")
    args.preset, args.batch = "cifar-small", 128
    for fw in (f for f in frameworks if f != "jax"):  # jax's step is timed, its memory not measured
        m = peak_memory(fw, args)
        if m:
            print(f"  {fw:7s} peak {m['peak_mib']:7.0f} MiB, before the step {m['before_mib']:6.0f} MiB, "
                  f"step adds {m['peak_mib'] - m['before_mib']:6.0f} MiB")  # fmt: skip
    print(f"\nload average at the end: {loadavg()}")


if __name__ == "__main__":
    main()

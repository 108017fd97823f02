"""CPU benchmark: the `numba` backend against the `numpy` backend and PyTorch eager, in one run.

    .venv/bin/python benchmarks/bench_cpu.py                  # cifar-small, batch 128, 2 threads
    .venv/bin/python benchmarks/bench_cpu.py --quick          # fewer repeats, smaller peak sgemm
    .venv/bin/python benchmarks/bench_cpu.py --threads 2 --batch 128 --infer-batch 256

Prints
- the machine's float32 matmul peak (a large sgemm) and the load average;
- per op, the time it takes inside one training step on the numpy and the numba backend
  (every Backend op wrapped with a timer: this is also the profile of a step);
- training images/s (forward + backward + clipping + AdamW) for numba, numpy and PyTorch eager,
  with the ratios; inference images/s;
- achieved GFLOP/s of the training step (matrix-product FLOPs: 3x the forward's) against the peak;
- peak resident memory of a training step, each framework in its own subprocess.
PyTorch is optional (install torch==2.13.0 into .venv for the comparison); tinyvit never imports it.
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

# isort: off
import tinyvit  # noqa: F401  (first: it keeps OpenBLAS's idle threads from spinning, before NumPy loads it)
import numpy as np
# isort: on

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


def sgemm_peak(n: int) -> float:
    """GFLOP/s of an (n, n) @ (n, n) float32 product: the machine's matmul ceiling."""
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    b = a.copy()
    return 2 * n**3 / best_time(lambda: a @ b, 3) / 1e9


def step_flops(cfg, batch: int) -> float:
    """Matrix-product FLOPs of one training step: forward, and twice that for backward."""
    R, D, M, N = batch * cfg.num_tokens, cfg.dim, cfg.mlp_dim, cfg.num_tokens
    per_block = 2 * R * D * (3 * D) + 2 * R * D * D + 2 * 2 * R * D * M  # qkv, proj, fc1, fc2
    per_block += 2 * 2 * batch * N * N * D  # q k^T and probs v over all heads
    forward = cfg.depth * per_block + 2 * batch * cfg.num_patches * cfg.patch_dim * D + 2 * batch * D * cfg.num_classes
    return 3.0 * forward


def batch_data(cfg, batch: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((batch, cfg.image_size, cfg.image_size, cfg.channels)).astype(np.float32)
    return images, rng.integers(0, cfg.num_classes, batch)


# -- tinyvit ----------------------------------------------------------------------------------


def timed_backend(name: str, totals: dict) -> Backend:
    """The backend `name` with every op wrapped to add its wall time to totals[op]."""
    backend = get_backend(name)

    def wrap(op, fn):
        def timed(*args, **kwargs):
            t = time.perf_counter()
            out = fn(*args, **kwargs)
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


def op_profile(name: str, cfg, batch: int, steps: int) -> dict:
    """Seconds per training step spent in each backend op (mean over `steps` after a warm-up)."""
    totals: dict = defaultdict(float)
    model = ViT(cfg, backend=timed_backend(name, totals))
    step = train_step_fn(model, *batch_data(cfg, batch))
    step()
    totals.clear()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    totals["(whole step)"] = time.perf_counter() - t
    return {k: v / steps for k, v in totals.items()}


def tinyvit_train(name: str, cfg, batch: int, repeats: int) -> float:
    """Images/s of a training step on backend `name`."""
    model = ViT(cfg, backend=name)
    return batch / median_time(train_step_fn(model, *batch_data(cfg, batch)), repeats)


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


# -- the report -------------------------------------------------------------------------------


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="cifar-small")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--infer-batch", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=None, help="timed training steps per framework (default 7, 3 quick)")
    ap.add_argument("--quick", action="store_true", help="fewer repeats and a smaller peak sgemm")
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    ap.add_argument("--no-numpy", action="store_true", help="skip the (slow) numpy backend runs")
    ap.add_argument("--_memory", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._memory:
        return memory_child(args._memory, args.preset, args.batch, args.threads)

    cfg = get_preset(args.preset)
    repeats = args.repeats or (3 if args.quick else 7)
    set_threads(args.threads)
    torch_ok = have_torch() and not args.no_torch
    if torch_ok:
        import torch

        torch.set_num_threads(args.threads)
    print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs; threads {args.threads}; load average {loadavg()}")
    print(f"model: {args.preset} {cfg}; batch {args.batch}, inference batch {args.infer_batch}")
    if not torch_ok:
        print("PyTorch: not installed (or --no-torch); comparisons with it are skipped")
    else:
        print(f"PyTorch {torch.__version__}, eager, {torch.get_num_threads()} threads")

    peak = sgemm_peak(2048 if args.quick else 4096)
    print(f"\nfloat32 matmul peak (sgemm): {peak:.0f} GFLOP/s")

    print("\nper op, seconds per training step (all calls of the op in one step)")
    prof_nb = op_profile("numba", cfg, args.batch, repeats)
    prof_np = op_profile("numpy", cfg, args.batch, 1) if not args.no_numpy else {}
    print(f"  {'op':24s} {'numpy':>9s} {'numba':>9s} {'speed-up':>9s}")
    for op in sorted(prof_nb, key=lambda k: -prof_nb[k]):
        a, b = prof_np.get(op, float("nan")), prof_nb[op]
        print(f"  {op:24s} {a:9.4f} {b:9.4f} {a / b if b else float('nan'):8.1f}x")

    print("\ntraining step (forward + backward + clip + AdamW), float32")
    nb_train = tinyvit_train("numba", cfg, args.batch, repeats)
    flops = step_flops(cfg, args.batch)
    gflops = flops * nb_train / args.batch / 1e9
    print(f"  numba   {nb_train:8.1f} images/s   {gflops:6.0f} GFLOP/s = {100 * gflops / peak:.0f}% of the sgemm peak")
    if not args.no_numpy:
        np_train = tinyvit_train("numpy", cfg, args.batch, 1)
        print(f"  numpy   {np_train:8.1f} images/s   numba / numpy = {nb_train / np_train:.2f}x")
    if torch_ok:
        th_train = torch_train(cfg, args.batch, repeats)
        th_gflops = flops * th_train / args.batch / 1e9
        print(f"  torch   {th_train:8.1f} images/s   {th_gflops:6.0f} GFLOP/s;  numba / torch = {nb_train / th_train:.2f}x")

    print(f"\ninference (forward only), batch {args.infer_batch}")
    nb_inf = tinyvit_infer("numba", cfg, args.infer_batch, repeats)
    print(f"  numba   {nb_inf:8.1f} images/s")
    if torch_ok:
        th_inf = torch_infer(cfg, args.infer_batch, repeats)
        print(f"  torch   {th_inf:8.1f} images/s   numba / torch = {nb_inf / th_inf:.2f}x")

    print("\npeak resident memory of a training step (each in its own process)")
    for fw in ("numba", "torch") if torch_ok else ("numba",):
        m = peak_memory(fw, args)
        if m:
            print(f"  {fw:7s} peak {m['peak_mib']:7.0f} MiB, before the step {m['before_mib']:6.0f} MiB, "
                  f"step adds {m['peak_mib'] - m['before_mib']:6.0f} MiB")  # fmt: skip
    print(f"\nload average at the end: {loadavg()}")


if __name__ == "__main__":
    main()

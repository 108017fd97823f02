"""GPU benchmark: tinyvit's numba.cuda kernels against cuBLAS and PyTorch CUDA eager.

    .venv/bin/python benchmarks/bench_gpu.py                 # SGEMM sizes 1024..4096, cifar-small at batch 128
    .venv/bin/python benchmarks/bench_gpu.py --quick         # fewer repeats, SGEMM 1024 and 2048 only
    .venv/bin/python benchmarks/bench_gpu.py --sizes 4096 --batch 256
    .venv/bin/python benchmarks/bench_gpu.py --quick --profile   # also where a cuda step's time goes

Prints
- SGEMM TFLOP/s (float32, square n x n) of the plain tiled and the register-blocked
  kernel of kernels/cuda_matmul.py, and of cuBLAS through PyTorch with TF32 switched
  off (torch.backends.cuda.matmul.allow_tf32 = False), so all three do true fp32
  arithmetic; each kernel's result is first checked against cuBLAS;
- training images/s of a full step (forward, backward, gradient clipping, AdamW) on
  the cifar-small preset (32 px, patch 4, D 192, depth 6, 3 heads, MLP 768) for the
  `cuda` backend and for the same ViT in PyTorch CUDA eager (benchmarks/bench_cpu.py's
  model). Both copy the batch of images from the host every step;
- with --profile, the milliseconds of each backend op in one cuda training step,
  the device synchronised before and after every op (which itself slows the step:
  the profile's whole step is longer than the timed one), and what is left over:
  Python, launches and copies between ops.
Times are taken after a warm-up (which also compiles the kernels), with the device
synchronised around each measurement. PyTorch is optional: without a CUDA build of
it, only tinyvit's numbers are printed.

Without an NVIDIA GPU (or under NUMBA_ENABLE_CUDASIM=1, where kernels are Python
threads) there is nothing to measure: the script says so and exits with status 0.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np


def gpu_status() -> tuple[bool, str]:
    """(whether a real GPU can run numba.cuda kernels here, a line saying what was found)."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") == "1":
        return False, "NUMBA_ENABLE_CUDASIM=1: kernels would run in the CUDA simulator, which is not a GPU"
    try:
        from numba import cuda
    except ImportError as e:
        return False, f"numba.cuda cannot be imported: {e}"
    try:
        if not cuda.is_available():
            return False, "numba.cuda finds no usable NVIDIA GPU (driver or device missing)"
        device = cuda.get_current_device()
        name = device.name.decode() if isinstance(device.name, bytes) else str(device.name)
        return True, f"{name}, compute capability {device.compute_capability}"
    except Exception as e:  # noqa: BLE001 -- a broken driver install reports itself in many ways
        return False, f"numba.cuda cannot use the GPU: {e}"


def torch_cuda():
    """The torch module if it is installed with CUDA support, else None."""
    try:
        import torch
    except ImportError:
        return None
    return torch if torch.cuda.is_available() else None


def timed(fn, repeats: int, sync) -> float:
    """Median seconds of fn() over `repeats` runs, after one warm-up, synchronising the device around each."""
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


# -- SGEMM ------------------------------------------------------------------------------------


def sgemm(sizes, repeats: int, torch) -> None:
    from numba import cuda
    from tinyvit.kernels.cuda_matmul import matmul

    print("SGEMM, float32, C = A @ B with n x n matrices (TFLOP/s; median of", repeats, "runs)")
    header = f"  {'n':>6} {'tiled':>9} {'regblock':>9}"
    print(header + (f" {'cuBLAS':>9}  regblock/cuBLAS" if torch else "   (cuBLAS: PyTorch with CUDA not installed)"))
    if torch:
        torch.backends.cuda.matmul.allow_tf32 = False  # true fp32 products, as our kernels do
        torch.backends.cudnn.allow_tf32 = False
    rng = np.random.default_rng(0)
    for n in sizes:
        a = rng.standard_normal((n, n), dtype=np.float32)
        b = rng.standard_normal((n, n), dtype=np.float32)
        da, db = cuda.to_device(a), cuda.to_device(b)
        flops = 2.0 * n**3
        row = f"  {n:>6}"
        reference = None
        if torch:
            ta, tb = torch.from_numpy(a).cuda(), torch.from_numpy(b).cuda()
            reference = (ta @ tb).cpu().numpy()
        ours = {}
        for variant in ("tiled", "regblock"):
            out = matmul(da, db, variant=variant).copy_to_host()
            want = reference if reference is not None else a.astype(np.float64) @ b
            err = np.max(np.abs(out - want)) / np.max(np.abs(want))
            if err > 1e-4:
                raise SystemExit(f"{variant} SGEMM n={n} is wrong: relative error {err:.1e} against the reference")
            ours[variant] = flops / timed(lambda v=variant, x=da, y=db: matmul(x, y, variant=v), repeats, cuda.synchronize) / 1e12
            row += f" {ours[variant]:9.2f}"
        if torch:
            cublas = flops / timed(lambda x=ta, y=tb: x @ y, repeats, torch.cuda.synchronize) / 1e12
            row += f" {cublas:9.2f}  {ours['regblock'] / cublas:.2f}x"
        print(row)


# -- training ---------------------------------------------------------------------------------


def train_tinyvit(cfg, images, labels, repeats: int) -> float:
    from numba import cuda

    from tinyvit.model import ViT
    from tinyvit.optim import AdamW

    model = ViT(cfg, backend="cuda")
    opt = AdamW(model, lr=1e-4)

    def step():
        _, grads = model.loss_and_grads(images, labels)
        opt.step(grads)

    return images.shape[0] / timed(step, repeats, cuda.synchronize)


def train_torch(torch, cfg, images, labels, repeats: int) -> float:
    # the same ViT in PyTorch, shared with the CPU benchmark
    from bench_cpu import torch_model

    model = torch_model(cfg).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    host_images, host_labels = torch.from_numpy(images), torch.from_numpy(labels)

    def step():
        x, y = host_images.cuda(), host_labels.cuda()  # the batch comes from the host, as for tinyvit
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    return images.shape[0] / timed(step, repeats, torch.cuda.synchronize)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096], help="SGEMM matrix sides")
    ap.add_argument("--preset", default="cifar-small", help="model preset for the training comparison")
    ap.add_argument("--batch", type=int, default=128, help="training batch size")
    ap.add_argument("--repeats", type=int, default=10, help="timed runs per measurement (median)")
    ap.add_argument("--quick", action="store_true", help="3 repeats, SGEMM sizes 1024 and 2048")
    ap.add_argument("--no-torch", action="store_true", help="skip cuBLAS and PyTorch")
    ap.add_argument("--profile", action="store_true", help="also the per-op profile of a cuda training step")
    args = ap.parse_args(argv)
    if args.batch < 1 or args.repeats < 1 or min(args.sizes) < 1:
        ap.error("--batch, --repeats and --sizes must be positive")

    ok, found = gpu_status()
    if not ok:
        print(f"No GPU to benchmark: {found}.")
        print("bench_gpu.py measures only on an NVIDIA GPU; nothing was run.")
        return 0
    print(f"GPU: {found}")
    repeats = 3 if args.quick else args.repeats
    sizes = [1024, 2048] if args.quick else args.sizes
    torch = None if args.no_torch else torch_cuda()
    print(f"PyTorch: {torch.__version__ + ' (CUDA ' + str(torch.version.cuda) + ')' if torch else 'not used'}")
    print()
    sgemm(sizes, repeats, torch)

    from bench_cpu import batch_data, step_flops

    from tinyvit.config import get_preset

    cfg = get_preset(args.preset)
    images, labels = batch_data(cfg, args.batch)
    print()
    print(f"Training step, {args.preset} ({cfg}), batch {args.batch}, float32 (images/s; median of {repeats})")
    ours = train_tinyvit(cfg, images, labels, repeats)
    tflops = step_flops(cfg, args.batch) * ours / args.batch / 1e12
    print(f"  tinyvit cuda   {ours:9.1f} images/s   {tflops:6.2f} TFLOP/s of matrix products")
    if torch:
        theirs = train_torch(torch, cfg, images, labels, repeats)
        print(f"  torch eager    {theirs:9.1f} images/s   tinyvit / torch = {ours / theirs:.2f}x")
    if args.profile:
        profile(cfg, args.batch, repeats)
    return 0


def profile(cfg, batch: int, steps: int) -> None:
    from bench_cpu import op_profile
    from numba import cuda

    ms = {op: 1e3 * s for op, s in op_profile("cuda", cfg, batch, steps, cuda.synchronize).items()}
    whole = ms.pop("(whole step)")
    print(f"\nPer op, ms of one cuda training step, synchronised around each op (mean of {steps})")
    for op in sorted(ms, key=lambda k: -ms[k]):
        print(f"  {op:28s} {ms[op]:9.3f}  {100 * ms[op] / whole:5.1f}%")
    print(f"  {'(between ops: Python, copies)':28s} {whole - sum(ms.values()):9.3f}  {100 * (1 - sum(ms.values()) / whole):5.1f}%")
    print(f"  {'(whole step)':28s} {whole:9.3f}")


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # for bench_cpu, beside this file
    sys.exit(main())

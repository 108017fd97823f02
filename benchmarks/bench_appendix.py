"""The paper's appendix figure on this CPU: ViT-B/16 and ViT-L/16 inference speed and peak memory by resolution.

    python benchmarks/bench_appendix.py --table appendix.md --json appendix.json --plot appendix.png
    python benchmarks/bench_appendix.py --quick       # the `testing` preset at 8 and 16 px: seconds, not minutes

Dosovitskiy et al. (ICLR 2021), Appendix D.5, Figure 12 plots the inference speed of ViT
and ResNet models against input size on TPUv3 cores, and the largest batch that fits on a
core. This script draws that figure for this CPU: images/s of ViT-B/16 and ViT-L/16 (1000
classes) at 224, 288 and 384 px, tinyvit's `numba` backend next to PyTorch eager, with each
process's peak resident memory in place of the largest batch.

How each figure is measured:
- Every (framework, model, size) runs in its own fresh process that imports NumPy first, as
  users' programs do, then tinyvit (and torch for PyTorch), with 2 threads (`--threads`;
  tinyvit.threads.set_threads, torch.set_num_threads). The frameworks alternate from one
  configuration to the next, and the load average is printed beside each row.
- Random weights (the initialisation does not change the speed), float32, a batch of 8
  (`--batch`; ViT-L/16 at 384 px takes `--batch-l384`, the same by default; the table has a
  batch column), `--warmup` forward calls, then the median of `--repeats` timed forward calls.
- Peak memory: the process's peak resident set less its resident set right after its imports
  (weights, activations, workspace: what the model costs), and the total peak. The peak is the
  kernel's high-water mark of this process's own pages (VmHWM in /proc/self/status). That is
  what getrusage(RUSAGE_SELF).ru_maxrss reports, except that ru_maxrss also keeps the parent's
  high-water mark across exec, so a child smaller than its parent would read the parent's peak.
- PyTorch's model is bench_cpu.py's (pre-LN blocks, nn.Linear, scaled_dot_product_attention,
  exact GELU), run under torch.no_grad. PyTorch is optional: without it the script says it is
  skipped and measures tinyvit alone. tinyvit never imports it.
- Before the measurements, one process runs a `testing`-size forward so that numba's kernel
  cache is filled: the measured processes load the kernels rather than compile them.
GFLOP/image counts the matrix products of a forward pass (2 per multiply-add).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np  # first, as users' programs do: tinyvit's thread set-up must hold anyway

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # for bench_cpu, beside this file

from bench_cpu import (
    batch_data,
    cpu_model,
    have_torch,
    loadavg,
    step_flops,
    torch_model,
    vm_kib,
)

from tinyvit.config import get_preset
from tinyvit.model import ViT
from tinyvit.threads import set_threads

FRAMEWORKS = {"tinyvit": "tinyvit (numba)", "torch": "PyTorch eager"}
MODELS = {"vit-b16": "ViT-B/16", "vit-l16": "ViT-L/16", "testing": "testing"}


def forward_gflops(cfg) -> float:
    """Matrix-product GFLOP of one image's forward pass (a training step is three forwards' worth)."""
    return step_flops(cfg, 1) / 3 / 1e9


# -- one measurement, in its own process ----------------------------------------------------------


def child(framework: str, model: str, size: int, batch: int, warmup: int, repeats: int, threads: int) -> dict:
    """Time `repeats` forward calls after `warmup` ones, in a process that has imported NumPy and tinyvit."""
    if framework == "torch":
        import torch
    after_imports = vm_kib("VmRSS")
    cfg = get_preset(model).replace(image_size=size)
    images = batch_data(cfg, batch)[0]  # (B, H, W, C) float32
    set_threads(threads)
    if framework == "torch":
        torch.set_num_threads(threads)
        net = torch_model(cfg).eval()
        x = torch.from_numpy(images)

        def forward():
            with torch.no_grad():
                return net(x)
    else:
        vit = ViT(cfg, seed=0, dtype=np.float32, backend="numba")

        def forward():
            return vit.forward(images)

    for _ in range(warmup):
        forward()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        forward()
        times.append(time.perf_counter() - t)
    peak = vm_kib("VmHWM")
    return {
        "images_per_s": batch / float(np.median(times)),
        "times_s": times,
        "after_imports_mib": after_imports / 1024,
        "peak_mib": peak / 1024,
        "peak_added_mib": (peak - after_imports) / 1024,
    }


def measure(framework: str, model: str, size: int, batch: int, args) -> dict | None:
    cmd = [sys.executable, os.path.abspath(__file__), "--_child", framework, model, str(size), str(batch),
           str(args.warmup), str(args.repeats), str(args.threads)]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        print(f"  {framework} {model} {size} px failed: {out.stderr.strip()[-500:]}")
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def fill_numba_cache(threads: int) -> None:
    """Compile (or load) every numba kernel of a forward pass once, in a throwaway process."""
    code = ("import numpy as np; from tinyvit.threads import set_threads; from tinyvit import ViT, get_preset; "
            f"set_threads({threads}); cfg = get_preset('testing'); "
            "ViT(cfg, backend='numba').forward(np.zeros((2, cfg.image_size, cfg.image_size, 3), np.float32))")  # fmt: skip
    subprocess.run([sys.executable, "-c", code], check=True)


# -- the report ---------------------------------------------------------------------------------


def fmt(x: float | None, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def table(report: dict) -> str:
    """The Markdown table of the figures in `report` (one row per model and size)."""
    head = ("| model | px | tokens | batch | GFLOP/image | tinyvit images/s | PyTorch images/s | tinyvit / PyTorch "
            "| tinyvit peak MiB (added / total) | PyTorch peak MiB (added / total) | load |")  # fmt: skip
    lines = [head, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in report["rows"]:
        ours, theirs = row["tinyvit"], row["torch"]
        rate = {k: (m["images_per_s"] if m else None) for k, m in (("t", ours), ("p", theirs))}
        ratio = f"{rate['t'] / rate['p']:.2f}x" if rate["t"] and rate["p"] else "-"
        mem = [f"{m['peak_added_mib']:.0f} / {m['peak_mib']:.0f}" if m else "-" for m in (ours, theirs)]
        lines.append(f"| {MODELS[row['model']]} | {row['px']} | {row['tokens']} | {row['batch']} | "
                     f"{row['gflops_per_image']:.1f} | {fmt(rate['t'])} | {fmt(rate['p'])} | {ratio} | "
                     f"{mem[0]} | {mem[1]} | {row['load']} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def plot(report: dict, path: str) -> bool:
    """Images/s and peak memory against resolution, one line per model and framework. False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (speed, memory) = plt.subplots(1, 2, figsize=(11, 4.2))
    colours = {model: f"C{i}" for i, model in enumerate(dict.fromkeys(r["model"] for r in report["rows"]))}
    styles = {"tinyvit": ("-", "o"), "torch": ("--", "s")}
    for model, colour in colours.items():
        rows = [r for r in report["rows"] if r["model"] == model]
        for fw, (line, marker) in styles.items():
            got = [(r["px"], r[fw]) for r in rows if r[fw]]
            if not got:
                continue
            px = [p for p, _ in got]
            label = f"{MODELS[model]}, {FRAMEWORKS[fw]}"
            speed.plot(px, [m["images_per_s"] for _, m in got], line, marker=marker, color=colour, label=label)
            memory.plot(px, [m["peak_mib"] for _, m in got], line, marker=marker, color=colour, label=label)
    sizes = sorted({r["px"] for r in report["rows"]})
    for ax in (speed, memory):
        ax.set_xlabel("input size (px)")
        ax.set_xticks(sizes)
        ax.grid(True, which="both", alpha=0.3)
    speed.set_yscale("log")
    speed.set_ylabel("inference speed (images/s, log scale)")
    speed.set_title(f"Inference speed, {report['threads']} threads, float32")
    memory.set_ylabel("peak resident memory of the process (MiB)")
    memory.set_title("Peak resident memory, whole process")
    speed.legend(fontsize=8)
    fig.suptitle(f"cf. Dosovitskiy et al. (2021), Appendix D.5, Figure 12; this CPU: {report['machine']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=None, help="comma-separated presets (default vit-b16,vit-l16; testing with --quick)")
    ap.add_argument("--sizes", default=None, help="comma-separated input sizes in px (default 224,288,384; 8,16 quick)")
    ap.add_argument("--batch", type=int, default=8, help="images per forward call (default 8)")
    ap.add_argument("--batch-l384", type=int, default=None, help="batch for ViT-L/16 at 384 px (default: --batch)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed forward calls first (default 1)")
    ap.add_argument("--repeats", type=int, default=None, help="timed forward calls, median reported (default 3, 1 quick)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="the testing preset at 8 and 16 px, 1 timed call: a check")
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    ap.add_argument("--table", default=None, metavar="PATH", help="write the Markdown table here")
    ap.add_argument("--json", default=None, metavar="PATH", help="write the raw figures here")
    ap.add_argument("--plot", default=None, metavar="PATH.png", help="draw the figure here (needs matplotlib)")
    ap.add_argument("--_child", nargs=7, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._child:
        fw, model, size, batch, warmup, repeats, threads = args._child
        print(json.dumps(child(fw, model, int(size), int(batch), int(warmup), int(repeats), int(threads))))
        return 0

    models = (args.models or ("testing" if args.quick else "vit-b16,vit-l16")).split(",")
    sizes = [int(s) for s in (args.sizes or ("8,16" if args.quick else "224,288,384")).split(",")]
    args.warmup = 1 if args.warmup is None else args.warmup
    args.repeats = args.repeats or (1 if args.quick else 3)
    batch_l384 = args.batch_l384 or args.batch
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        ap.error(f"unknown models {unknown}; expected some of {list(MODELS)}")
    if min(args.batch, batch_l384, args.repeats, args.threads, *sizes) < 1 or args.warmup < 0:
        ap.error("--batch, --batch-l384, --repeats, --threads and --sizes must be positive, --warmup >= 0")
    for model in models:
        for size in sizes:
            try:
                get_preset(model).replace(image_size=size)
            except ValueError as e:
                ap.error(f"{model} at {size} px: {e}")

    frameworks = ["tinyvit"]
    torch_version = None
    if not args.no_torch and have_torch():
        import torch

        frameworks.append("torch")
        torch_version = torch.__version__
    report = {
        "machine": f"{cpu_model()}, {os.cpu_count()} CPUs",
        "threads": args.threads,
        "batch": args.batch,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "numpy": np.__version__,
        "torch": torch_version,
        "load_start": loadavg(),
        "rows": [],
    }
    print(f"machine: {report['machine']}; threads {args.threads}; load average {report['load_start']}")
    print(f"numpy {np.__version__}; torch {torch_version or '-'}; {args.warmup} warm-up + {args.repeats} timed "
          f"forward calls per process, median")  # fmt: skip
    if "torch" not in frameworks:
        print("PyTorch: not installed (or --no-torch); the PyTorch comparison is skipped")
    fill_numba_cache(args.threads)

    for i, (model, size) in enumerate((m, s) for m in models for s in sizes):
        cfg = get_preset(model).replace(image_size=size)
        batch = batch_l384 if (model, size) == ("vit-l16", 384) else args.batch
        if batch != args.batch:
            print(f"note: {MODELS[model]} at {size} px runs with batch {batch} (--batch-l384), the others {args.batch}")
        row = {"model": model, "px": size, "tokens": cfg.num_tokens, "batch": batch,
               "gflops_per_image": forward_gflops(cfg), "tinyvit": None, "torch": None}  # fmt: skip
        for fw in frameworks if i % 2 == 0 else frameworks[::-1]:  # the frameworks alternate
            row[fw] = measure(fw, model, size, batch, args)
        row["load"] = loadavg().split()[0]
        report["rows"].append(row)
        rates = "  ".join(f"{fw} {fmt(row[fw]['images_per_s'] if row[fw] else None)}" for fw in frameworks)
        print(f"  {MODELS[model]:8s} {size:4d} px: images/s {rates}   (load {row['load']})")

    report["load_end"] = loadavg()
    text = table(report)
    print(f"\nimages/s (median of {args.repeats}) and peak resident memory; load average at the start "
          f"{report['load_start']}, at the end {report['load_end']}\n")  # fmt: skip
    print(text)
    if args.table:
        with open(args.table, "w") as f:
            f.write(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    if args.plot and not plot(report, args.plot):
        print("matplotlib is not installed: no plot drawn (pip install matplotlib)")
    failed = [(r["model"], r["px"], fw) for r in report["rows"] for fw in frameworks if r[fw] is None]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Plot a training run's test accuracy against wall-clock minutes, from its metrics.jsonl.

    python benchmarks/plot_metrics.py runs/cifar10-30min/metrics.jsonl docs/cifar10-30min.png

Each point is one evaluation on the test split (the end of an epoch, or a stop);
the marker shows the resolution the model was training at. Needs matplotlib
(`pip install matplotlib`), which tinyvit itself does not use.
"""

import argparse
import itertools
import json
import sys
from pathlib import Path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("metrics", type=Path, help="a metrics.jsonl written by python -m tinyvit.train")
    p.add_argument("out", type=Path, help="the .png to write")
    p.add_argument("--title", default=None)
    args = p.parse_args(argv)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit("error: this script needs matplotlib: pip install matplotlib")
    rows = [json.loads(line) for line in args.metrics.read_text().splitlines() if line.strip()]
    if not rows:
        sys.exit(f"error: {args.metrics} holds no metrics")
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    tested = [r for r in rows if r["test_acc"] is not None]  # epochs skipped by --eval-every have none
    if not tested:
        sys.exit(f"error: {args.metrics} holds no evaluated epoch")
    ax.plot([r["elapsed_min"] for r in tested], [100 * r["test_acc"] for r in tested], color="tab:blue", lw=1.5,
            label="test accuracy")  # fmt: skip
    trained = [r for r in rows if r["train_acc"] is not None]  # an epoch stopped before its first step has none
    ax.plot([r["elapsed_min"] for r in trained], [100 * r["train_acc"] for r in trained], color="tab:orange",
            lw=1.0, ls="--", label="train accuracy (augmented, during the epoch)")  # fmt: skip
    for size, marker in zip(sorted({r["image_size"] for r in rows}), itertools.cycle("os^Dvp")):
        pts = [r for r in tested if r["image_size"] == size]
        ax.scatter([r["elapsed_min"] for r in pts], [100 * r["test_acc"] for r in pts], marker=marker,
                   color="tab:blue", zorder=3, label=f"training at {size} px")  # fmt: skip
    best = max(tested, key=lambda r: r["test_acc"])
    ax.annotate(f"{100 * best['test_acc']:.1f}%", (best["elapsed_min"], 100 * best["test_acc"]),
                textcoords="offset points", xytext=(-10, 8), ha="right")  # fmt: skip
    ax.set_xlabel("wall-clock minutes (training and evaluation)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(args.title or str(args.metrics.parent.name))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

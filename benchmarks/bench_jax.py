"""The jax backend's speed: training images/s of the compiled step, inference images/s.

    python benchmarks/bench_jax.py                                  # cifar-small, batch 128, all devices
    python benchmarks/bench_jax.py --preset vit-b16 --batch 64      # the paper's ViT-B/16 at 224 px
    python benchmarks/bench_jax.py --devices 1 --infer-batch 256

Training times tinyvit.distributed.JaxStep (forward, hand-written backward, clipping,
AdamW in one XLA program, the batch split over the devices); inference the model's
compiled forward. Each figure is the median of --repeats timed runs after a warm-up
that also compiles. Times include copying the batch from the host, as training does.
Prints the devices JAX used, so figures from different machines are not mixed up.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="cifar-small")
    ap.add_argument("--batch", type=int, default=128, help="global training batch")
    ap.add_argument("--infer-batch", type=int, default=256, help="inference batch (0: skip inference)")
    ap.add_argument("--devices", type=int, default=None, help="devices to split the batch over (default: all)")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--steps", type=int, default=5, help="steps per timed run")
    args = ap.parse_args(argv)

    import jax

    from tinyvit import ViT, get_preset
    from tinyvit.distributed import JaxStep, data_mesh
    from tinyvit.optim import AdamWHyper

    cfg = get_preset(args.preset)
    mesh = data_mesh(args.devices)
    kinds = sorted({d.device_kind for d in mesh.devices.flat})
    print(f"jax {jax.__version__}, {mesh.devices.size} device(s): {', '.join(kinds)}; {args.preset} "
          f"({cfg.image_size} px, D {cfg.dim}, depth {cfg.depth}), float32")  # fmt: skip
    rng = np.random.default_rng(0)
    images = rng.standard_normal((args.batch, cfg.image_size, cfg.image_size, cfg.channels)).astype(np.float32)
    labels = rng.integers(0, cfg.num_classes, args.batch)
    model = ViT(cfg, seed=0, dtype=np.float32, backend="jax")
    step = JaxStep(model, mesh, AdamWHyper(), clip_norm=1.0, label_smoothing=0.1)

    def train_run():
        for _ in range(args.steps):
            result = step(images, labels, 1e-4)
        float(result.loss)  # waits for the last step

    rates = _time(train_run, args.repeats, args.steps * args.batch)
    print(f"training   batch {args.batch:4d}: {statistics.median(rates):9.1f} images/s "
          f"(min {min(rates):.1f}, max {max(rates):.1f})")  # fmt: skip
    if args.infer_batch:
        x = rng.standard_normal((args.infer_batch, cfg.image_size, cfg.image_size, cfg.channels)).astype(np.float32)
        rates = _time(lambda: [model.forward(x) for _ in range(args.steps)], args.repeats, args.steps * args.infer_batch)
        print(f"inference  batch {args.infer_batch:4d}: {statistics.median(rates):9.1f} images/s "
              f"(min {min(rates):.1f}, max {max(rates):.1f})")  # fmt: skip
    return 0


def _time(run, repeats: int, images: int) -> list[float]:
    run()  # warm-up: compiles
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        run()
        rates.append(images / (time.perf_counter() - t))
    return rates


if __name__ == "__main__":
    raise SystemExit(main())

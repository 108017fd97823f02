"""Measure how closely every hand-written backward matches finite differences.

    .venv/bin/python benchmarks/gradcheck_report.py [--cases 1000] [--model-seeds 10] [--seed 0]

For each layer of tinyvit.layers, draws `--cases` random shapes and values
(seeded, so a run can be repeated), runs the float64 gradient check of
tests/gradcheck.py on each, and prints the worst relative error next to the
tolerance the tests hold that layer to. Then the same for the whole model (the
`testing` preset with perturbed parameters): every parameter tensor along a
random direction, for a few seeds. The tests check a few dozen draws; this
shows how much room the tolerances leave over many more.
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the shared helpers live there

from gradcheck import STEP, TOLERANCE, check_layer, directional_errors

from tinyvit import ViT, get_preset, layers

# Each case builder: rng -> (forward, backward, inputs). Shapes and value ranges as in
# tests/test_gradcheck_layers.py.


def _uniform(rng, shape, low=-2.0, high=2.0):
    return rng.uniform(low, high, size=shape)


def patchify_case(rng):
    P, g, B, C = rng.integers(1, 4), rng.integers(1, 4), rng.integers(1, 4), rng.integers(1, 4)
    side = P * g
    return (lambda x: layers.patchify_forward(x, P),
            layers.patchify_backward,
            [_uniform(rng, (B, side, side, C))])  # fmt: skip


def linear_case(rng):
    B, N, d_in, d_out = rng.integers(1, 4), rng.integers(2, 7), rng.integers(1, 9), rng.integers(1, 9)
    inputs = [_uniform(rng, (B, N, d_in)), _uniform(rng, (d_in, d_out)), _uniform(rng, (d_out,))]
    return layers.linear_forward, layers.linear_backward, inputs


def gelu_case(rng):
    shape = (rng.integers(1, 4), rng.integers(2, 7), rng.integers(1, 9))
    return layers.gelu_forward, layers.gelu_backward, [_uniform(rng, shape, -4.0, 4.0)]


def linear_gelu_case(rng):
    B, N, d_in, d_out = rng.integers(1, 4), rng.integers(2, 7), rng.integers(1, 9), rng.integers(1, 9)
    inputs = [_uniform(rng, (B, N, d_in), -1, 1), _uniform(rng, (d_in, d_out), -1, 1) / d_in,
              _uniform(rng, (d_out,), -1, 1)]  # fmt: skip
    return layers.linear_gelu_forward, layers.linear_gelu_backward, inputs


def embed_case(rng):
    B, N, D = rng.integers(1, 4), rng.integers(2, 7), rng.integers(1, 9)
    inputs = [_uniform(rng, (B, N - 1, D)), _uniform(rng, (D,)), _uniform(rng, (N, D))]
    return layers.embed_forward, layers.embed_backward, inputs


def class_token_case(rng):
    shape = (rng.integers(1, 4), rng.integers(2, 7), rng.integers(1, 9))
    return layers.class_token_forward, layers.class_token_backward, [_uniform(rng, shape)]


def layernorm_case(rng):
    B, N, D = rng.integers(1, 4), rng.integers(2, 7), rng.integers(3, 9)
    inputs = [_uniform(rng, (B, N, D)), _uniform(rng, (D,)), _uniform(rng, (D,))]
    return layers.layernorm_forward, layers.layernorm_backward, inputs


def attention_case(rng):
    B, N, H, Dh = rng.integers(1, 4), rng.integers(2, 7), rng.integers(1, 4), rng.integers(1, 5)
    return partial(layers.attention_forward, heads=H), layers.attention_backward, [_uniform(rng, (B, N, 3 * H * Dh))]


def cross_entropy_case(rng):
    B, K = rng.integers(1, 4), rng.integers(2, 6)
    labels = rng.integers(0, K, size=B)
    smoothing = 0.0 if rng.random() < 0.5 else rng.uniform(0.01, 0.9)
    forward = partial(layers.cross_entropy_forward, labels=labels, smoothing=smoothing)
    return forward, layers.cross_entropy_backward, [_uniform(rng, (B, K), -4.0, 4.0)]


def gelu_tanh_case(rng):
    shape = (rng.integers(1, 4), rng.integers(2, 7), rng.integers(1, 9))
    return layers.gelu_tanh_forward, layers.gelu_tanh_backward, [_uniform(rng, shape, -4.0, 4.0)]


def linear_gelu_tanh_case(rng):
    _, _, inputs = linear_gelu_case(rng)  # the same inputs as the erf form's
    return layers.linear_gelu_tanh_forward, layers.linear_gelu_tanh_backward, inputs


def tanh_case(rng):
    shape = (rng.integers(1, 4), rng.integers(1, 9))
    return layers.tanh_forward, layers.tanh_backward, [_uniform(rng, shape, -3.0, 3.0)]


def token_mean_case(rng):
    shape = (rng.integers(1, 4), rng.integers(1, 7), rng.integers(1, 9))
    return layers.token_mean_forward, layers.token_mean_backward, [_uniform(rng, shape)]


def pos_embed_case(rng):
    B, N, D = rng.integers(1, 4), rng.integers(1, 7), rng.integers(1, 9)
    return layers.pos_embed_forward, layers.pos_embed_backward, [_uniform(rng, (B, N, D)), _uniform(rng, (N, D))]


CASES = {
    "patchify": patchify_case, "linear": linear_case, "gelu": gelu_case, "linear_gelu": linear_gelu_case,
    "embed": embed_case, "class_token": class_token_case, "layernorm": layernorm_case,
    "attention": attention_case, "cross_entropy": cross_entropy_case,
    "gelu_tanh": gelu_tanh_case, "linear_gelu_tanh": linear_gelu_tanh_case, "tanh": tanh_case,
    "token_mean": token_mean_case, "pos_embed": pos_embed_case,
}  # fmt: skip


def model_errors(seed: int) -> list[float]:
    """Directional errors of every parameter tensor of a perturbed float64 `testing` model."""
    cfg = get_preset("testing")
    model = ViT(cfg, seed=seed, dtype=np.float64)
    rng = np.random.default_rng(seed)
    for p in model.params.values():
        p += rng.normal(0.0, 0.5, size=p.shape)  # away from init, where the zero head hides every other gradient
    images = rng.normal(size=(3, cfg.image_size, cfg.image_size, cfg.channels))
    labels = rng.integers(0, cfg.num_classes, size=3)
    smoothing = 0.1 * (seed % 2)
    _, grads = model.loss_and_grads(images, labels, label_smoothing=smoothing)

    def loss():
        return model.loss_and_grads(images, labels, label_smoothing=smoothing)[0]

    return list(directional_errors(loss, model.params, grads, h=STEP["model"], seed=seed).values())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=1000, help="random cases per layer (default 1000)")
    parser.add_argument("--model-seeds", type=int, default=10, help="perturbed models to check (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random cases (default 0)")
    parser.add_argument("--layers", nargs="*", default=None, choices=sorted(CASES), help="only these layers (default: all)")
    args = parser.parse_args(argv)
    if args.cases < 1 or args.model_seeds < 1:
        parser.error(f"--cases and --model-seeds must be positive, got {args.cases} and {args.model_seeds}")

    rows = []
    for index, (name, make_case) in enumerate(CASES.items()):
        if args.layers is not None and name not in args.layers:
            continue
        rng = np.random.default_rng([args.seed, index])
        start = time.perf_counter()
        worst = 0.0
        for _ in range(args.cases):
            forward, backward, inputs = make_case(rng)
            worst = max(worst, *check_layer(forward, backward, inputs, h=STEP[name], seed=int(rng.integers(2**31))))
        rows.append((name, args.cases, worst, STEP[name], TOLERANCE[name], time.perf_counter() - start))

    start = time.perf_counter()
    errors = [e for s in range(args.model_seeds) for e in model_errors(args.seed + s)]
    rows.append(("model (per tensor)", len(errors), max(errors), STEP["model"], TOLERANCE["model"],
                 time.perf_counter() - start))  # fmt: skip

    header = f"{'layer':<20} {'cases':>6} {'worst rel err':>14} {'h':>6} {'tolerance':>10} {'ok':>3} {'time':>7}"
    print(header)
    failed = False
    for name, cases, worst, h, tol, seconds in rows:
        ok = worst <= tol
        failed |= not ok
        verdict = "yes" if ok else "NO"
        print(f"{name:<20} {cases:>6} {worst:>14.2e} {h:>6.0e} {tol:>10.0e} {verdict:>3} {seconds:>6.1f}s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

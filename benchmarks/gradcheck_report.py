"""Measure how closely every hand-written backward matches finite differences, over many draws.

    .venv/bin/python benchmarks/gradcheck_report.py [--cases 1000] [--model-seeds 10] [--seed 0] [--layers NAME ...]

For each layer of tinyvit.layers, draws `--cases` random shapes and values
(seeded, so a run can be repeated) with the case builders of tinyvit.gradcheck,
runs the float64 gradient check on each, and prints the worst relative error
next to the tolerance the tests hold that layer to. Then the same for the whole
model (the `testing` preset with perturbed parameters): every parameter tensor
along a random direction, for a few seeds. The tests and
`python -m tinyvit.gradcheck` check a few dozen draws; this shows how much room
the tolerances leave over many more.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from tinyvit import get_backend
from tinyvit.gradcheck import CHECKS, STEP, TOLERANCE, check_layer, model_errors


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cases", type=int, default=1000, help="random cases per layer (default 1000)"
    )
    parser.add_argument(
        "--model-seeds",
        type=int,
        default=10,
        help="perturbed models to check (default 10)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the random cases (default 0)"
    )
    parser.add_argument("--layers", nargs="*", default=None, choices=sorted(CHECKS), help="only these (default: all)")
    args = parser.parse_args(argv)
    if args.cases < 1 or args.model_seeds < 1:
        parser.error(
            f"--cases and --model-seeds must be positive, got {args.cases} and {args.model_seeds}"
        )

    ops = get_backend("numpy")
    rows = []
    for index, (name, check) in enumerate(CHECKS.items()):
        if check.make_case is None or (args.layers is not None and name not in args.layers):
            continue  # the whole model is below
        rng = np.random.default_rng([args.seed, index])
        start = time.perf_counter()
        worst = 0.0
        for _ in range(args.cases):
            case = check.make_case(rng, ops)
            errors = check_layer(
                case.forward,
                case.backward,
                case.inputs,
                h=STEP[name],
                seed=int(rng.integers(2**31)),
            )
            worst = max(worst, *errors)
        rows.append(
            (
                name,
                args.cases,
                worst,
                STEP[name],
                TOLERANCE[name],
                time.perf_counter() - start,
            )
        )

    if args.layers is not None and "model" not in args.layers:
        return _print(rows)
    start = time.perf_counter()
    errors = [e for s in range(args.model_seeds) for e in model_errors(args.seed + s)]
    rows.append(("model (per tensor)", len(errors), max(errors), STEP["model"], TOLERANCE["model"],
                 time.perf_counter() - start))  # fmt: skip
    return _print(rows)


def _print(rows) -> int:
    """The table; 1 when a layer's worst error is over its tolerance."""
    header = f"{'layer':<20} {'cases':>6} {'worst rel err':>14} {'h':>6} {'tolerance':>10} {'ok':>3} {'time':>7}"
    print(header)
    failed = False
    for name, cases, worst, h, tol, seconds in rows:
        ok = worst <= tol
        failed |= not ok
        verdict = "yes" if ok else "NO"
        print(
            f"{name:<20} {cases:>6} {worst:>14.2e} {h:>6.0e} {tol:>10.0e} {verdict:>3} {seconds:>6.1f}s"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

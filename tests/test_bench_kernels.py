"""benchmarks/bench_kernels.py: every op it offers builds its case, and every variant in the case runs on it.

Speed is not asserted (the script measures it). On the default shape of the tiny `testing`
preset, in float64, each op's variants are run as the script runs them (forward, then backward
on the forward's cache) and must compute the same numbers as the last variant, the backend's,
so that a timing compares like with like.
"""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from tinyvit.config import get_preset

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_kernels.py"
_spec = importlib.util.spec_from_file_location("bench_kernels", SCRIPT)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def numbers(result):
    """The arrays of a result (an array, a scalar, or tuples and lists of them), as float64."""
    if isinstance(result, (tuple, list)):
        return [a for r in result for a in numbers(r)]
    return [np.asarray(result, dtype=np.float64)]


@pytest.mark.parametrize("op", bench.OPS)
def test_every_variant_runs_on_the_case_and_agrees_with_the_default(op):
    cfg = get_preset("testing")
    shape = bench.default_shape(op, cfg, 2)
    variants, args, dout, _ = bench.cases(op, shape, np.float64, np.random.default_rng(0))
    assert len(variants) >= 2, f"{op}: {list(variants)}"
    got = {}
    for name, (forward, backward) in variants.items():
        if backward is None:
            got[name] = numbers(forward(*args))
        else:
            out, cache = forward(*args)
            got[name] = numbers(out) + numbers(backward(dout, cache))
    default = list(variants)[-1]
    for name, results in got.items():
        assert len(results) == len(got[default]), f"{op} {name}: {len(results)} outputs, the default {len(got[default])}"
        for i, (a, b) in enumerate(zip(results, got[default], strict=True)):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12, err_msg=f"{op} {name}, output {i}")


def test_a_patch_that_does_not_divide_the_image_is_a_usage_error(capsys):
    with pytest.raises(SystemExit):
        bench.main(["patchify", "--shape", "2,6,6,3,4"])
    assert "the patch side 4 must divide the image sides 6x6" in capsys.readouterr().err

"""`python -m tinyvit.gradcheck`: the gradient checks as a learner runs them, and --break making them fail."""

import subprocess
import sys

import numpy as np
import pytest

from tinyvit import layers
from tinyvit.gradcheck import (
    BREAKS,
    CHECKS,
    GradcheckError,
    check_layer,
    check_one,
    main,
)


@pytest.mark.parametrize("layer", [name for name in CHECKS if name != "model"])
def test_every_layer_check_passes_on_the_specification(layer):
    result = check_one(layer, "numpy", cases=3, seed=1)
    assert result.passed, (
        f"{layer}: worst {result.worst:.2e} against {result.tolerance:.0e}, {result.failure}"
    )


@pytest.mark.parametrize("layer", list(BREAKS))
def test_every_break_makes_its_check_fail_by_far(layer):
    """A wrong term is not a near miss: the worst error is at least 1e4 times the tolerance (or 1e-2)."""
    result = check_one(layer, "numpy", cases=2, seed=1, broken=True)
    assert not result.passed
    assert result.failure is None, (
        f"{layer}: the broken backward should still give well-formed gradients"
    )
    assert result.worst >= min(1e-2, 1e4 * result.tolerance), (
        f"{layer}: worst error only {result.worst:.2e}"
    )


def test_main_prints_what_each_check_proves_its_error_tolerance_and_step(capsys):
    assert main(["layernorm", "attention", "--cases", "2"]) == 0
    out = capsys.readouterr().out
    for text in (f"{'layernorm':<17} ok", f"{'attention':<17} ok", CHECKS["attention"].proves, "tolerance 3e-04",
                 "step h = 1e-06", "2 of 2 checks passed"):  # fmt: skip
        assert text in out, f"{text!r} missing from:\n{out}"


def test_main_with_break_fails_and_says_what_was_broken(capsys):
    assert main(["--break", "layernorm", "--cases", "2"]) == 1
    out = capsys.readouterr().out
    assert f"{'layernorm':<17} FAILED" in out and BREAKS["layernorm"].__doc__ in out
    assert (
        f"{len(CHECKS) - 1} of {len(CHECKS)} checks passed" in out
    )  # every other layer still checked, and passing


def test_the_module_runs_as_a_command_and_its_exit_code_reports_failure():
    run = [sys.executable, "-m", "tinyvit.gradcheck", "--cases", "1"]
    good = subprocess.run([*run, "linear"], capture_output=True, text=True, check=False)
    assert good.returncode == 0, good.stdout + good.stderr
    bad = subprocess.run(
        [*run, "--break", "attention"], capture_output=True, text=True, check=False
    )
    assert bad.returncode == 1 and f"{'attention':<17} FAILED" in bad.stdout, (
        bad.stdout + bad.stderr
    )


@pytest.mark.parametrize("argv, message", [
    (["softmax"], "unknown layers ['softmax']"),
    (["--break", "attention", "--backend", "numba"], "runs with --backend numpy"),
    (["--cases", "0"], "--cases must be positive"),
    (["--backend", "torch"], "unknown backend 'torch'"),
])  # fmt: skip
def test_bad_arguments_exit_with_a_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_check_layer_catches_a_backward_that_writes_into_its_input():
    x = np.random.default_rng(0).normal(size=(2, 3, 4))

    def backward_in_place(dout, cache):
        cache.x[...] = (
            0.0  # the cache holds x itself: this writes into the caller's array
        )
        return dout

    with pytest.raises(GradcheckError, match="backward wrote into x"):
        check_layer(layers.gelu_forward, backward_in_place, [x], names=["x"])

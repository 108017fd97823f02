"""The trainer end to end on small generated data: metrics, checkpoints, exact resume, clean stops.

These run the real `python -m tinyvit.train` code path (in-process, through its
argument parser) on the `testing` preset and the `shapes` dataset with the
`numpy` backend, so each run takes a second or two.
"""

import io
import json
import shlex
import signal
from pathlib import Path

import numpy as np
import pytest

from tinyvit import ViT
from tinyvit.checkpoint import load_checkpoint
from tinyvit.errors import UsageError
from tinyvit.train import Progress, build_parser, main, train

SMALL = ["--data", "shapes:64", "--preset", "testing", "--image-size", "16", "--batch-size", "16",
         "--backend", "numpy", "--threads", "1", "--no-progress", "--seed", "3"]  # fmt: skip


def run(tmp_path, *extra, out="run"):
    args = build_parser().parse_args(SMALL + ["--out", str(tmp_path / out), *extra])
    return train(args)


def test_a_short_run_writes_metrics_a_checkpoint_and_a_summary(tmp_path):
    summary = run(tmp_path, "--epochs", "2")
    lines = [json.loads(s) for s in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2]
    assert all(0.0 <= m["test_acc"] <= 1.0 and np.isfinite(m["train_loss"]) for m in lines)
    ck = load_checkpoint(tmp_path / "run" / "checkpoint.npz")
    assert ck.state["epoch"] == 2 and ck.state["step"] == 8 and int(ck.opt_state["step"]) == 8
    assert summary["steps"] == 8 and summary["test_acc"] == lines[-1]["test_acc"]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 8


def test_the_readme_quick_start_on_shapes_reaches_about_70_percent(tmp_path):
    """README.md promises "about 70% test accuracy (chance: 17%)" for its `--data shapes` command:
    run that exact command (read from the README, so the two cannot drift apart), adding only
    where to write and no progress bar, and hold it to 70% +- 5 points."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    lines = [s for s in readme.splitlines() if s.startswith("python -m tinyvit.train --data shapes ")]
    assert len(lines) == 1, f"expected one shapes quick-start command in README.md, found {lines}"
    assert "about 70% test accuracy" in readme
    argv = shlex.split(lines[0])[3:]  # drop "python -m tinyvit.train"
    summary = train(build_parser().parse_args([*argv, "--out", str(tmp_path / "quick"), "--no-progress"]))
    assert abs(summary["test_acc"] - 0.70) <= 0.05, f"README says about 70%, the command gave {summary['test_acc']:.1%}"


def test_a_run_stopped_and_resumed_ends_with_the_same_parameters_as_one_never_stopped(tmp_path):
    """Stop in the middle of epoch 2 (after the 8 px -> 16 px resolution change), resume, finish:
    every parameter and moment matches the uninterrupted run.

    Same data order, augmentation, schedule and optimizer state; what can differ is rounding:
    NumPy's SIMD sums start at an aligned address, so an array that lands elsewhere in memory
    after reloading is summed in a slightly different order. In float64 that is ~1e-16 per
    operation, so the two runs must agree to 1e-10; a missed step or a wrong moment would be
    off by orders of magnitude more."""
    schedule = ["--epochs", "3", "--progressive", "8:1", "--dtype", "float64"]
    run(tmp_path, *schedule, out="straight")
    stopped = run(tmp_path, *schedule, "--max-steps", "6", out="interrupted")
    assert stopped["steps"] == 6 and "max-steps" in stopped["stopped"]
    assert load_checkpoint(tmp_path / "interrupted" / "checkpoint.npz").state["batch"] == 2
    main(["--out", str(tmp_path / "interrupted"), "--resume", "--no-progress", "--threads", "1"])
    a = load_checkpoint(tmp_path / "straight" / "checkpoint.npz")
    b = load_checkpoint(tmp_path / "interrupted" / "checkpoint.npz")
    assert a.state["step"] == b.state["step"] == 12
    for k in a.params:
        np.testing.assert_allclose(b.params[k], a.params[k], rtol=1e-10, atol=1e-12, err_msg=k)
    for k in a.opt_state:
        np.testing.assert_allclose(b.opt_state[k], a.opt_state[k], rtol=1e-10, atol=1e-16, err_msg=k)


def test_an_existing_run_is_not_overwritten_without_resume(tmp_path):
    run(tmp_path, "--epochs", "1")
    before = (tmp_path / "run" / "checkpoint.npz").read_bytes()
    with pytest.raises(ValueError, match="already exists: pass --resume"):
        run(tmp_path, "--epochs", "1")
    assert (tmp_path / "run" / "checkpoint.npz").read_bytes() == before


def test_a_nan_loss_stops_training_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    original = ViT.loss_and_grads
    calls = {"n": 0}

    def poisoned(self, *a, **kw):
        calls["n"] += 1
        loss, grads, logits = original(self, *a, **kw)
        return (float("nan") if calls["n"] == 6 else loss), grads, logits

    monkeypatch.setattr(ViT, "loss_and_grads", poisoned)
    with pytest.raises(SystemExit) as exit_info:
        main(SMALL + ["--out", str(tmp_path / "run"), "--epochs", "3"])
    assert "step 6 (epoch 2, batch 2): loss is nan" in str(exit_info.value) and "last good checkpoint" in str(exit_info.value)
    ck = load_checkpoint(tmp_path / "run" / "checkpoint.npz")
    assert ck.state["epoch"] == 1 and ck.state["step"] == 4, "the checkpoint of epoch 1 is untouched"


def test_ctrl_c_finishes_the_step_saves_a_checkpoint_and_exits_cleanly(tmp_path, monkeypatch):
    original = ViT.loss_and_grads
    calls = {"n": 0}

    def interrupt_on_third(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            signal.raise_signal(signal.SIGINT)  # as if the user pressed Ctrl-C during this step
        return original(self, *a, **kw)

    monkeypatch.setattr(ViT, "loss_and_grads", interrupt_on_third)
    summary = run(tmp_path, "--epochs", "2")
    assert "Ctrl-C" in summary["stopped"] and summary["steps"] == 3
    ck = load_checkpoint(tmp_path / "run" / "checkpoint.npz")
    assert ck.state["step"] == 3 and ck.state["batch"] == 3


def test_max_minutes_stops_when_the_time_is_up_then_evaluates_and_saves(tmp_path):
    """The limit is checked before every step: with no time at all, no step runs, and the
    (untrained) model is still evaluated and saved."""
    summary = run(tmp_path, "--epochs", "50", "--max-minutes", "0")
    assert summary["steps"] == 0 and "max-minutes" in summary["stopped"] and summary["test_acc"] is not None
    assert load_checkpoint(tmp_path / "run" / "checkpoint.npz").state["step"] == 0


def test_max_steps_is_exact_across_a_resume(tmp_path):
    """Stop at 2 steps, resume with the limit at 3: exactly one more step runs."""
    run(tmp_path, "--epochs", "3", "--max-steps", "2")
    main(["--out", str(tmp_path / "run"), "--resume", "--no-progress", "--max-steps", "3"])
    assert load_checkpoint(tmp_path / "run" / "checkpoint.npz").state["step"] == 3


def test_resuming_a_finished_run_is_a_clear_error_that_keeps_its_files(tmp_path):
    run(tmp_path, "--epochs", "1")
    summary = (tmp_path / "run" / "summary.json").read_text()
    with pytest.raises(SystemExit, match="finished run"):
        main(["--out", str(tmp_path / "run"), "--resume", "--no-progress"])
    assert (tmp_path / "run" / "summary.json").read_text() == summary


def test_resume_refuses_options_that_differ_from_the_saved_run(tmp_path):
    run(tmp_path, "--epochs", "2", "--max-steps", "1")
    with pytest.raises(SystemExit, match="--epochs"):
        main(["--out", str(tmp_path / "run"), "--resume", "--epochs", "30", "--no-progress"])


@pytest.mark.parametrize("flags, message", [
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--label-smoothing", "1.5"], "--label-smoothing must be in"),
    (["--progressive", "6:1"], "multiple of the patch size"),
    (["--progressive", "8"], "SIZE:EPOCHS"),
    (["--batch-size", "1000"], "larger than the training set"),
    (["--heads", "3"], "heads 3 must divide dim 8"),
    (["--clip-norm", "-1"], "--clip-norm must be >= 0"),
    (["--weight-decay", "-0.1"], "--weight-decay must be >= 0"),
    (["--threads", "0"], "--threads must be at least 1"),
    (["--data", "shapes:x"], "expected 'shapes' or 'shapes:N'"),
    (["--data", "folder:/nonexistent"], "does not exist"),
])  # fmt: skip
def test_bad_options_are_one_line_errors_and_write_nothing(tmp_path, flags, message):
    with pytest.raises(SystemExit, match="^error: .*" + message):
        main(SMALL + ["--out", str(tmp_path / "run"), *flags])
    assert not (tmp_path / "run" / "checkpoint.npz").exists()


def test_a_fault_in_the_code_keeps_its_traceback(tmp_path, monkeypatch):
    """Only errors about the user's input (UsageError) become one-line exits: a ValueError raised
    by the code itself propagates, traceback and all."""

    def broken(self, *a, **kw):
        raise ValueError("a fault inside the step")

    monkeypatch.setattr(ViT, "loss_and_grads", broken)
    with pytest.raises(ValueError, match="a fault inside the step") as info:
        main(SMALL + ["--out", str(tmp_path / "run"), "--epochs", "1"])
    assert not isinstance(info.value, UsageError)


def test_evaluate_and_predict_turn_a_bad_checkpoint_into_one_line(tmp_path):
    from tinyvit.evaluate import main as evaluate_main
    from tinyvit.predict import main as predict_main

    (tmp_path / "junk.npz").write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit, match=r"^error: .*junk.npz is neither an .npz \(zip\) nor a .safetensors file"):
        evaluate_main(["--checkpoint", str(tmp_path / "junk.npz"), "--backend", "numpy"])
    with pytest.raises(SystemExit, match="^error: checkpoint .*missing.npz does not exist"):
        predict_main(["--checkpoint", str(tmp_path / "missing.npz"), "--backend", "numpy", "x.png"])


def test_evaluate_and_predict_read_the_checkpoint(tmp_path, capsys):
    from PIL import Image

    from tinyvit.data import load_dataset
    from tinyvit.evaluate import main as evaluate_main
    from tinyvit.predict import main as predict_main

    run(tmp_path, "--epochs", "1")
    ckpt = str(tmp_path / "run" / "checkpoint.npz")
    capsys.readouterr()
    evaluate_main(["--checkpoint", ckpt, "--data", "shapes:64", "--backend", "numpy", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert len(report["confusion_matrix"]) == 6 and sum(map(sum, report["confusion_matrix"])) == 12
    assert report["accuracy"] == pytest.approx(
        np.trace(report["confusion_matrix"]) / 12), "accuracy is the confusion matrix's diagonal share"
    img = load_dataset("shapes:64", image_size=40).test_images[0]  # another size: predict resizes
    Image.fromarray(img).save(tmp_path / "shape.png")
    predict_main(["--checkpoint", ckpt, "--backend", "numpy", str(tmp_path / "shape.png")])
    out = capsys.readouterr().out.splitlines()
    probs = [float(line.split("%")[0]) / 100 for line in out[1:]]
    assert out[0].endswith("shape.png") and len(probs) == 5 and probs == sorted(probs, reverse=True)
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(SystemExit, match="cannot read image .*broken.png"):
        predict_main(["--checkpoint", ckpt, "--backend", "numpy", str(tmp_path / "broken.png")])


def test_the_numba_backend_trains_the_same_run_as_the_numpy_specification(tmp_path):
    """Two epochs through the trainer in float64, once per backend: the same losses, accuracies and
    final parameters, to rounding. The compiled kernels change the speed, not the run."""
    runs = {}
    for backend in ("numpy", "numba"):
        args = [a if a != "numpy" else backend for a in SMALL]  # SMALL names the numpy backend
        main([*args, "--out", str(tmp_path / backend), "--epochs", "2", "--dtype", "float64"])
        runs[backend] = (
            [json.loads(s) for s in (tmp_path / backend / "metrics.jsonl").read_text().splitlines()],
            load_checkpoint(tmp_path / backend / "checkpoint.npz"),
        )
    (m_np, ck_np), (m_nb, ck_nb) = runs["numpy"], runs["numba"]
    assert [m["epoch"] for m in m_np] == [m["epoch"] for m in m_nb] == [1, 2]
    for a, b in zip(m_np, m_nb, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-9) and a["train_acc"] == b["train_acc"]
        assert a["test_loss"] == pytest.approx(b["test_loss"], rel=1e-9) and a["test_acc"] == b["test_acc"]
    for k in ck_np.params:
        np.testing.assert_allclose(ck_nb.params[k], ck_np.params[k], rtol=1e-8, atol=1e-10, err_msg=k)


class _Stats:
    """Stands in for EpochStats: counts how often the running figures are read."""

    def __init__(self):
        self.reads, self.seen, self.lr = 0, 0, 1e-3

    def read(self):
        self.reads += 1
        return 1.25, 0.5


def test_progress_without_a_terminal_prints_a_plain_line_every_five_percent():
    """200 steps, no terminal: 20 lines at 5%, 10%, ..., 100%, no carriage returns, and the running
    figures read once per line, not once per step."""
    stream, stats = io.StringIO(), _Stats()
    progress = Progress("epoch 1/1 16px", total=200, stream=stream)
    for _ in range(200):
        stats.seen += 8
        progress.update(stats)
    progress.close()
    text = stream.getvalue()
    lines = text.splitlines()
    assert "\r" not in text
    assert [int(line.split(":")[1].split("%")[0]) for line in lines] == list(range(5, 101, 5))
    assert lines[-1].startswith("epoch 1/1 16px: 100% (200/200 steps) loss 1.250 acc 0.500 lr 1.00e-03")
    assert stats.reads == len(lines) == 20


def test_progress_resumed_mid_epoch_continues_at_the_next_five_percent():
    stream = io.StringIO()
    progress = Progress("e", total=40, initial=13, stream=stream)  # 32.5% done
    for _ in range(27):
        progress.update(_Stats())
    assert [line.split("%")[0].split()[-1] for line in stream.getvalue().splitlines()][:2] == ["35", "40"]


def test_progress_on_a_terminal_redraws_a_bar_and_reads_the_figures_at_most_every_refresh():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream, stats = Terminal(), _Stats()
    progress = Progress("epoch 1/1 16px", total=50, stream=stream)
    for _ in range(50):
        progress.update(stats)
    progress.close()
    assert "\r" in stream.getvalue() and "loss=1.250" in stream.getvalue()
    assert stats.reads < 50, "the figures are read when shown, not after every step"


def test_a_run_logged_to_a_file_has_plain_progress_lines_and_the_epoch_summary(tmp_path, capsys):
    """The trainer's own output with progress on and stderr not a terminal (as under nohup or CI)."""
    args = [a for a in SMALL if a != "--no-progress"]
    main([*args, "--out", str(tmp_path / "run"), "--epochs", "2", "--batch-size", "4"])  # 16 steps an epoch
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    for epoch in (1, 2):
        steps = [s for s in lines if s.startswith(f"epoch {epoch}/2 16px: ")]
        assert 1 <= len(steps) <= 20 and steps[-1].startswith(f"epoch {epoch}/2 16px: 100% (16/16 steps) loss ")
        assert any(s.startswith(f"epoch {epoch}: train loss ") and "| test loss" in s for s in lines)

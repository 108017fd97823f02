"""Fine-tuning from a pretrained file: `python -m tinyvit.train --init PATH`, SGD with momentum, and
the trainer's clean-up of temporary files a killed run left behind.

The pretrained file is an official-layout checkpoint made from random numbers
(tests/pretrained_files.py): 8 px, 5 classes, average pooling and pre_logits. It is
fine-tuned on the generated `shapes` data (6 classes) at 16 px, a few steps.
"""

import os

import numpy as np
import pytest
from pretrained_files import Spec, official_arrays

from tinyvit import ViT, get_preset
from tinyvit.checkpoint import load_checkpoint, savez_atomic
from tinyvit.optim import SGD, SGDState, sgd_apply, sgd_init
from tinyvit.train import build_parser, train

COMMON = ["--data", "shapes:64", "--batch-size", "16", "--backend", "numpy", "--threads", "1", "--no-progress", "--seed", "2"]


def pretrained_file(tmp_path):
    s = Spec(classifier="gap", representation=6)
    path = tmp_path / "pretrained.npz"
    np.savez(path, **official_arrays(s, np.random.default_rng(0)))
    return path


def run(tmp_path, *flags, out="ft"):
    return train(build_parser().parse_args([*COMMON, "--out", str(tmp_path / out), *flags]))


def test_fine_tuning_to_new_classes_and_a_new_resolution(tmp_path):
    path = pretrained_file(tmp_path)
    summary = run(tmp_path, "--init", str(path), "--image-size", "16", "--epochs", "2")
    ck = load_checkpoint(tmp_path / "ft" / "checkpoint.npz")
    c = ck.cfg
    assert (c.image_size, c.num_classes, c.pre_logits, c.classifier, c.gelu, c.dim) == (16, 6, None, "gap", "tanh", 8)
    assert ck.state["options"]["optimizer"] == "sgd" and ck.state["options"]["lr"] == 0.01
    assert ck.state["options"]["weight_decay"] == 0.0 and ck.state["options"]["momentum"] == 0.9
    assert ck.state["options"]["label_smoothing"] == 0.0 and ck.state["options"]["clip_norm"] == 1.0
    assert ck.state["mean"] == [0.5, 0.5, 0.5] and ck.state["std"] == [0.5, 0.5, 0.5]  # the file's, not the data's
    assert {k.split("/")[0] for k in ck.opt_state if k != "step"} == {"momentum"}
    assert summary["steps"] == 8 and np.isfinite(summary["test_loss"])
    with np.load(path) as z:  # the body moved away from the pretrained weights, the head away from zero
        start = z["Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel"]
    assert not np.allclose(ck.params["blocks.0.mlp.fc1.weight"], start)
    assert np.abs(ck.params["head.weight"]).max() > 0


def test_an_interrupted_fine_tuning_run_resumes_with_its_own_model(tmp_path):
    path = pretrained_file(tmp_path)
    run(tmp_path, "--init", str(path), "--image-size", "16", "--epochs", "2", "--max-steps", "2")
    path.unlink()  # the run's checkpoint holds everything a resume needs
    summary = run(tmp_path, "--init", str(path), "--image-size", "16", "--epochs", "2", "--resume")
    assert summary["steps"] == 8 and load_checkpoint(tmp_path / "ft" / "checkpoint.npz").cfg.num_classes == 6


def test_init_refuses_to_change_the_files_shape(tmp_path):
    with pytest.raises(ValueError, match="--init takes the model's shape from .*--dim cannot change it"):
        run(tmp_path, "--init", str(pretrained_file(tmp_path)), "--dim", "16")
    with pytest.raises(ValueError, match="--image-size 10 must be a multiple of .*patch size 4"):
        run(tmp_path, "--init", str(pretrained_file(tmp_path)), "--image-size", "10")


def test_adamw_remains_available_for_fine_tuning(tmp_path):
    run(tmp_path, "--init", str(pretrained_file(tmp_path)), "--optimizer", "adamw", "--epochs", "1")
    ck = load_checkpoint(tmp_path / "ft" / "checkpoint.npz")
    assert ck.state["options"]["lr"] == 2e-3 and "m/head.weight" in ck.opt_state


def test_the_next_run_removes_temporary_files_a_killed_run_left(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    stale = out / "checkpoint.npz.k3j9x1.tmp"  # the name savez_atomic gives its temporary file
    stale.write_bytes(b"half a checkpoint")
    other = out / "notes.tmp"
    other.write_text("not ours")
    savez_atomic(out / "checkpoint.npz", x=np.zeros(1))  # a finished write leaves no temporary file
    umask = os.umask(0)
    os.umask(umask)
    assert (out / "checkpoint.npz").stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's owner-only 0600
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.npz", "checkpoint.npz.k3j9x1.tmp", "notes.tmp"]
    (out / "checkpoint.npz").unlink()
    train(build_parser().parse_args([*COMMON, "--preset", "testing", "--out", str(out), "--epochs", "1"]))
    assert not stale.exists() and other.exists()


# -- SGD with momentum --------------------------------------------------------------------------------


def test_sgd_with_momentum_follows_its_definition_and_returns_new_arrays():
    """Three steps against the recurrence written out: buf = mu buf + g (+ wd p), p = p - lr buf."""
    from tinyvit.backend import get_backend

    ops = get_backend("numpy")
    rng = np.random.default_rng(0)
    params = {"w": rng.normal(size=(3, 2)), "b.bias": rng.normal(size=2)}
    state = sgd_init(ops, params)
    ref_p = {k: v.copy() for k, v in params.items()}
    ref_buf = {k: np.zeros_like(v) for k, v in params.items()}
    for step, lr in enumerate([0.1, 0.05, 0.02], start=1):
        grads = {k: rng.normal(size=v.shape) for k, v in params.items()}
        before = {k: v.copy() for k, v in params.items()}
        new, state = sgd_apply(ops, params, grads, state, lr, momentum=0.9, weight_decay=0.01)
        for k, old in params.items():
            np.testing.assert_array_equal(old, before[k])  # inputs untouched
            g = grads[k] + (0.01 * ref_p[k] if k == "w" else 0.0)  # no decay on biases
            ref_buf[k] = 0.9 * ref_buf[k] + g
            ref_p[k] = ref_p[k] - lr * ref_buf[k]
            np.testing.assert_allclose(new[k], ref_p[k], rtol=1e-14)
            np.testing.assert_allclose(state.momentum[k], ref_buf[k], rtol=1e-14)
        params = new
        assert isinstance(state, SGDState) and state.step == step


@pytest.mark.parametrize("backend", ["numba", "cuda"])
def test_sgd_steps_agree_across_backends(backend, request):
    """SGD is made of each backend's `add` and `scale`: two steps on small arrays, float64, as numpy's."""
    from tinyvit.backend import get_backend

    if backend == "cuda":
        request.getfixturevalue("fast_simulator_barriers")
    rng = np.random.default_rng(1)
    params = {"w": rng.normal(size=(4, 3)), "b.bias": rng.normal(size=3)}
    grads = [{k: rng.normal(size=v.shape) for k, v in params.items()} for _ in range(2)]
    results = {}
    for name in ("numpy", backend):
        ops = get_backend(name)
        p = {k: ops.asarray(v, np.float64) for k, v in params.items()}
        state = sgd_init(ops, p)
        for g in grads:
            p, state = sgd_apply(ops, p, {k: ops.asarray(v, np.float64) for k, v in g.items()}, state, 0.1, 0.9, 0.01)
        results[name] = {k: ops.to_numpy(v) for k, v in {**p, **{"buf/" + k: b for k, b in state.momentum.items()}}.items()}
    for k, want in results["numpy"].items():
        np.testing.assert_allclose(results[backend][k], want, rtol=1e-13, atol=1e-15, err_msg=k)


def test_sgd_drives_a_model_and_keeps_its_state_in_checkpoints():
    cfg = get_preset("testing")
    rng = np.random.default_rng(2)
    images, labels = rng.normal(size=(2, 8, 8, 3)), rng.integers(0, 3, 2)
    model = ViT(cfg, seed=3, dtype=np.float64)
    opt = SGD(model, lr=0.1, momentum=0.9, clip_norm=1.0)
    losses = []
    for _ in range(5):
        loss, grads = model.loss_and_grads(images, labels)
        losses.append(float(loss))
        opt.step(grads)
    assert losses[-1] < losses[0]
    again = SGD(model, lr=0.1)
    again.load_state_dict(opt.state_dict())
    assert again.step_count == 5
    for k, buf in opt.state.momentum.items():
        np.testing.assert_array_equal(again.state.momentum[k], buf)
    with pytest.raises(ValueError, match="no momentum/"):
        again.load_state_dict({"step": 1})

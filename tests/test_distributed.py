"""Scale-out with JAX on simulated devices: the sharded step is the single-device step.

conftest.py gives JAX 8 CPU devices (--xla_force_host_platform_device_count=8).
- In one process: a step sharded over 8 devices (batch split, parameters replicated,
  or with shard_params each device holding 1/8 of a parameter) equals the step on one
  device, on the same global batch, in float64.
- Two processes on this machine, joined through jax.distributed with a localhost
  coordinator, each with 4 devices and feeding half of every batch, end with the
  parameters of one process (the trainer, as a user runs it).
- A checkpoint written with --backend jax resumes with --backend numba, and the
  other way round, and ends where an unbroken run ends.
Float64 runs agree to ADAM_TOL, relative to each parameter's scale: the devices sum in
another order, and Adam turns the rounding noise of the key bias's gradient (zero in
exact arithmetic) into steps of up to lr * noise / eps ~ 1e-11 (test_conformance.py);
every other parameter agrees to ~1e-13.
"""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from backends import batch, error

jax = pytest.importorskip("jax", reason="the jax backend needs `pip install -e '.[jax]'`")

from tinyvit import ViT, get_preset
from tinyvit.checkpoint import load_checkpoint
from tinyvit.errors import UsageError
from tinyvit.optim import AdamWHyper

CFG = get_preset("testing").replace(image_size=16)
ADAM_TOL = 1e-6
TRAIN = ["--data", "shapes", "--preset", "testing", "--image-size", "16", "--batch-size", "32", "--seed", "0",
         "--dtype", "float64", "--no-progress"]  # fmt: skip


def _steps(n_devices, shard_params=False, steps=3):
    from tinyvit.distributed import JaxStep, data_mesh

    model = ViT(CFG, seed=0, dtype=np.float64, backend="jax")
    step = JaxStep(model, data_mesh(n_devices), AdamWHyper(), clip_norm=1.0, label_smoothing=0.1,
                   shard_params=shard_params)  # fmt: skip
    results = []
    for s in range(steps):
        images, labels = batch(CFG, seed=s, size=16)
        results.append(step(images, labels, 1e-2))
    return step, results


@pytest.fixture(scope="module")
def one_device():
    step, results = _steps(1)
    return step.host_params(), [float(r.loss) for r in results]


@pytest.mark.skipif(len(jax.devices()) < 8, reason="needs 8 JAX devices (XLA_FLAGS set in conftest.py)")
@pytest.mark.parametrize("shard_params", [False, True])
def test_a_step_sharded_over_8_devices_equals_the_step_on_one(one_device, shard_params):
    want_params, want_losses = one_device
    step, results = _steps(8, shard_params)
    assert np.allclose([float(r.loss) for r in results], want_losses, rtol=1e-12, atol=0)
    got = step.host_params()
    bad = {k: f"{error(got[k], w, np.float64):.1e}" for k, w in want_params.items() if error(got[k], w, np.float64) > ADAM_TOL}
    assert not bad, f"parameters after 3 sharded steps differ: {bad}"
    qkv = step.model.params["blocks.0.attn.qkv.weight"]  # (8, 24)
    shards = {s.data.shape for s in qkv.addressable_shards}
    assert len(qkv.addressable_shards) == 8
    assert shards == ({(8, 3)} if shard_params else {(8, 24)}), f"shard shapes {shards}"
    moment = step.state.m["blocks.0.attn.qkv.weight"]
    assert {s.data.shape for s in moment.addressable_shards} == shards, "AdamW moments are laid out like their parameter"


@pytest.mark.skipif(len(jax.devices()) < 8, reason="needs 8 JAX devices (XLA_FLAGS set in conftest.py)")
def test_a_global_batch_that_does_not_split_over_the_devices_is_a_clear_error():
    from tinyvit.distributed import JaxStep, data_mesh

    step = JaxStep(ViT(CFG, backend="jax"), data_mesh(8), AdamWHyper(), 1.0, 0.0)
    images, labels = batch(CFG, size=12)
    with pytest.raises(UsageError, match="12 images.*8 devices"):
        step(images, labels, 1e-3)
    with pytest.raises(UsageError, match="--devices must be in"):
        data_mesh(9)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _train(args, devices=8, timeout=300, env_extra=None):
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", **(env_extra or {})}
    return subprocess.Popen([sys.executable, "-m", "tinyvit.train", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip


def _finish(proc, timeout=300):
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return out


def _params(out_dir):
    return load_checkpoint(out_dir / "checkpoint.npz").params


def _assert_same(got, want, what):
    bad = {k: f"{error(got[k], w, np.float64):.1e}" for k, w in want.items() if error(got[k], w, np.float64) > ADAM_TOL}
    assert not bad, f"{what}: parameters differ: {bad}"


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "run"
    _finish(_train([*TRAIN, "--backend", "jax", "--max-steps", "6", "--out", str(out)]))
    return out


def test_two_processes_through_jax_distributed_give_the_parameters_of_one(one_process_run, tmp_path):
    """2 processes x 4 devices, localhost coordinator, each loading half of every batch."""
    out, port = tmp_path / "run", _free_port()
    procs = [_train([*TRAIN, "--backend", "jax", "--max-steps", "6", "--out", str(out), "--coordinator",
                     f"localhost:{port}", "--num-processes", "2", "--process-id", str(i)], devices=4)
             for i in range(2)]  # fmt: skip
    logs = [_finish(p) for p in procs]
    assert "8 devices in 2 processes" in logs[0], logs[0]
    assert "tinyvit:" not in logs[1] and "epoch" not in logs[1], "only process 0 writes progress"
    _assert_same(_params(out), _params(one_process_run), "2 processes against 1")


@pytest.mark.parametrize("first,then", [("jax", "numba"), ("numba", "jax")])
def test_a_checkpoint_moves_between_the_jax_and_numba_backends(one_process_run, tmp_path, first, then):
    """3 steps on one backend, --resume for 3 more on the other: the parameters of 6 unbroken jax steps."""
    out = tmp_path / "run"
    _finish(_train([*TRAIN, "--backend", first, "--max-steps", "3", "--out", str(out)]))
    _finish(_train([*TRAIN, "--backend", then, "--max-steps", "6", "--out", str(out), "--resume"]))
    ck = load_checkpoint(out / "checkpoint.npz")
    assert ck.state["step"] == 6
    _assert_same(ck.params, _params(one_process_run), f"{first} then {then}")

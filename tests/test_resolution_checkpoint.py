"""Changing resolution (position-embedding interpolation) and checkpoint files."""

import json

import numpy as np
import pytest

from tinyvit import ViT, get_preset
from tinyvit.checkpoint import load_checkpoint, save_checkpoint
from tinyvit.resolution import params_at_resolution, resize_pos_embed


def test_resizing_pos_embed_keeps_the_class_row_and_a_constant_grid_stays_constant():
    """Bilinear interpolation reproduces a constant (and keeps row 0 untouched)."""
    D = 3
    pe = np.concatenate([np.full((1, D), 7.0), np.tile([[1.0, 2.0, 3.0]], (16, 1))])  # grid 4x4
    new = resize_pos_embed(pe, 6)
    assert new.shape == (37, D)
    np.testing.assert_array_equal(new[0], pe[0])
    np.testing.assert_allclose(new[1:], np.tile([[1.0, 2.0, 3.0]], (36, 1)), atol=1e-12)


def test_resizing_pos_embed_to_the_same_grid_is_the_identity_and_a_linear_ramp_stays_linear():
    g = np.arange(4.0)
    ramp = (g[:, None] + 0 * g[None, :]).reshape(16, 1)  # value = row index
    pe = np.concatenate([np.zeros((1, 1)), ramp])
    np.testing.assert_array_equal(resize_pos_embed(pe, 4), pe)
    rows = resize_pos_embed(pe, 7)[1:].reshape(7, 7)
    assert np.allclose(rows[:, 0], rows[:, -1]) and np.all(np.diff(rows[:, 0]) > 0)


def test_a_model_moved_to_a_new_resolution_accepts_images_of_that_size():
    cfg = get_preset("testing")
    model = ViT(cfg, dtype=np.float64)
    new_cfg, params = params_at_resolution(model.numpy_params(), cfg, 12)
    big = ViT(new_cfg, dtype=np.float64, params=params)
    assert big.params["pos_embed"].shape == (10, cfg.dim)
    assert big.forward(np.zeros((2, 12, 12, 3))).shape == (2, cfg.num_classes)


def test_checkpoint_round_trip_restores_parameters_config_and_state(tmp_path):
    cfg = get_preset("testing")
    model = ViT(cfg, seed=3)
    path = save_checkpoint(tmp_path / "c.npz", model.numpy_params(), cfg, {"epoch": 2, "step": 10}, {"step": np.int64(10)})
    ck = load_checkpoint(path)
    assert ck.cfg == cfg and ck.state == {"epoch": 2, "step": 10} and int(ck.opt_state["step"]) == 10
    for k, v in model.numpy_params().items():
        np.testing.assert_array_equal(ck.params[k], v)
    assert not list(tmp_path.glob("*.tmp")), "no temporary file is left behind"


def test_a_failed_checkpoint_write_keeps_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    """A write that dies after the data went out (here: fsync fails) leaves the old file and no temporary."""
    cfg = get_preset("testing")
    path = save_checkpoint(tmp_path / "c.npz", {"w": np.ones(3)}, cfg, {"epoch": 1})

    def failing_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr("tinyvit.checkpoint.os.fsync", failing_fsync)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"w": np.zeros(3)}, cfg, {"epoch": 2})
    assert load_checkpoint(path).state == {"epoch": 1}
    assert not list(tmp_path.glob("*.tmp"))


def test_loading_something_that_is_not_a_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="not a readable .npz"):
        load_checkpoint(tmp_path / "junk.npz")
    np.savez(tmp_path / "other.npz", a=np.ones(2))
    with pytest.raises(ValueError, match="not a tinyvit checkpoint"):
        load_checkpoint(tmp_path / "other.npz")
    np.savez(tmp_path / "pickled.npz", config=np.array([{"a": 1}], dtype=object), state=np.array(json.dumps({})))
    with pytest.raises(ValueError):
        load_checkpoint(tmp_path / "pickled.npz")  # object arrays need pickle, which is refused

"""The learned 2-D relative position bias (ViTConfig.rel_pos_bias, tinyvit/layers/rel_pos.py).

- Both new ops of the specification against finite differences in float64: the table's
  gather into a (H, N, N) bias and attention with a bias added to its scores.
- The gather against its definition, entry by entry: the clipped row and column offset
  from token i to token j, nothing for the class token.
- Whole models with the bias: gradients along random directions (float64), numba, jax and
  cuda (under the simulator without a GPU) against numpy; the same table at every resolution;
  checkpoints; the trainer's flag.
"""

import numpy as np
import pytest
from backends import batch, compare_models, perturbed_params
from gradcheck import (
    STEP,
    TOLERANCE,
    check_layer,
    check_model_directions,
)

from tinyvit import ViT, layers
from tinyvit.checkpoint import load_checkpoint
from tinyvit.config import PRESETS
from tinyvit.model import count_params, param_shapes
from tinyvit.pretrained import save_official
from tinyvit.resolution import params_at_resolution
from tinyvit.train import build_parser, train

TESTING = PRESETS["testing"]  # 8 px, patch 4 (a 2x2 grid), D 8, 2 blocks, 2 heads
CFG = TESTING.replace(rel_pos_bias=1)


def test_rel_pos_bias_gradient():
    table = np.random.default_rng(0).normal(size=(2, 5, 5))
    check_layer(lambda t: layers.rel_pos_bias_forward(t, 3, True), layers.rel_pos_bias_backward, [table],
                TOLERANCE["rel_pos_bias"], h=STEP["rel_pos_bias"])  # fmt: skip


def test_attention_bias_gradient():
    rng = np.random.default_rng(1)
    qkv, bias = rng.normal(size=(2, 5, 24)), rng.normal(size=(2, 5, 5))
    check_layer(lambda x, b: layers.attention_bias_forward(x, b, 2), layers.attention_bias_backward, [qkv, bias],
                TOLERANCE["attention_bias"], h=STEP["attention_bias"])  # fmt: skip


def test_attention_bias_is_attention_with_the_bias_added_to_the_scores():
    rng = np.random.default_rng(2)
    qkv, bias = rng.normal(size=(3, 5, 24)), rng.normal(size=(2, 5, 5))
    plain, _ = layers.attention_forward(qkv, 2)
    assert np.allclose(layers.attention_bias_forward(qkv, np.zeros((2, 5, 5)), 2)[0], plain, atol=1e-15)
    q, k, v = (qkv[..., i * 8 : (i + 1) * 8].reshape(3, 5, 2, 4).transpose(0, 2, 1, 3) for i in range(3))
    scores = np.einsum("bhid,bhjd->bhij", q, k) / 2.0 + bias
    probs = np.exp(scores) / np.exp(scores).sum(-1, keepdims=True)
    want = np.einsum("bhij,bhjd->bihd", probs, v).reshape(3, 5, 8)
    np.testing.assert_allclose(layers.attention_bias_forward(qkv, bias, 2)[0], want, rtol=1e-12)


@pytest.mark.parametrize("class_token", [True, False])
def test_the_bias_of_each_pair_is_the_table_entry_of_its_clipped_offset(class_token):
    grid, K, H = 4, 1, 3
    table = np.random.default_rng(3).normal(size=(H, 2 * K + 1, 2 * K + 1))
    bias, _ = layers.rel_pos_bias_forward(table, grid, class_token)
    c = int(class_token)
    assert bias.shape == (H, c + grid * grid, c + grid * grid)
    for i in range(grid * grid):
        for j in range(grid * grid):
            dr = int(np.clip(j // grid - i // grid, -K, K))
            dc = int(np.clip(j % grid - i % grid, -K, K))
            assert np.array_equal(bias[:, c + i, c + j], table[:, dr + K, dc + K]), (i, j)
    if class_token:
        assert not bias[:, 0].any() and not bias[:, :, 0].any()


def test_the_table_is_a_parameter_of_each_block_the_same_at_every_resolution():
    assert count_params(CFG) == count_params(TESTING) + CFG.depth * CFG.heads * 3 * 3
    assert param_shapes(CFG)["blocks.1.attn.rel_pos"] == (2, 3, 3)
    big = CFG.replace(image_size=16)
    params = perturbed_params(big)
    small, small_params = params_at_resolution(params, big, 8)
    assert all(np.array_equal(small_params[k], params[k]) for k in params if k.endswith("rel_pos"))
    for cfg, p in ((big, params), (small, small_params)):
        images, _ = batch(cfg)
        assert ViT(cfg, dtype=np.float64, params=p)(images).shape == (3, cfg.num_classes)
    with pytest.raises(ValueError, match="rel_pos_bias must be an integer >= 0"):
        TESTING.replace(rel_pos_bias=-1)


@pytest.mark.parametrize("cfg", [CFG, CFG.replace(classifier="gap", rel_pos_bias=2)], ids=["token", "gap"])
def test_model_gradients_match_finite_differences(cfg):
    model = ViT(cfg, dtype=np.float64, params=perturbed_params(cfg, scale=0.3))
    images, labels = batch(cfg)
    _, grads = model.loss_and_grads(images, labels, label_smoothing=0.1)
    assert np.abs(grads["blocks.0.attn.rel_pos"]).max() > 1e-6
    check_model_directions(model, images, labels, grads)


@pytest.mark.parametrize("backend", ["numba", "jax"])
def test_numba_and_jax_models_match_the_specification(backend):
    if backend == "jax":
        pytest.importorskip("jax", reason="the jax backend is optional: pip install -e '.[jax]'")
    compare_models(backend, CFG, np.float64)
    compare_models(backend, CFG.replace(classifier="gap"), np.float32)


@pytest.mark.usefixtures("small_cuda_blocks", "fast_simulator_barriers")  # tests/conftest.py
def test_cuda_model_matches_the_specification():
    compare_models("cuda", CFG, np.float64)
    compare_models("cuda", CFG.replace(classifier="gap", rel_pos_bias=2), np.float32)


def test_official_files_cannot_hold_the_bias(tmp_path):
    with pytest.raises(ValueError, match="official layout has no relative position bias"):
        save_official(ViT(CFG), tmp_path / "x.npz")


def test_the_trainer_flag_trains_and_checkpoints_the_tables(tmp_path):
    argv = ["--data", "shapes:64", "--preset", "testing", "--image-size", "16", "--batch-size", "16", "--backend",
            "numpy", "--threads", "1", "--no-progress", "--epochs", "2", "--progressive", "8:1", "--rel-pos-bias", "1",
            "--out", str(tmp_path / "run")]  # fmt: skip
    train(build_parser().parse_args(argv))
    ck = load_checkpoint(tmp_path / "run" / "checkpoint.npz")
    assert ck.cfg.rel_pos_bias == 1 and ck.params["blocks.0.attn.rel_pos"].shape == (2, 3, 3)
    assert np.abs(ck.params["blocks.0.attn.rel_pos"]).max() > 0  # trained away from its zero start

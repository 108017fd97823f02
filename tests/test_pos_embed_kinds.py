"""Position-embedding kinds (ViTConfig.pos_embed) and mimetic initialisation of attention.

- "sincos2d": the table against its formula written entry by entry; not a parameter.
- "none": a "gap" model without a position embedding cannot tell where a patch is,
  so shuffling the patches of an image leaves its logits unchanged (and "sincos2d" does not).
- Whole models of each kind: gradients along random directions against finite differences
  (float64), every backend against the specification, checkpoints, official files and
  resolution changes.
- Mimetic initialisation: W_q W_k^T and W_v W_proj have the structure the paper prescribes.
"""

import numpy as np
import pytest
from backends import BACKENDS, batch, compare_models, perturbed_params
from gradcheck import check_model_directions

from tinyvit import ViT
from tinyvit.checkpoint import load_checkpoint, save_checkpoint
from tinyvit.config import PRESETS, ViTConfig
from tinyvit.model import MIMETIC, count_params, init_params, param_shapes
from tinyvit.posembed import fixed_table, sincos2d
from tinyvit.pretrained import load_pretrained, save_official
from tinyvit.resolution import params_at_resolution

TESTING = PRESETS["testing"]  # 8 px, patch 4 (a 2x2 grid), D 8, 2 blocks, 2 heads
KINDS = [TESTING.replace(pos_embed="sincos2d"), TESTING.replace(pos_embed="none"),
         TESTING.replace(pos_embed="sincos2d", classifier="gap"), TESTING.replace(pos_embed="none", classifier="gap")]  # fmt: skip
IDS = ["sincos2d-token", "none-token", "sincos2d-gap", "none-gap"]


def test_sincos2d_is_the_formula_entry_by_entry():
    grid, D = 3, 12
    table = sincos2d(grid, D)
    assert table.shape == (grid * grid, D)
    q = D // 4
    for r in range(grid):
        for c in range(grid):
            for i in range(q):
                w = 10_000.0 ** (-i / (q - 1))
                want = [np.sin(c * w), np.cos(c * w), np.sin(r * w), np.cos(r * w)]
                assert np.allclose(table[r * grid + c, i::q], want, atol=1e-15), (r, c, i)
    assert len({tuple(row) for row in np.round(table, 12)}) == grid * grid  # every patch its own code


def test_fixed_tables_give_the_class_token_no_position():
    cfg = TESTING.replace(pos_embed="sincos2d")
    table = fixed_table(cfg)
    assert table.shape == (cfg.num_tokens, cfg.dim) and not table[0].any()
    assert np.array_equal(table[1:], sincos2d(cfg.grid_size, cfg.dim))
    assert not fixed_table(TESTING.replace(pos_embed="none")).any()
    with pytest.raises(ValueError, match="learned position embedding is the parameter"):
        fixed_table(TESTING)


@pytest.mark.parametrize(
    "changes,message",
    [({"pos_embed": "rope"}, "pos_embed must be one of"),
     ({"pos_embed": "sincos2d", "dim": 6, "heads": 2}, "needs dim divisible by 4")],
)  # fmt: skip
def test_bad_pos_embed_options_are_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        TESTING.replace(**changes)


@pytest.mark.parametrize("cfg", KINDS, ids=IDS)
def test_fixed_kinds_have_no_pos_embed_parameter_and_survive_a_config_round_trip(cfg):
    assert "pos_embed" not in param_shapes(cfg)
    learned = cfg.replace(pos_embed="learned")
    assert count_params(cfg) == count_params(learned) - cfg.num_tokens * cfg.dim
    assert ViTConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("cfg", KINDS, ids=IDS)
def test_model_gradients_match_finite_differences(cfg):
    model = ViT(cfg, dtype=np.float64, params=perturbed_params(cfg, scale=0.1))
    images, labels = batch(cfg)
    _, grads = model.loss_and_grads(images, labels, label_smoothing=0.1)
    assert set(grads) == set(param_shapes(cfg))
    check_model_directions(model, images, labels, grads)


def _shuffled_patches(images, patch, perm):
    """The images with their patches moved: patch j of the result is patch perm[j]."""
    B, S, _, C = images.shape
    g = S // patch
    tiles = images.reshape(B, g, patch, g, patch, C).transpose(0, 1, 3, 2, 4, 5).reshape(B, g * g, patch, patch, C)
    tiles = tiles[:, perm].reshape(B, g, g, patch, patch, C).transpose(0, 1, 3, 2, 4, 5)
    return tiles.reshape(B, S, S, C)


def test_without_a_position_embedding_the_patch_order_does_not_matter():
    images, _ = batch(TESTING)
    perm = np.array([3, 0, 2, 1])
    moved = _shuffled_patches(images, TESTING.patch_size, perm)
    assert not np.allclose(moved, images)
    for kind, same in (("none", True), ("sincos2d", False), ("learned", False)):
        cfg = TESTING.replace(pos_embed=kind, classifier="gap")
        model = ViT(cfg, dtype=np.float64, params=perturbed_params(cfg, scale=0.5))
        assert np.allclose(model(moved), model(images), atol=1e-12) == same, kind


@pytest.mark.usefixtures("fast_simulator_barriers", "small_cuda_blocks")
@pytest.mark.parametrize("backend", [b for b in BACKENDS if b.values[0] != "numpy"])
@pytest.mark.parametrize("cfg", [KINDS[0], KINDS[3]], ids=[IDS[0], IDS[3]])
def test_every_backend_matches_the_specification(backend, cfg):
    """float64 loss, logits and gradients against numpy (cuda: one block, two images, as the simulator is slow)."""
    if backend == "cuda":
        compare_models("cuda", cfg.replace(depth=1), np.float64, size=2)
    else:
        compare_models(backend, cfg, np.float64)


@pytest.mark.parametrize("kind", ["sincos2d", "none"])
def test_checkpoints_and_official_files_keep_the_kind(tmp_path, kind):
    cfg = TESTING.replace(pos_embed=kind, gelu="tanh")  # official files are read as tanh-GELU models
    model = ViT(cfg, dtype=np.float64, params=perturbed_params(cfg))
    images, _ = batch(cfg)
    save_checkpoint(tmp_path / "ck.npz", model.numpy_params(), cfg, {"note": 1})
    ck = load_checkpoint(tmp_path / "ck.npz")
    assert ck.cfg == cfg and set(ck.params) == set(param_shapes(cfg))
    # the official layout has no fixed kinds: the table is written as a learned one, same logits
    save_official(model, tmp_path / "official.npz")
    loaded = load_pretrained(tmp_path / "official.npz", backend="numpy", dtype=np.float64)
    assert loaded.cfg.pos_embed == "learned"
    assert np.allclose(loaded(images), model(images), atol=1e-12)


def test_a_fixed_table_is_rebuilt_for_a_new_resolution():
    cfg = TESTING.replace(pos_embed="sincos2d", image_size=16)
    params = init_params(cfg, dtype=np.float64)
    small, small_params = params_at_resolution(params, cfg, 8)
    assert small.image_size == 8 and set(small_params) == set(params)
    assert np.array_equal(fixed_table(small)[1:], sincos2d(2, cfg.dim))
    images, _ = batch(small)
    assert ViT(small, dtype=np.float64, params=small_params)(images).shape == (3, cfg.num_classes)


# -- mimetic initialisation ---------------------------------------------------------------------


def _products(params, cfg, i):
    D = cfg.dim
    qkv = params[f"blocks.{i}.attn.qkv.weight"].astype(np.float64)
    wq, wk, wv = qkv[:, :D], qkv[:, D : 2 * D], qkv[:, 2 * D :]
    return wq @ wk.T, wv @ params[f"blocks.{i}.attn.proj.weight"].astype(np.float64)


def _identity_part(m):
    """(the mean of the diagonal, the root mean square off the diagonal)."""
    off = m[~np.eye(len(m), dtype=bool)]
    return float(np.mean(np.diag(m))), float(np.sqrt(np.mean(off**2)))


def test_mimetic_products_are_a_multiple_of_the_identity_plus_small_noise():
    """W_q W_k^T = 0.7 Z + 0.7 I, W_v W_proj = 0.4 Z - 0.4 I with Z ~ N(0, 1/D): at D = 64 the
    diagonal's mean is beta within 4 of its standard deviations (alpha / D), and the entries off
    the diagonal have the root mean square alpha / sqrt(D) within 10%."""
    cfg = TESTING.replace(dim=64, heads=4, depth=3)
    params = init_params(cfg, seed=3, dtype=np.float64, attention="mimetic")
    D, m = cfg.dim, MIMETIC
    for i in range(cfg.depth):
        qk, vo = _products(params, cfg, i)
        for got, alpha, beta in ((qk, m["alpha_qk"], m["beta_qk"]), (vo, m["alpha_vo"], -m["beta_vo"])):
            diag, off = _identity_part(got)
            assert abs(diag - beta) < 4 * alpha / D, (i, diag, beta)
            assert abs(off - alpha / np.sqrt(D)) < 0.1 * alpha / np.sqrt(D), (i, off)
        # each head's share of W_q W_k^T favours a token's own key: a positive trace
        Dh = cfg.head_dim
        qkv = params[f"blocks.{i}.attn.qkv.weight"]
        for h in range(cfg.heads):
            cols = slice(h * Dh, (h + 1) * Dh)
            assert np.trace(qkv[:, :D][:, cols] @ qkv[:, D : 2 * D][:, cols].T) > 0, (i, h)
    # the default (Xavier) draws have no such structure
    diag, _ = _identity_part(_products(init_params(cfg, seed=3, dtype=np.float64), cfg, 0)[0])
    assert abs(diag) < 0.1


def test_mimetic_changes_only_the_attention_weights():
    xavier = init_params(TESTING, seed=2)
    mimetic = init_params(TESTING, seed=2, attention="mimetic")
    changed = {k for k in xavier if not np.array_equal(xavier[k], mimetic[k])}
    assert changed == {f"blocks.{i}.attn.{w}.weight" for i in range(TESTING.depth) for w in ("qkv", "proj")}
    assert all(mimetic[k].dtype == np.float32 for k in mimetic)
    with pytest.raises(ValueError, match="attention init must be one of"):
        init_params(TESTING, attention="orthogonal")

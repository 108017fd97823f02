"""The analysis behind the lessons' pictures, on cases whose answer is known by hand."""

import numpy as np
import pytest

from tinyvit import ViT, get_preset
from tinyvit.analysis import (
    attention_rollout,
    class_attention_maps,
    filter_components,
    mean_attention_distance,
    patch_centres,
    pos_embed_similarity,
)


def attention_with_patch_rows(patch_rows, batch=2, heads=3):
    """Probs (B, H, N, N) whose patch-to-patch block is `patch_rows` and whose class-token row is uniform."""
    n = patch_rows.shape[0] + 1
    probs = np.full((batch, heads, n, n), 1.0 / n)
    probs[:, :, 1:, 0] = 0.0
    probs[:, :, 1:, 1:] = patch_rows
    return probs


def test_a_head_that_attends_only_to_itself_has_mean_distance_zero():
    probs = attention_with_patch_rows(np.eye(4))
    np.testing.assert_allclose(
        mean_attention_distance([probs, probs], grid=2, patch_size=4), 0.0
    )


def test_uniform_attention_over_a_2x2_grid_has_the_mean_pairwise_distance():
    """Patch centres 4 px apart: from each patch, distances 0, 4, 4 and 4*sqrt(2), each with weight 1/4."""
    probs = attention_with_patch_rows(np.full((4, 4), 0.25))
    expected = (0 + 4 + 4 + 4 * np.sqrt(2)) / 4
    np.testing.assert_allclose(
        mean_attention_distance([probs], grid=2, patch_size=4), expected
    )


def test_patch_centres_run_row_major_like_patchify():
    np.testing.assert_array_equal(patch_centres(2, 4), [[2, 2], [2, 6], [6, 2], [6, 6]])


def test_class_attention_maps_read_the_class_token_row_onto_the_grid():
    probs = np.zeros((1, 1, 5, 5))
    probs[0, 0, 0, 1:] = [0.1, 0.2, 0.3, 0.4]
    maps = class_attention_maps(probs, grid=2)
    np.testing.assert_array_equal(maps[0, 0], [[0.1, 0.2], [0.3, 0.4]])
    with pytest.raises(ValueError, match="expected 10"):
        class_attention_maps(probs, grid=3)


def test_pos_embed_similarity_is_one_on_the_diagonal_and_symmetric():
    pe = np.random.default_rng(0).normal(size=(10, 8))
    sim = pos_embed_similarity(pe)
    assert sim.shape == (3, 3, 3, 3)
    flat = sim.reshape(9, 9)
    np.testing.assert_allclose(np.diag(flat), 1.0)
    np.testing.assert_allclose(flat, flat.T)


def test_the_analysis_runs_on_a_model_s_real_attention_without_changing_it():
    cfg = get_preset("testing")
    model = ViT(cfg, dtype=np.float64)
    before = {k: v.copy() for k, v in model.params.items()}
    _, probs = model.forward(
        np.random.default_rng(1).normal(size=(2, 8, 8, 3)), return_attention=True
    )
    mad = mean_attention_distance(probs, cfg.grid_size, cfg.patch_size)
    farthest = (cfg.grid_size - 1) * cfg.patch_size * np.sqrt(2)  # corner to corner: 4*sqrt(2) px on a 2x2 grid
    assert mad.shape == (cfg.depth, cfg.heads)
    # softmax gives every other patch some weight, so no head's distance is 0; none exceeds the farthest pair
    assert np.all(mad > 0) and np.all(mad <= farthest), mad
    assert class_attention_maps(probs[-1], cfg.grid_size).shape == (2, cfg.heads, 2, 2)
    assert all(np.array_equal(model.params[k], before[k]) for k in before)


def copy_attention(sources, heads=2):
    """Probs (1, H, N, N) in which token i attends only to token sources[i]."""
    n = len(sources)
    probs = np.zeros((1, heads, n, n))
    probs[0, :, np.arange(n), sources] = 1.0
    return probs


def test_rollout_chains_the_blocks_in_order():
    """Without the residual term: block 1 sends every token to token 2; block 2 sends token 0 to token 1.
    So token 0's output came from token 1's, which came from token 2: rollout row 0 is e2 (the other
    order, A1 A2, would give e0)."""
    first, second = copy_attention([2, 2, 2]), copy_attention([1, 1, 0])
    rollout = attention_rollout([first, second], residual=0.0)
    np.testing.assert_array_equal(rollout[0, 0], [0.0, 0.0, 1.0])


def test_rollout_counts_the_residual_and_keeps_rows_summing_to_one():
    probs = np.random.default_rng(0).dirichlet(
        np.ones(5), size=(2, 3, 5)
    )  # (B, H, N, N), rows sum to 1
    one_block = attention_rollout([probs])
    np.testing.assert_allclose(one_block, 0.5 * np.eye(5) + 0.5 * probs.mean(axis=1))
    np.testing.assert_allclose(
        attention_rollout([probs, probs, probs]).sum(axis=-1), 1.0
    )
    with pytest.raises(ValueError, match="at least one block"):
        attention_rollout([])


def test_filter_components_find_the_directions_the_filters_vary_along():
    """Filters a_i u + b_i v with orthonormal u, v and a spread 10x wider than b: the first component
    is +-u, the second +-v (up to the sampling of 400 filters), and they explain ~99% and ~1% of the variance."""
    rng = np.random.default_rng(0)
    P, C, D = 2, 3, 400
    u, v = np.linalg.qr(rng.normal(size=(P * P * C, 2)))[0].T
    weight = np.outer(u, rng.normal(0, 10, D)) + np.outer(
        v, rng.normal(0, 1, D)
    )  # (P*P*C, D)
    comps, explained = filter_components(weight, P, C, k=3)
    assert comps.shape == (3, P, P, C)
    first, second = comps[0].ravel(), comps[1].ravel()
    np.testing.assert_allclose(abs(first @ u) / np.linalg.norm(first), 1.0, atol=1e-3)
    np.testing.assert_allclose(abs(second @ v) / np.linalg.norm(second), 1.0, atol=1e-3)
    assert 0.97 < explained[0] < 1.0 and explained[1] < 0.03 and explained[2] < 1e-20
    with pytest.raises(ValueError, match=r"\(12, D\)"):
        filter_components(weight[:5], P, C)

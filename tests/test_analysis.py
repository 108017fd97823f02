"""The analysis behind the lessons' pictures, on cases whose answer is known by hand."""

import numpy as np
import pytest

from tinyvit import ViT, get_preset
from tinyvit.analysis import (
    class_attention_maps,
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
    np.testing.assert_allclose(mean_attention_distance([probs, probs], grid=2, patch_size=4), 0.0)


def test_uniform_attention_over_a_2x2_grid_has_the_mean_pairwise_distance():
    """Patch centres 4 px apart: from each patch, distances 0, 4, 4 and 4*sqrt(2), each with weight 1/4."""
    probs = attention_with_patch_rows(np.full((4, 4), 0.25))
    expected = (0 + 4 + 4 + 4 * np.sqrt(2)) / 4
    np.testing.assert_allclose(mean_attention_distance([probs], grid=2, patch_size=4), expected)


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
    _, probs = model.forward(np.random.default_rng(1).normal(size=(2, 8, 8, 3)), return_attention=True)
    mad = mean_attention_distance(probs, cfg.grid_size, cfg.patch_size)
    farthest = (cfg.grid_size - 1) * cfg.patch_size * np.sqrt(2)  # corner to corner: 4*sqrt(2) px on a 2x2 grid
    assert mad.shape == (cfg.depth, cfg.heads)
    # softmax gives every other patch some weight, so no head's distance is 0; none exceeds the farthest pair
    assert np.all(mad > 0) and np.all(mad <= farthest), mad
    assert class_attention_maps(probs[-1], cfg.grid_size).shape == (2, cfg.heads, 2, 2)
    assert all(np.array_equal(model.params[k], before[k]) for k in before)

"""The optimiser: AdamW's update rule, decay groups, the schedule and gradient clipping."""

import itertools
import math

import numpy as np
import pytest

from tinyvit import ViT, get_preset
from tinyvit.optim import (
    AdamW,
    AdamWStep,
    adamw_update,
    clip_by_global_norm,
    lr_at,
    no_decay,
)


def test_adamw_update_matches_the_formula_written_out_for_two_steps():
    """Two steps of adamw_update equal Loshchilov & Hutter's rule computed by hand, element by element."""
    rng = np.random.default_rng(0)
    p0 = rng.normal(size=5)
    g1, g2 = rng.normal(size=5), rng.normal(size=5)
    lr, b1, b2, eps, wd = 0.1, 0.9, 0.99, 1e-8, 0.01
    p, m, v = p0.copy(), np.zeros(5), np.zeros(5)
    p1, m1, v1 = adamw_update(p, g1, m, v, AdamWStep(lr, b1, b2, eps, wd, 1))
    assert np.array_equal(p, p0) and not m.any() and not v.any(), "adamw_update wrote into its inputs"
    p, m, v = adamw_update(p1, g2, m1, v1, AdamWStep(lr, b1, b2, eps, wd, 2))
    q, mm, vv = p0.copy(), np.zeros(5), np.zeros(5)
    for t, g in ((1, g1), (2, g2)):
        q = q * (1 - lr * wd)
        mm = b1 * mm + (1 - b1) * g
        vv = b2 * vv + (1 - b2) * g * g
        q = q - lr * (mm / (1 - b1**t)) / (np.sqrt(vv / (1 - b2**t)) + eps)
    np.testing.assert_allclose(p, q, rtol=1e-14)
    np.testing.assert_allclose(m, mm, rtol=1e-14)


def test_no_weight_decay_on_biases_norms_class_token_and_position_embedding():
    assert no_decay("blocks.0.attn.qkv.bias") and no_decay("blocks.3.norm1.weight") and no_decay("norm.weight")
    assert no_decay("cls_token") and no_decay("pos_embed") and no_decay("blocks.1.norm2.bias")
    assert not no_decay("blocks.0.attn.qkv.weight") and not no_decay("head.weight")
    assert not no_decay("patch_embed.weight") and not no_decay("blocks.2.mlp.fc1.weight")


def test_schedule_warms_up_linearly_then_follows_a_cosine_down_to_min_lr():
    assert lr_at(1, 1.0, 10, 110) == pytest.approx(0.1)
    assert lr_at(10, 1.0, 10, 110) == pytest.approx(1.0)
    assert lr_at(60, 1.0, 10, 110, min_lr=0.0) == pytest.approx(0.5)  # halfway through the cosine
    assert lr_at(110, 1.0, 10, 110, min_lr=0.01) == pytest.approx(0.01)
    lrs = [lr_at(s, 1.0, 10, 110) for s in range(10, 111)]
    assert all(a >= b for a, b in itertools.pairwise(lrs)), "the cosine part never increases"


def test_schedule_can_hold_the_peak_before_the_cosine():
    assert lr_at(5, 1.0, 10, 110, hold=60) == pytest.approx(0.5)  # the warmup is unchanged
    assert lr_at(11, 1.0, 10, 110, hold=60) == lr_at(60, 1.0, 10, 110, hold=60) == 1.0
    assert lr_at(85, 1.0, 10, 110, hold=60) == pytest.approx(0.5)  # halfway through the cosine over 60..110
    assert lr_at(110, 1.0, 10, 110, min_lr=0.01, hold=60) == pytest.approx(0.01)
    assert lr_at(70, 1.0, 10, 110, hold=5) == lr_at(70, 1.0, 10, 110)  # a hold inside the warmup: none


def test_clipping_scales_the_global_norm_down_to_the_limit_and_leaves_small_gradients_alone():
    model = ViT(get_preset("testing"), dtype=np.float64)
    opt = AdamW(model, clip_norm=1.0)
    rng = np.random.default_rng(1)
    grads = {k: rng.normal(size=p.shape) for k, p in model.params.items()}
    copies = {k: g.copy() for k, g in grads.items()}
    before = math.sqrt(sum((g**2).sum() for g in grads.values()))
    clipped, norm = clip_by_global_norm(opt.backend, grads, opt.clip_norm)
    assert float(norm) == pytest.approx(before)
    assert all(np.array_equal(grads[k], copies[k]) for k in grads), "clipping wrote into its input"
    after = math.sqrt(sum((g**2).sum() for g in clipped.values()))
    assert after == pytest.approx(1.0, rel=1e-5)
    small = {k: g * (0.5 / after) for k, g in clipped.items()}
    kept, _ = clip_by_global_norm(opt.backend, small, opt.clip_norm)
    assert all(np.array_equal(small[k], kept[k]) for k in small)


def test_a_non_finite_gradient_changes_no_parameter():
    model = ViT(get_preset("testing"), dtype=np.float64)
    before = {k: v.copy() for k, v in model.params.items()}
    opt = AdamW(model)
    grads = {k: np.zeros_like(p) for k, p in model.params.items()}
    grads["head.bias"][0] = np.nan
    with pytest.raises(FloatingPointError, match="no parameter was updated"):
        opt.step(grads)
    assert opt.step_count == 0
    assert all(np.array_equal(model.params[k], before[k]) for k in before)


def test_optimizer_state_round_trips_through_state_dict():
    model = ViT(get_preset("testing"), dtype=np.float32)
    opt = AdamW(model)
    rng = np.random.default_rng(2)
    opt.step({k: rng.normal(size=p.shape).astype(np.float32) for k, p in model.params.items()})
    state = opt.state_dict()
    other = AdamW(model)
    other.load_state_dict(state)
    assert other.step_count == 1
    for k in model.params:
        np.testing.assert_array_equal(other.state.m[k], opt.state.m[k])
        np.testing.assert_array_equal(other.state.v[k], opt.state.v[k])
    state["m/head.weight"] = np.zeros((1, 1))
    with pytest.raises(ValueError, match="m/head.weight has shape"):
        AdamW(model).load_state_dict(state)

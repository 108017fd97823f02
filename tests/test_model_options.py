"""The model options of the official checkpoints: GELU's tanh form, average pooling without a
class token ("gap"), and pre_logits (dense + tanh), in every backend.

- Each new layer of the specification against finite differences in float64 (tests/gradcheck.py).
- The whole model with all options on: gradients along random directions, float64.

The numba, CUDA (under the simulator without a GPU) and JAX versions of these ops, and the
whole model with every option on, are checked against the specification with every other op
in tests/test_conformance.py.
"""

import numpy as np
import pytest
from backends import batch, perturbed_params
from gradcheck import (
    STEP,
    TOLERANCE,
    check_layer,
    check_model_directions,
)

from tinyvit import layers
from tinyvit.config import PRESETS, ViTConfig
from tinyvit.model import ViT, count_params, param_shapes

# The new layers' tolerances and steps are in tests/gradcheck.py beside the others, measured over
# many random draws by benchmarks/gradcheck_report.py. gelu_tanh is as smooth as the erf form, so
# its bounds are gelu's and linear_gelu's; the mean and the table add are linear, so only the
# rounding of the outputs is left.
TOL = TOLERANCE

OPTIONS = PRESETS["testing"].replace(gelu="tanh", classifier="gap", pre_logits=5)


def rng_arrays(seed, *shapes):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=s) for s in shapes]


def test_gelu_tanh_gradient():
    (x,) = rng_arrays(0, (3, 4, 5))
    check_layer(layers.gelu_tanh_forward, layers.gelu_tanh_backward, [2.0 * x], TOL["gelu_tanh"])


def test_linear_gelu_tanh_gradient():
    x, w, b = rng_arrays(1, (2, 3, 4), (4, 6), (6,))
    check_layer(layers.linear_gelu_tanh_forward, layers.linear_gelu_tanh_backward, [x, w, b], TOL["linear_gelu_tanh"])


def test_tanh_gradient():
    (x,) = rng_arrays(2, (4, 6))
    check_layer(layers.tanh_forward, layers.tanh_backward, [x], TOL["tanh"])


def test_token_mean_gradient():
    (x,) = rng_arrays(3, (2, 5, 4))
    check_layer(layers.token_mean_forward, layers.token_mean_backward, [x], TOL["token_mean"], h=STEP["token_mean"])


def test_pos_embed_gradient():
    x, pe = rng_arrays(4, (3, 5, 4), (5, 4))
    check_layer(layers.pos_embed_forward, layers.pos_embed_backward, [x, pe], TOL["pos_embed"], h=STEP["pos_embed"])


def test_gelu_tanh_is_the_tanh_formula_and_close_to_the_erf_form():
    x = np.linspace(-6, 6, 241)
    out, _ = layers.gelu_tanh_forward(x)
    np.testing.assert_allclose(out, 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3))), rtol=1e-15)
    exact, _ = layers.gelu_forward(x)
    assert 1e-4 < np.abs(out - exact).max() < 1e-3  # a different function, not a rounding of the same one


def test_gap_pools_the_normalised_tokens_and_pre_logits_is_dense_then_tanh():
    """The head's input written out by hand for a gap + pre_logits model."""
    model = ViT(OPTIONS, seed=1, dtype=np.float64)
    rng = np.random.default_rng(1)
    model.load_params({k: v + 0.1 * rng.normal(size=v.shape) for k, v in model.numpy_params().items()})
    p = model.numpy_params()
    images = rng.normal(size=(2, 8, 8, 3))
    trunk = ViT(OPTIONS.replace(classifier="gap", pre_logits=None, num_classes=8), dtype=np.float64,
                params={**{k: v for k, v in p.items() if not k.startswith(("pre_logits", "head"))},
                        "head.weight": np.eye(8), "head.bias": np.zeros(8)})  # fmt: skip
    pooled = trunk.forward(images)  # (B, D): the mean of the normalised tokens
    want = np.tanh(pooled @ p["pre_logits.weight"] + p["pre_logits.bias"]) @ p["head.weight"] + p["head.bias"]
    np.testing.assert_allclose(model.forward(images), want, rtol=1e-12, atol=1e-12)


def test_options_change_the_parameters_as_the_official_models_have_them():
    shapes = param_shapes(OPTIONS)
    assert "cls_token" not in shapes and shapes["pos_embed"] == (4, 8)  # the 2x2 patches, no class row
    assert shapes["pre_logits.weight"] == (8, 5) and shapes["head.weight"] == (5, 3)
    base = PRESETS["testing"]
    assert count_params(OPTIONS) == count_params(base) - 8 - 8 + (8 * 5 + 5) + (5 - 8) * 3
    assert count_params(base.replace(gelu="tanh")) == count_params(base)


@pytest.mark.parametrize(
    "field,value,message",
    [("gelu", "relu", "gelu must be one of"), ("classifier", "cls", "classifier must be one of"),
     ("pre_logits", 0, "pre_logits must be None or a positive integer"),
     ("pre_logits", 2.5, "pre_logits must be None or a positive integer")],
)  # fmt: skip
def test_bad_options_are_refused(field, value, message):
    with pytest.raises(ValueError, match=message):
        PRESETS["testing"].replace(**{field: value})


def test_options_survive_a_config_round_trip():
    assert ViTConfig.from_dict(OPTIONS.to_dict()) == OPTIONS
    old = {k: v for k, v in PRESETS["testing"].to_dict().items() if k not in ("gelu", "classifier", "pre_logits")}
    assert ViTConfig.from_dict(old) == PRESETS["testing"]  # checkpoints from before the options


@pytest.mark.parametrize("cfg", [OPTIONS, PRESETS["testing"].replace(gelu="tanh", pre_logits=6)], ids=["gap", "token"])
def test_model_with_options_gradients_match_finite_differences(cfg):
    model = ViT(cfg, dtype=np.float64, params=perturbed_params(cfg, scale=0.1))
    images, labels = batch(cfg)
    _, grads = model.loss_and_grads(images, labels, label_smoothing=0.1)
    check_model_directions(model, images, labels, grads)

"""The model options of the official checkpoints: GELU's tanh form, average pooling without a
class token ("gap"), and pre_logits (dense + tanh), in every backend.

- Each new layer of the specification against finite differences in float64 (tests/gradcheck.py).
- The whole model with all options on: gradients along random directions, float64.
- The numba kernels and the CUDA kernels (under the simulator without a GPU, tiny shapes and
  small blocks) against the specification: float64 to 1e-12 (the order of sums is all that
  differs), float32 to 1e-5 of the largest value (a few float32 roundings).
- The numba and CUDA models with all options: loss, logits and every gradient against numpy.
"""

import numpy as np
import pytest
from gradcheck import STEP, TOLERANCE, check_layer, directional_errors

from tinyvit import layers
from tinyvit.backend import get_backend
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


def perturbed(cfg, seed=0):
    """Parameters away from init: the zero head would hide every other gradient."""
    rng = np.random.default_rng(seed)
    return {k: v + 0.1 * rng.normal(size=v.shape) for k, v in ViT(cfg, seed=seed, dtype=np.float64).numpy_params().items()}


def batch(cfg, seed=0, size=3):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(size, cfg.image_size, cfg.image_size, cfg.channels)), rng.integers(0, cfg.num_classes, size)


@pytest.mark.parametrize("cfg", [OPTIONS, PRESETS["testing"].replace(gelu="tanh", pre_logits=6)], ids=["gap", "token"])
def test_model_with_options_gradients_match_finite_differences(cfg):
    model = ViT(cfg, dtype=np.float64, params=perturbed(cfg))
    images, labels = batch(cfg)
    _, grads = model.loss_and_grads(images, labels, label_smoothing=0.1)
    params = {k: v for k, v in model.params.items()}  # numpy backend: live arrays the check perturbs

    def loss():
        model.params = params
        return float(model.loss_and_grads(images, labels, label_smoothing=0.1)[0])

    errors = directional_errors(loss, params, grads, h=STEP["model"], seed=3)
    worst = max(errors, key=errors.get)
    assert errors[worst] <= TOLERANCE["model"], f"{worst}: relative error {errors[worst]:.2e}"


# -- the compiled backends against the specification ------------------------------------------------

OPS = [  # (name, forward args as shapes, index of array args carrying gradients)
    ("linear_gelu_tanh", [(2, 3, 4), (4, 6), (6,)]),
    ("pos_embed", [(3, 5, 4), (5, 4)]),
    ("token_mean", [(3, 5, 4)]),
    ("tanh", [(4, 6)]),
]


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def compare_op(backend, name, shapes, dtype, tol, seed=0):
    spec, other = get_backend("numpy"), get_backend(backend)
    inputs = rng_arrays(seed, *shapes)
    want, cache = getattr(spec, name + "_forward")(*inputs)
    dout = np.random.default_rng(seed + 1).normal(size=want.shape)
    want_grads = getattr(spec, name + "_backward")(dout, cache)
    want_grads = want_grads if isinstance(want_grads, tuple) else (want_grads,)
    got, cache = getattr(other, name + "_forward")(*(other.asarray(a, dtype) for a in inputs))
    got_grads = getattr(other, name + "_backward")(other.asarray(dout, dtype), cache)
    got_grads = got_grads if isinstance(got_grads, tuple) else (got_grads,)
    assert rel(other.to_numpy(got), want) < tol, f"{backend} {name} forward"
    assert len(got_grads) == len(want_grads)
    for i, (g, w) in enumerate(zip(got_grads, want_grads)):
        g = other.to_numpy(g)
        assert g.shape == w.shape and g.dtype == np.dtype(dtype), f"{backend} {name} gradient {i}: {g.shape} {g.dtype}"
        assert rel(g, w) < tol, f"{backend} {name} gradient {i} differs by {rel(g, w):.2e}"


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 1e-5)])
@pytest.mark.parametrize("name,shapes", OPS, ids=[o[0] for o in OPS])
def test_numba_option_kernels_match_the_specification(name, shapes, dtype, tol):
    compare_op("numba", name, shapes, dtype, tol)


@pytest.fixture
def small_cuda_blocks(monkeypatch):
    from tinyvit.kernels import cuda_common, cuda_matmul, cuda_reduce
    from tinyvit.kernels.cuda_matmul import Blocking

    monkeypatch.setattr(cuda_common, "ELEMENT_THREADS", 16)  # several blocks even for these tiny arrays
    monkeypatch.setattr(cuda_common, "ROW_THREADS", 4)
    monkeypatch.setattr(cuda_reduce, "COLUMN_CHUNK_ROWS", 2)
    monkeypatch.setattr(cuda_matmul, "BLOCKING", Blocking(bm=8, bn=8, bk=4, tm=2, tn=2))
    monkeypatch.setattr(cuda_matmul, "BATCHED_BLOCKING", Blocking(bm=4, bn=4, bk=4, tm=2, tn=2))


@pytest.mark.usefixtures("fast_simulator_barriers", "small_cuda_blocks")
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 1e-5)])
@pytest.mark.parametrize("name,shapes", OPS, ids=[o[0] for o in OPS])
def test_cuda_option_kernels_match_the_specification(name, shapes, dtype, tol):
    compare_op("cuda", name, shapes, dtype, tol)


def compare_models(backend, cfg, dtype, tol, size=3):
    params = perturbed(cfg, seed=5)
    images, labels = batch(cfg, seed=5, size=size)
    want_loss, want_grads, want_logits = ViT(cfg, dtype=np.float64, params=params).loss_and_grads(
        images, labels, 0.1, return_logits=True)  # fmt: skip
    model = ViT(cfg, dtype=dtype, backend=backend, params=params)
    loss, grads, logits = model.loss_and_grads(images, labels, 0.1, return_logits=True)
    assert abs(float(loss) - float(want_loss)) <= tol * abs(float(want_loss))
    assert rel(logits, want_logits) < tol
    bad = {k: rel(model.backend.to_numpy(grads[k]), w) for k, w in want_grads.items()}
    assert max(bad.values()) < tol, {k: f"{v:.1e}" for k, v in bad.items() if v >= tol}


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-10), (np.float32, 1e-4)])
def test_numba_model_with_options_matches_numpy(dtype, tol):
    compare_models("numba", OPTIONS, dtype, tol)


@pytest.mark.usefixtures("fast_simulator_barriers", "small_cuda_blocks")
def test_cuda_model_with_options_matches_numpy():
    """float64, one block and two images under the simulator (slow: every thread is a Python thread);
    the float32 kernels are the same code, checked op by op above."""
    compare_models("cuda", OPTIONS.replace(depth=1), np.float64, 1e-10, size=2)


def test_jax_model_with_options_matches_numpy():
    pytest.importorskip("jax", reason="the jax backend is optional: pip install -e '.[jax]'")
    compare_models("jax", OPTIONS, np.float64, 1e-10)

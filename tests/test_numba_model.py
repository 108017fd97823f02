"""The whole ViT on the `numba` backend against the `numpy` specification, on the `testing` preset.

- float64: loss, logits and every parameter's gradient equal the numpy backend's to 1e-10
  (relative to each gradient's largest entry), and the gradient agrees with centred finite
  differences along random directions;
- float32: logits and gradients within FLOAT32_MODEL_TOL of the float64 reference (fed the same
  float32-rounded parameters and images). Each float32 op is good to ~1e-6 relative (its sums are
  short; the rational erf is within 6.5e-8) and the errors of ~30 ops in a row add up, not
  multiply: measured ~1e-7 for logits, ~3e-7 for the worst gradient; 1e-5 leaves 30x of room
  for other seeds and for error growth through the LayerNorms' rstd;
- attention maps come back with return_attention, a short AdamW run matches the numpy one,
  inputs and parameters are not modified, and set_threads sets both thread pools.
"""

import numba
import numpy as np
import pytest
from threadpoolctl import threadpool_info

from tinyvit.backend import get_backend
from tinyvit.config import get_preset
from tinyvit.model import ViT, init_params
from tinyvit.optim import AdamW

CFG = get_preset("testing")
FLOAT32_MODEL_TOL = 1e-5


def rel_err(got, want):
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    return np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-30)


def trained_looking_params(seed=0):
    """init_params, with the zero-initialised head, class token and biases made random: with a zero
    head every gradient below it would be zero and the comparison would prove nothing."""
    rng = np.random.default_rng(seed)
    params = init_params(CFG, seed=seed, dtype=np.float64)
    for k, v in params.items():
        if k == "head.weight" or k == "cls_token" or k.endswith("bias"):
            params[k] = 0.5 * rng.standard_normal(v.shape)
    return params


def batch(seed=1, size=4):
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((size, CFG.image_size, CFG.image_size, CFG.channels))
    return images, rng.integers(0, CFG.num_classes, size)


@pytest.fixture(scope="module")
def models():
    params = trained_looking_params()
    return (ViT(CFG, dtype=np.float64, backend="numpy", params=params),
            ViT(CFG, dtype=np.float64, backend="numba", params=params))  # fmt: skip


# The numba backend's ops that are not numba kernels, on purpose: its arrays are NumPy arrays, the
# class token is a slice, the thread setting is tinyvit.threads', and there is no device to wait
# for and nothing to compile ahead (the optional fields keep Backend's defaults).
NOT_KERNELS = {"asarray": "numpy", "to_numpy": "numpy", "zeros_like": "numpy", "class_token_forward": "numpy",
               "class_token_backward": "numpy", "set_threads": "tinyvit.threads", "synchronize": "the default",
               "jit": "the default", "use_dtype": "the default"}  # fmt: skip


def test_numba_backend_is_registered_with_every_op():
    """Every field of Backend: a numba kernel from tinyvit.kernels, or one of NOT_KERNELS, which are
    exactly the numpy backend's own functions (or tinyvit.threads.set_threads, or the default)."""
    from dataclasses import fields

    from tinyvit.backend import Backend
    from tinyvit.threads import set_threads

    backend, numpy = get_backend("numba"), get_backend("numpy")
    assert backend.name == "numba"
    ops = [f for f in fields(Backend) if f.name != "name"]
    assert len(ops) >= 25, "Backend lost its fields?"
    for f in ops:
        op = getattr(backend, f.name)
        assert callable(op), f"{f.name} is {op!r}"
        if f.name not in NOT_KERNELS:
            assert op.__module__.startswith("tinyvit.kernels.numba_"), f"{f.name} comes from {op.__module__}"
            assert op is not getattr(numpy, f.name), f"{f.name} is the numpy backend's"
        elif NOT_KERNELS[f.name] == "numpy":
            assert op is getattr(numpy, f.name), f"{f.name} should be the numpy backend's"
        elif NOT_KERNELS[f.name] == "the default":
            assert op is f.default, f"{f.name} should be Backend's default"
    assert backend.set_threads is set_threads


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_float64_loss_and_gradients_equal_the_numpy_backend(models, smoothing):
    """Every gradient of the numba model agrees with the specification's to 1e-10."""
    ref, fast = models
    images, labels = batch()
    loss_ref, grads_ref, logits_ref = ref.loss_and_grads(images, labels, smoothing, return_logits=True)
    loss, grads, logits = fast.loss_and_grads(images, labels, smoothing, return_logits=True)
    assert abs(loss - loss_ref) <= 1e-10 * abs(loss_ref)
    assert rel_err(logits, logits_ref) <= 1e-10
    assert list(grads) == list(grads_ref)
    for k in grads_ref:
        assert np.max(np.abs(grads_ref[k])) > 0, f"reference gradient of {k} is all zero: the check would be empty"
        assert grads[k].shape == grads_ref[k].shape and grads[k].dtype == np.float64
        assert rel_err(grads[k], grads_ref[k]) <= 1e-10, f"{k}: relative error {rel_err(grads[k], grads_ref[k]):.3g}"


def test_float64_gradient_matches_finite_differences(models):
    """(L(p + h u) - L(p - h u)) / 2h equals grad . u along 3 random directions over all parameters."""
    _, fast = models
    images, labels = batch(seed=2)
    base = fast.numpy_params()
    _, grads = fast.loss_and_grads(images, labels)
    rng = np.random.default_rng(3)
    h = 1e-5
    try:
        for _ in range(3):
            u = {k: rng.standard_normal(v.shape) for k, v in base.items()}
            analytic = sum(float(np.sum(grads[k] * u[k])) for k in base)
            fast.load_params({k: base[k] + h * u[k] for k in base})
            plus, _ = fast.loss_and_grads(images, labels)
            fast.load_params({k: base[k] - h * u[k] for k in base})
            minus, _ = fast.loss_and_grads(images, labels)
            numeric = (plus - minus) / (2 * h)
            err = abs(numeric - analytic) / max(1e-8, abs(numeric) + abs(analytic))
            assert err < 1e-6, f"finite difference {numeric:.10g} vs analytic {analytic:.10g} (error {err:.3g})"
    finally:
        fast.load_params(base)


def test_float32_logits_and_gradients_are_close_to_the_float64_reference(models):
    """The float32 training path (rational erf, float32 BLAS) stays within FLOAT32_MODEL_TOL."""
    ref, _ = models
    images, labels = batch(seed=4)
    params32 = {k: v.astype(np.float32) for k, v in ref.numpy_params().items()}
    ref32 = ViT(CFG, dtype=np.float64, backend="numpy", params=params32)  # the same float32-rounded values
    fast32 = ViT(CFG, dtype=np.float32, backend="numba", params=params32)
    images32 = images.astype(np.float32)
    loss_ref, grads_ref, logits_ref = ref32.loss_and_grads(images32, labels, return_logits=True)
    loss, grads, logits = fast32.loss_and_grads(images32, labels, return_logits=True)
    assert logits.dtype == np.float32
    assert abs(loss - loss_ref) <= FLOAT32_MODEL_TOL * abs(loss_ref)
    assert rel_err(logits, logits_ref) <= FLOAT32_MODEL_TOL
    for k in grads_ref:
        assert grads[k].dtype == np.float32, f"{k} came back as {grads[k].dtype}"
        assert rel_err(grads[k], grads_ref[k]) <= FLOAT32_MODEL_TOL, f"{k}: {rel_err(grads[k], grads_ref[k]):.3g}"


def test_forward_returns_attention_maps_equal_to_the_reference(models):
    ref, fast = models
    images, _ = batch(seed=5, size=3)
    logits, probs = fast.forward(images, return_attention=True)
    logits_ref, probs_ref = ref.forward(images, return_attention=True)
    assert rel_err(logits, logits_ref) <= 1e-10
    N = CFG.num_tokens
    assert len(probs) == CFG.depth
    for p, r in zip(probs, probs_ref):
        assert p.shape == (3, CFG.heads, N, N)
        assert np.allclose(p.sum(axis=-1), 1.0, atol=1e-12), "attention rows must sum to 1"
        assert rel_err(p, r) <= 1e-10


def test_loss_and_grads_leave_images_and_parameters_untouched(models):
    _, fast = models
    images, labels = batch(seed=6)
    images_before, params_before = images.copy(), fast.numpy_params()
    fast.loss_and_grads(images, labels)
    assert np.array_equal(images, images_before)
    for k, v in fast.numpy_params().items():
        assert np.array_equal(v, params_before[k]), f"parameter {k} changed"


def test_short_adamw_run_matches_the_numpy_backend():
    """Five AdamW steps with clipping: the same losses and parameters on both backends (float64)."""
    params = trained_looking_params(seed=7)
    runs = {}
    for name in ("numpy", "numba"):
        model = ViT(CFG, dtype=np.float64, backend=name, params=params)
        opt = AdamW(model, lr=1e-2, weight_decay=0.05, clip_norm=0.5)
        losses = []
        for step in range(5):
            images, labels = batch(seed=10 + step)
            loss, grads = model.loss_and_grads(images, labels)
            opt.step(grads)
            losses.append(loss)
        runs[name] = (losses, model.numpy_params())
    (losses_ref, p_ref), (losses, p) = runs["numpy"], runs["numba"]
    assert losses_ref[-1] < losses_ref[0], "the reference run should learn this batch sequence"
    np.testing.assert_allclose(losses, losses_ref, rtol=1e-10)
    for k in p_ref:
        assert rel_err(p[k], p_ref[k]) <= 1e-9, f"{k} after 5 steps: {rel_err(p[k], p_ref[k]):.3g}"


def test_set_threads_sets_numba_and_blas_pools():
    backend = get_backend("numba")
    try:
        backend.set_threads(1)
        assert numba.get_num_threads() == 1
        blas = [pool for pool in threadpool_info() if pool["user_api"] == "blas"]
        assert blas and all(pool["num_threads"] == 1 for pool in blas)
    finally:
        backend.set_threads(None)
    with pytest.raises(ValueError, match="at least 1"):
        backend.set_threads(0)

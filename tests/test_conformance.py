"""Every registered backend against the specification: each op, the whole model, the optimiser.

The `numpy` backend is tinyvit.layers and tinyvit.optim themselves, the
specification. Every other backend in the registry (numba, cuda under the
simulator without a GPU, jax) runs the same calls on its own arrays, and each
result is compared with the specification's in float64 (to 1e-10: only the order
of sums differs) and in float32 (to 1e-4 of the output's scale: float32
rounding). Inputs are seeded and the checks say which op and which output went
wrong. tests/backends.py says how a backend gets here: by being registered.
"""

from dataclasses import fields

import numpy as np
import pytest
from backends import (
    BACKENDS,
    FAST_BACKENDS,
    batch,
    close,
    compare_models,
    error,
    perturbed_params,
)

from tinyvit import ViT, get_preset
from tinyvit.backend import Backend, get_backend
from tinyvit.optim import AdamW, AdamWStep

CFG = get_preset("testing")  # 8 px, patch 4, D 8, 2 blocks, 2 heads, MLP 16, 3 classes
DTYPES = [np.float64, np.float32]

pytestmark = pytest.mark.usefixtures("small_cuda_blocks", "fast_simulator_barriers")  # tests/conftest.py

# name -> (forward(ops, *inputs) -> (out, cache), backward(ops, dout, cache) -> tuple of grads, input shapes).
# An op with several outputs gives them as a tuple, and its backward takes a tuple dout of their shapes.
# Shapes are small (the CUDA simulator runs kernels as Python threads) but not degenerate:
# B=2, N=5 tokens, D=8, 2 heads, MLP 12, K=3 classes, 4x4 images of patch 2.
OPS = {
    "patchify": (lambda o, x: o.patchify_forward(x, 2),
                 lambda o, d, c: (o.patchify_backward(d, c),), [(2, 4, 4, 3)]),
    "linear": (lambda o, x, w, b: o.linear_forward(x, w, b), lambda o, d, c: o.linear_backward(d, c),
               [(2, 5, 8), (8, 6), (6,)]),
    "linear_gelu": (lambda o, x, w, b: o.linear_gelu_forward(x, w, b), lambda o, d, c: o.linear_gelu_backward(d, c),
                    [(2, 5, 8), (8, 12), (12,)]),
    "embed": (lambda o, x, cls, pos: o.embed_forward(x, cls, pos), lambda o, d, c: o.embed_backward(d, c),
              [(2, 4, 8), (8,), (5, 8)]),
    "layernorm": (lambda o, x, w, b: o.layernorm_forward(x, w, b), lambda o, d, c: o.layernorm_backward(d, c),
                  [(2, 5, 8), (8,), (8,)]),
    # the residual add fused with the LayerNorm after it: outputs (s, y), dout (ds, dy)
    "add_layernorm": (lambda o, x, h, w, b: o.add_layernorm_forward(x, h, w, b),
                      lambda o, d, c: o.add_layernorm_backward(d, c), [(2, 5, 8), (2, 5, 8), (8,), (8,)]),
    "attention": (lambda o, qkv: o.attention_forward(qkv, 2), lambda o, d, c: (o.attention_backward(d, c),),
                  [(2, 5, 24)]),
    "class_token": (lambda o, x: o.class_token_forward(x), lambda o, d, c: (o.class_token_backward(d, c),),
                    [(2, 5, 8)]),
    # the options of the official checkpoints (ViTConfig.gelu, .classifier, .pre_logits)
    "linear_gelu_tanh": (lambda o, x, w, b: o.linear_gelu_tanh_forward(x, w, b),
                         lambda o, d, c: o.linear_gelu_tanh_backward(d, c), [(2, 5, 8), (8, 12), (12,)]),
    "pos_embed": (lambda o, x, pos: o.pos_embed_forward(x, pos), lambda o, d, c: o.pos_embed_backward(d, c),
                  [(2, 4, 8), (4, 8)]),
    "token_mean": (lambda o, x: o.token_mean_forward(x), lambda o, d, c: (o.token_mean_backward(d, c),),
                   [(2, 5, 8)]),
    "tanh": (lambda o, x: o.tanh_forward(x), lambda o, d, c: (o.tanh_backward(d, c),), [(2, 6)]),
    # attention with a bias (H, N, N) added to the scores (the relative position bias, ViTConfig.rel_pos_bias)
    "attention_bias": (lambda o, qkv, bias: o.attention_bias_forward(qkv, bias, 2),
                       lambda o, d, c: o.attention_bias_backward(d, c), [(2, 5, 24), (2, 5, 5)]),
}  # fmt: skip


def _host(ops, a):
    return np.asarray(ops.to_numpy(a), dtype=np.float64)


def _check(name, got, want, dtype, tol=None):
    got = np.asarray(got)
    assert got.shape == np.shape(want), f"{name}: shape {got.shape}, expected {np.shape(want)}"
    assert close(got, want, dtype, tol), f"{name}: error {error(got, want, dtype):.2e} against the specification"


# After AdamW steps, float64 parameters agree to 1e-8, not 1e-10: Adam divides each gradient by
# sqrt(v) + eps, and for the key part of the qkv bias, whose gradient is zero in exact arithmetic,
# that turns rounding noise of ~1e-17 into steps of ~lr * 1e-17 / eps ~ 1e-11.
ADAM_FLOAT64_TOL = 1e-8


@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_registers_every_op(backend):
    """Every field of Backend is set and callable: a backend cannot leave an op out."""
    ops = get_backend(backend)
    assert ops.name == backend
    for f in fields(Backend):
        if f.name != "name":
            assert callable(getattr(ops, f.name)), f"{backend}.{f.name} is {getattr(ops, f.name)!r}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", sorted(OPS))
@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_layer_forward_and_backward_match_the_specification(backend, op, dtype):
    """The op's output and every gradient of its backward, against tinyvit.layers on the same inputs."""
    ops, spec = get_backend(backend), get_backend("numpy")
    forward, backward, shapes = OPS[op]
    rng = np.random.default_rng(sorted(OPS).index(op))
    inputs = [rng.standard_normal(s) for s in shapes]
    want_out, want_cache = forward(spec, *inputs)
    several = isinstance(want_out, tuple)
    want_outs = want_out if several else (want_out,)
    douts = tuple(rng.standard_normal(np.shape(w)) for w in want_outs)
    want_grads = backward(spec, douts if several else douts[0], want_cache)

    dev_inputs = [ops.asarray(x, dtype) for x in inputs]
    out, cache = forward(ops, *dev_inputs)
    outs = out if several else (out,)
    assert len(outs) == len(want_outs), f"{op} forward gives {len(outs)} outputs, expected {len(want_outs)}"
    for i, (o, w) in enumerate(zip(outs, want_outs)):
        _check(f"{op} forward" + (f" output {i}" if several else ""), _host(ops, o), w, dtype)
    dev_douts = tuple(ops.asarray(d, dtype) for d in douts)
    grads = backward(ops, dev_douts if several else dev_douts[0], cache)
    assert len(grads) == len(want_grads), f"{op} backward gives {len(grads)} gradients, expected {len(want_grads)}"
    for i, (g, w) in enumerate(zip(grads, want_grads)):
        _check(f"{op} gradient {i}", _host(ops, g), w, dtype)
    for i, (d, dd) in enumerate(zip(douts, dev_douts)):
        assert np.array_equal(ops.to_numpy(dd), d.astype(dtype)), f"{op} backward wrote into dout {i}"
    for i, (x, d) in enumerate(zip(inputs, dev_inputs)):
        assert np.array_equal(ops.to_numpy(d), x.astype(dtype)), f"{op} wrote into input {i}"
    if op in ("attention", "attention_bias"):
        _check("attention probs", _host(ops, ops.attention_probs(cache)), spec.attention_probs(want_cache), dtype)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_cross_entropy_and_count_correct_match_the_specification(backend, dtype, smoothing):
    ops, spec = get_backend(backend), get_backend("numpy")
    rng = np.random.default_rng(7)
    logits, labels = rng.standard_normal((5, 4)), np.array([0, 3, 1, 1, 2])
    want, want_cache = spec.cross_entropy_forward(logits, labels, smoothing)
    loss, cache = ops.cross_entropy_forward(ops.asarray(logits, dtype), labels, smoothing)
    _check("loss", float(np.asarray(ops.to_numpy(loss) if hasattr(loss, "shape") else loss)), float(want), dtype)
    _check("dlogits", _host(ops, ops.cross_entropy_backward(1.0, cache)), spec.cross_entropy_backward(1.0, want_cache),
           dtype)  # fmt: skip
    count = ops.count_correct(ops.asarray(logits, dtype), labels)
    assert float(np.asarray(ops.to_numpy(count)).reshape(-1)[0]) == float(spec.count_correct(logits, labels))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_optimiser_ops_match_the_specification_and_write_nothing(backend, dtype):
    """adamw_update (steps 1-3: the bias corrections), sum_of_squares, scale and add return new arrays."""
    ops, spec = get_backend(backend), get_backend("numpy")
    rng = np.random.default_rng(11)
    p, m, v = rng.standard_normal((4, 9)), np.zeros((4, 9)), np.zeros((4, 9))
    dp, dm, dv = (ops.asarray(a, dtype) for a in (p, m, v))
    for step in (1, 2, 3):
        g = rng.standard_normal((4, 9))
        hp = AdamWStep(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.05, step=step)
        before = [ops.to_numpy(a) for a in (dp, dm, dv)]
        new = ops.adamw_update(dp, ops.asarray(g, dtype), dm, dv, hp)
        for old, a in zip(before, (dp, dm, dv)):
            assert np.array_equal(ops.to_numpy(a), old), "adamw_update wrote into its input"
        (dp, dm, dv), (p, m, v) = new, spec.adamw_update(p, g, m, v, hp)
    for name, got, want in (("param", dp, p), ("m", dm, m), ("v", dv, v)):
        _check(f"adamw {name}", _host(ops, got), want, dtype)

    arrays = [rng.standard_normal(s) for s in ((3, 5), (7,), (2, 2, 3))]
    on = [ops.asarray(a, dtype) for a in arrays]
    total = ops.sum_of_squares(on)
    _check("sum_of_squares", float(np.asarray(ops.to_numpy(total) if hasattr(total, "shape") else total)),
           float(spec.sum_of_squares(arrays)), dtype)  # fmt: skip
    scaled = ops.scale(on, 0.25)
    for i, (s, a) in enumerate(zip(scaled, arrays)):
        _check(f"scale {i}", _host(ops, s), 0.25 * a, dtype)
        assert np.array_equal(ops.to_numpy(on[i]), a.astype(dtype)), "scale wrote into its input"
    _check("add", _host(ops, ops.add(on[0], on[0])), 2 * arrays[0], dtype)
    assert not np.any(ops.to_numpy(ops.zeros_like(on[1]))), "zeros_like"


@pytest.fixture(scope="module")
def reference():
    """The specification's loss, gradients, logits and attention maps on one batch, float64."""
    params = perturbed_params(CFG)
    model = ViT(CFG, dtype=np.float64, backend="numpy", params=params)
    images, labels = batch(CFG)
    loss, grads, logits = model.loss_and_grads(images, labels, 0.1, return_logits=True)
    _, probs = model.forward(images, return_attention=True)
    for k, g in grads.items():
        assert np.max(np.abs(g)) > 0, f"reference gradient of {k} is all zero: the check would be empty"
    return params, float(loss), grads, logits, probs


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_whole_model_matches_the_specification(backend, dtype, reference):
    """Loss, logits, attention maps and every gradient of the whole ViT, with label smoothing."""
    params, want_loss, want_grads, want_logits, want_probs = reference
    model = ViT(CFG, dtype=dtype, backend=backend, params=params)
    ops = model.backend
    images, labels = batch(CFG)
    before = model.numpy_params()
    loss, grads, logits = model.loss_and_grads(images, labels, 0.1, return_logits=True)
    _check("loss", float(loss), want_loss, dtype)
    _check("logits", _host(ops, logits), want_logits, dtype)
    assert list(grads) == list(want_grads), "gradients must come in the parameters' order"
    bad = {k: f"{error(_host(ops, grads[k]), w, dtype):.2e}" for k, w in want_grads.items()
           if not close(_host(ops, grads[k]), w, dtype)}  # fmt: skip
    assert not bad, f"gradients off the specification: {bad}"
    assert all(ops.to_numpy(grads[k]).dtype == dtype for k in grads), "a gradient left the model's dtype"
    _, probs = model.forward(images, return_attention=True)
    assert len(probs) == CFG.depth
    for i, (got, want) in enumerate(zip(probs, want_probs)):
        _check(f"attention maps of block {i}", got, want, dtype)
    after = model.numpy_params()
    assert all(np.array_equal(before[k], after[k]) for k in before), "loss_and_grads changed a parameter"


# The official checkpoints' options all on: tanh GELU, no class token with mean pooling, pre_logits.
OPTIONS = CFG.replace(gelu="tanh", classifier="gap", pre_logits=5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_whole_model_with_the_official_options_matches_the_specification(backend, dtype):
    """Loss, logits and every gradient of a ViT with gelu="tanh", classifier="gap" and pre_logits."""
    compare_models(backend, OPTIONS, dtype)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_three_adamw_steps_with_clipping_match_the_specification(backend):
    """Gradient norm, clipping and the update, three times, in float64 (to ADAM_FLOAT64_TOL)."""
    params = perturbed_params(CFG, seed=2)
    images, labels = batch(CFG, seed=3)
    after = {}
    for name in ("numpy", backend):
        model = ViT(CFG, dtype=np.float64, backend=name, params=params)
        opt = AdamW(model, lr=1e-2, weight_decay=0.05, clip_norm=0.5)
        norms = [opt.step(model.loss_and_grads(images, labels)[1]) for _ in range(3)]
        after[name] = (norms, model.numpy_params(), opt.state_dict())
    (want_norms, want_p, want_s), (norms, p, s) = after["numpy"], after[backend]
    assert want_norms[0] > 0.5, f"the test needs clipping to act, but the gradient norm is {want_norms[0]}"
    assert np.allclose(norms, want_norms, rtol=1e-10, atol=0), f"gradient norms {norms} vs {want_norms}"
    for k in want_p:
        _check(f"{k} after three steps", p[k], want_p[k], np.float64, ADAM_FLOAT64_TOL)
        _check(f"first moment of {k}", s[f"m/{k}"], want_s[f"m/{k}"], np.float64, ADAM_FLOAT64_TOL)
        _check(f"second moment of {k}", s[f"v/{k}"], want_s[f"v/{k}"], np.float64, ADAM_FLOAT64_TOL)
    assert int(s["step"]) == 3

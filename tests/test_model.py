"""The whole ViT: its gradients, its public names, its shapes, and how it refuses bad input.

- the float64 gradient of every parameter against finite differences of the loss;
- the API pinned: ViTConfig's fields and defaults, ViT's signature, every
  parameter's name and shape, and the exact parameter count of every preset;
- the qkv column layout, against attention written out head by head;
- the first loss (log K), and overfitting one small batch;
- bad input: a ValueError that says what was expected and what came, with the
  model untouched; inputs never written into.
"""

import dataclasses
import gc
import inspect
import math
import re

import numpy as np
import pytest
from gradcheck import STEP, TOLERANCE, directional_errors, rel_error
from scipy.special import erfc

from tinyvit import PRESETS, ViT, ViTConfig, get_preset
from tinyvit import backend as backend_registry
from tinyvit.backend import get_backend
from tinyvit.model import count_params
from tinyvit.optim import AdamW

TESTING = get_preset("testing")


def _batch(cfg, B=3, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(B, cfg.image_size, cfg.image_size, cfg.channels)).astype(dtype)
    labels = rng.integers(0, cfg.num_classes, size=B)
    return images, labels


def _perturbed_model(cfg=TESTING, seed=1, scale=0.5):
    """A float64 model with every parameter moved well away from its initial value."""
    model = ViT(cfg, seed=0, dtype=np.float64)
    rng = np.random.default_rng(seed)
    for p in model.params.values():
        p += rng.normal(0.0, scale, size=p.shape)  # params are live: this changes the model
    return model


# -- gradients -------------------------------------------------------------------------------


def test_at_initialisation_only_the_head_has_gradients():
    """The head starts at zero, so dlogits @ head.weight^T = 0 and no gradient reaches any other parameter.

    This is why the finite-difference checks below first move every parameter
    away from its initial value: at init they would compare zeros with zeros.
    """
    model = ViT(TESTING, seed=0, dtype=np.float64)
    _, grads = model.loss_and_grads(*_batch(TESTING))
    assert np.abs(grads["head.weight"]).max() > 1e-3, "head.weight has no gradient at init"
    for name, g in grads.items():
        if not name.startswith("head."):
            assert not g.any(), f"{name} has a nonzero gradient at init, but the head is zero"


def test_model_gradients_match_finite_differences_along_random_directions():
    """For every parameter tensor p and a random direction d: (L(p + h d) - L(p - h d)) / 2h = <grad p, d>.

    float64, the testing preset with every parameter perturbed away from its
    init (at init the zero head would make all other gradients trivially zero),
    label smoothing 0.1 so that path is exercised too. Contracting the whole
    tensor with a random d checks every entry of its gradient at once, with one
    pair of forward passes. Worst relative error allowed: 1e-6; the loss is of
    order 1, so the difference quotient's noise is ~2e-10, and <grad, d> sums
    many entries, so it is rarely small.
    """
    model = _perturbed_model()
    images, labels = _batch(TESTING)
    _, grads = model.loss_and_grads(images, labels, label_smoothing=0.1)

    def loss():
        return model.loss_and_grads(images, labels, label_smoothing=0.1)[0]

    errors = directional_errors(loss, model.params, grads, h=STEP["model"], seed=2)
    worst = max(errors, key=errors.get)
    assert errors[worst] <= TOLERANCE["model"], f"{worst}: relative error {errors[worst]:.2e}; all: {errors}"


def test_model_gradients_match_finite_differences_entry_by_entry():
    """The same check one entry at a time, on three entries of every tensor.

    The entries are the largest gradient of each tensor and two random ones among
    those at least a tenth as large: an entry far smaller than the loss it moves
    is below what a h = 1e-6 difference resolves (its noise is ~2e-10), and the
    directional check above already covers every entry. Worst allowed: 1e-6.
    """
    model = _perturbed_model()
    images, labels = _batch(TESTING)
    _, grads = model.loss_and_grads(images, labels)
    h, rng = STEP["model"], np.random.default_rng(3)
    errors = {}
    for name, p in model.params.items():
        g = grads[name]
        large = np.flatnonzero(np.abs(g) >= 0.1 * np.abs(g).max())
        picks = {int(np.argmax(np.abs(g)))} | set(rng.choice(large, size=min(2, large.size), replace=False).tolist())
        for flat in sorted(picks):
            idx = np.unravel_index(flat, p.shape)
            original = p[idx]
            p[idx] = original + h
            plus = model.loss_and_grads(images, labels)[0]
            p[idx] = original - h
            minus = model.loss_and_grads(images, labels)[0]
            p[idx] = original
            errors[f"{name}{list(map(int, idx))}"] = rel_error(g[idx], (plus - minus) / (2 * h))
    worst = max(errors, key=errors.get)
    assert errors[worst] <= TOLERANCE["model"], f"{worst}: relative error {errors[worst]:.2e}"


# -- the API, pinned -------------------------------------------------------------------------


def test_vitconfig_fields_and_defaults():
    """ViTConfig has exactly these fields, in this order, with these defaults (a CIFAR-sized ViT;
    the options of the official checkpoints off: exact GELU, class token, no pre_logits; a learned
    position embedding and no relative position bias)."""
    expected = [("image_size", 32), ("patch_size", 4), ("channels", 3), ("dim", 192), ("depth", 6),
                ("heads", 3), ("mlp_dim", 768), ("num_classes", 10),
                ("gelu", "erf"), ("classifier", "token"), ("pre_logits", None),
                ("pos_embed", "learned"), ("rel_pos_bias", 0)]  # fmt: skip
    assert [(f.name, f.default) for f in dataclasses.fields(ViTConfig)] == expected


def test_vit_signature():
    """ViT(cfg, seed=0, dtype=np.float32, backend="numpy")."""
    params = inspect.signature(ViT).parameters
    assert list(params)[:4] == ["cfg", "seed", "dtype", "backend"]
    assert params["seed"].default == 0
    assert params["dtype"].default is np.float32
    assert params["backend"].default == "numpy"


def _expected_shapes(cfg):
    """Every parameter's name and shape, written from the table of the model's definition."""
    D, M, K, N, P, C = cfg.dim, cfg.mlp_dim, cfg.num_classes, cfg.num_tokens, cfg.patch_size, cfg.channels
    shapes = {"patch_embed.weight": (P * P * C, D), "patch_embed.bias": (D,), "cls_token": (D,), "pos_embed": (N, D)}
    for i in range(cfg.depth):
        shapes.update({
            f"blocks.{i}.norm1.weight": (D,), f"blocks.{i}.norm1.bias": (D,),
            f"blocks.{i}.attn.qkv.weight": (D, 3 * D), f"blocks.{i}.attn.qkv.bias": (3 * D,),
            f"blocks.{i}.attn.proj.weight": (D, D), f"blocks.{i}.attn.proj.bias": (D,),
            f"blocks.{i}.norm2.weight": (D,), f"blocks.{i}.norm2.bias": (D,),
            f"blocks.{i}.mlp.fc1.weight": (D, M), f"blocks.{i}.mlp.fc1.bias": (M,),
            f"blocks.{i}.mlp.fc2.weight": (M, D), f"blocks.{i}.mlp.fc2.bias": (D,),
        })  # fmt: skip
    shapes.update({"norm.weight": (D,), "norm.bias": (D,), "head.weight": (D, K), "head.bias": (K,)})
    return shapes


@pytest.mark.parametrize("cfg", [TESTING, TESTING.replace(depth=3, heads=4, mlp_dim=12, num_classes=5)])
def test_parameter_and_gradient_names_and_shapes(cfg):
    """params and grads have exactly the names and shapes of the table, and nothing else."""
    model = ViT(cfg, seed=0, dtype=np.float64)
    expected = _expected_shapes(cfg)
    assert {k: v.shape for k, v in model.params.items()} == expected
    _, grads = model.loss_and_grads(*_batch(cfg))
    assert {k: g.shape for k, g in grads.items()} == expected
    assert model.num_params == sum(math.prod(s) for s in expected.values())


def test_params_are_live():
    """Writing into model.params changes what the model computes: adding 1 to a head bias adds 1 to that logit."""
    model = _perturbed_model()
    images, _ = _batch(TESTING)
    before = model.forward(images)
    model.params["head.bias"][1] += 1.0
    after = model.forward(images)
    np.testing.assert_allclose(after[:, 1], before[:, 1] + 1.0, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(after[:, [0, 2]], before[:, [0, 2]])


def test_forward_shapes_and_attention_maps():
    """forward gives (B, K) logits; with return_attention=True also depth maps of (B, H, N, N) whose rows sum to 1."""
    cfg = TESTING
    model = _perturbed_model()
    images, _ = _batch(cfg, B=2)
    logits = model.forward(images)
    assert logits.shape == (2, cfg.num_classes)
    logits2, maps = model.forward(images, return_attention=True)
    np.testing.assert_array_equal(logits2, logits)
    assert isinstance(maps, list) and len(maps) == cfg.depth
    for probs in maps:
        assert probs.shape == (2, cfg.heads, cfg.num_tokens, cfg.num_tokens)
        assert np.all(probs >= 0)
        np.testing.assert_allclose(probs.sum(axis=-1), 1.0, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_forward_keeps_the_model_dtype(dtype):
    """A float32 model keeps float32 parameters and logits; a float64 one float64, whatever the images' dtype."""
    model = ViT(TESTING, seed=0, dtype=dtype)
    images, labels = _batch(TESTING, dtype=np.float64 if dtype == np.float32 else np.float32)
    assert all(p.dtype == dtype for p in model.params.values())
    assert model.forward(images).dtype == dtype
    loss, _ = model.loss_and_grads(images, labels)
    assert np.ndim(loss) == 0 and math.isfinite(float(loss))  # a backend scalar: a NumPy scalar here


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gradients_keep_the_model_dtype(dtype):
    """Every gradient has its parameter's dtype: a float32 model's backward stays in float32."""
    model = _perturbed_model() if dtype == np.float64 else ViT(TESTING, seed=0, dtype=dtype)
    _, grads = model.loss_and_grads(*_batch(TESTING))
    wrong = {k: str(g.dtype) for k, g in grads.items() if g.dtype != dtype}
    assert not wrong, f"gradients not in {np.dtype(dtype)}: {wrong}"


# -- qkv layout: attention written from the definition ------------------------------------------


def _reference_forward(params, cfg, images):
    """The ViT written straight from its definition, one image and one head at a time.

    Patches are cut with explicit slices, in row-major order over the grid,
    each flattened as (row, column, channel). Head h's query, key and value are
    columns h*Dh:(h+1)*Dh of the first, second and third D columns of qkv.
    GELU is z * Phi(z) with Phi through erfc. Returns logits (B, K) and the
    attention maps, a list over blocks of (B, H, N, N).
    """
    P, D, H, g = cfg.patch_size, cfg.dim, cfg.heads, cfg.grid_size
    Dh = D // H
    B = images.shape[0]

    def layernorm(x, w, b):
        mu = x.mean(axis=-1, keepdims=True)
        var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
        return (x - mu) / np.sqrt(var + 1e-6) * w + b

    logits = np.zeros((B, cfg.num_classes))
    maps = [np.zeros((B, H, cfg.num_tokens, cfg.num_tokens)) for _ in range(cfg.depth)]
    for b in range(B):
        tokens = [params["cls_token"]]
        for row in range(g):
            for col in range(g):
                patch = images[b, row * P:(row + 1) * P, col * P:(col + 1) * P, :].reshape(-1)
                tokens.append(patch @ params["patch_embed.weight"] + params["patch_embed.bias"])
        x = np.stack(tokens) + params["pos_embed"]  # (N, D)
        for i in range(cfg.depth):
            blk = {k[len(f"blocks.{i}."):]: v for k, v in params.items() if k.startswith(f"blocks.{i}.")}
            qkv = layernorm(x, blk["norm1.weight"], blk["norm1.bias"]) @ blk["attn.qkv.weight"] + blk["attn.qkv.bias"]
            heads_out = []
            for h in range(H):
                q = qkv[:, h * Dh:(h + 1) * Dh]
                k = qkv[:, D + h * Dh:D + (h + 1) * Dh]
                v = qkv[:, 2 * D + h * Dh:2 * D + (h + 1) * Dh]
                scores = q @ k.T / math.sqrt(Dh)
                e = np.exp(scores - scores.max(axis=1, keepdims=True))
                probs = e / e.sum(axis=1, keepdims=True)
                maps[i][b, h] = probs
                heads_out.append(probs @ v)
            x = x + np.concatenate(heads_out, axis=1) @ blk["attn.proj.weight"] + blk["attn.proj.bias"]
            z = layernorm(x, blk["norm2.weight"], blk["norm2.bias"]) @ blk["mlp.fc1.weight"] + blk["mlp.fc1.bias"]
            x = x + (z * 0.5 * erfc(-z / math.sqrt(2.0))) @ blk["mlp.fc2.weight"] + blk["mlp.fc2.bias"]
        cls = layernorm(x[0], params["norm.weight"], params["norm.bias"])
        logits[b] = cls @ params["head.weight"] + params["head.bias"]
    return logits, maps


@pytest.mark.parametrize("cfg", [TESTING, TESTING.replace(dim=12, heads=3, depth=1)])
def test_model_matches_a_per_head_reference(cfg):
    """Logits and every attention map equal those of the ViT written out head by head from the definition.

    This pins the qkv column convention (head h reads columns h*Dh:(h+1)*Dh of
    each third [q, k, v]), the patch layout, the pre-LN block order and the
    final LayerNorm on the class token. Any other split of qkv gives different
    numbers with perturbed weights.
    """
    model = _perturbed_model(cfg)
    images, _ = _batch(cfg)
    logits, maps = model.forward(images, return_attention=True)
    ref_logits, ref_maps = _reference_forward(model.numpy_params(), cfg, images)
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-10, atol=1e-12)
    for i, (probs, ref) in enumerate(zip(maps, ref_maps)):
        np.testing.assert_allclose(probs, ref, rtol=1e-10, atol=1e-12, err_msg=f"block {i} attention")


# -- the residual add fused with the LayerNorm after it ---------------------------------------


def _unfused(ops):
    """`ops` with add_layernorm replaced by the composition it stands for: the backend's own residual
    add, then its LayerNorm; backward, LayerNorm's backward, then the add of the two gradients."""

    def forward(x, h, weight, bias):
        s = ops.add(x, h)
        y, cache = ops.layernorm_forward(s, weight, bias)
        return (s, y), cache

    def backward(dout, cache):
        ds, dy = dout
        dx, dweight, dbias = ops.layernorm_backward(dy, cache)
        return ops.add(ds, dx), dweight, dbias

    return dataclasses.replace(ops, name=ops.name + " unfused", add_layernorm_forward=forward,
                               add_layernorm_backward=backward)  # fmt: skip


# numpy float64: the fused op is the composition itself, so the two agree to the last bits (1e-12).
# numba float32: s is the same float32 sum and its LayerNorm the same row kernel, so only the
# compiler's ordering of a row's sums may differ: a few float32 roundings (eps 6e-8), bound 1e-6.
@pytest.mark.parametrize("backend, dtype, tol", [("numpy", np.float64, 1e-12), ("numba", np.float32, 1e-6)])
@pytest.mark.parametrize("classifier", ["token", "gap"])
def test_the_fused_residual_add_gives_the_unfused_model(backend, dtype, tol, classifier):
    """Loss, logits (training and inference) and every gradient with add_layernorm fused, against the same
    model with the backend's separate add and LayerNorm in its place (the class token's final norm and
    the gap one's are the two ends a fused add meets)."""
    from backends import perturbed_params

    from tinyvit.backend import get_backend

    cfg = TESTING.replace(classifier=classifier)
    params = perturbed_params(cfg)
    images, labels = _batch(cfg, dtype=dtype)
    ops = get_backend(backend)
    fused, unfused = (ViT(cfg, dtype=dtype, backend=b, params=params) for b in (ops, _unfused(ops)))
    loss, grads, logits = fused.loss_and_grads(images, labels, 0.1, return_logits=True)
    want_loss, want_grads, want_logits = unfused.loss_and_grads(images, labels, 0.1, return_logits=True)
    assert abs(float(loss) - float(want_loss)) <= tol * abs(float(want_loss)), f"loss {loss} against {want_loss}"
    for name, got, want in [("logits", logits, want_logits), ("inference logits", fused.forward(images), want_logits),
                            *((k, grads[k], want_grads[k]) for k in want_grads)]:  # fmt: skip
        got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
        err = np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-30)
        assert err <= tol, f"{name}: fused and unfused differ by {err:.2e} of its largest entry (bound {tol:.0e})"


# -- parameter counts ------------------------------------------------------------------------

PARAM_COUNTS = {
    "testing": 1_683,
    "cifar-small": 2_693_578,
    "cifar-narrow": 811_146,
    "cifar-fast": 677_770,
    "vit-b16": 86_567_656,  # the paper's ViT-B/16 at 224 px with 1000 classes
    "vit-l16": 304_326_632,
    "vit-h14": 632_045_800,
}


def test_every_preset_is_pinned():
    """Every preset has a pinned parameter count below, and every pinned count names a preset."""
    assert set(PARAM_COUNTS) == set(PRESETS)


@pytest.mark.parametrize("name", sorted(PARAM_COUNTS))
def test_preset_parameter_count(name):
    """count_params of each preset, from the shapes alone (the large models are never allocated).

    Also against the closed form: patch embedding P^2 C D + D, class token D,
    position embedding N D, per block 4D (two LayerNorms) + 3D^2 + 3D (qkv)
    + D^2 + D (proj) + 2 D M + M + D (MLP), final LayerNorm 2D, head D K + K.
    """
    cfg = PRESETS[name]
    D, M, K, N, P, C = cfg.dim, cfg.mlp_dim, cfg.num_classes, cfg.num_tokens, cfg.patch_size, cfg.channels
    block = 4 * D + 3 * D * D + 3 * D + D * D + D + 2 * D * M + M + D
    closed_form = P * P * C * D + D + D + N * D + cfg.depth * block + 2 * D + D * K + K
    assert count_params(cfg) == PARAM_COUNTS[name] == closed_form


# -- loss at init and overfitting ------------------------------------------------------------


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 1e-6)])
@pytest.mark.parametrize("num_classes", [3, 10])
def test_initial_loss_is_log_k(dtype, tol, num_classes):
    """A fresh model's loss is log K: the head is zero, so every logit is 0 and every class has probability 1/K."""
    cfg = TESTING.replace(num_classes=num_classes)
    model = ViT(cfg, seed=0, dtype=dtype)
    loss, _ = model.loss_and_grads(*_batch(cfg, B=4, dtype=dtype))
    assert loss == pytest.approx(math.log(num_classes), abs=tol)


def test_overfits_one_small_batch():
    """AdamW without weight decay drives the loss on 8 fixed images with random labels below 0.05.

    A model that cannot memorise one batch has a broken gradient or update
    somewhere; this one needs a few dozen steps, and is given 300.
    """
    model = ViT(TESTING, seed=0, dtype=np.float32)
    images, labels = _batch(TESTING, B=8, dtype=np.float32)
    optimizer = AdamW(model, lr=3e-3, weight_decay=0.0)
    first = None
    for _ in range(300):
        loss, grads = model.loss_and_grads(images, labels)
        first = loss if first is None else first
        if loss < 0.05:
            break
        optimizer.step(grads)
    assert loss < 0.05, f"loss {first:.3f} -> {loss:.3f} after 300 steps, expected below 0.05"


# -- bad input -------------------------------------------------------------------------------

S = TESTING.image_size


def _images(shape=(2, S, S, 3), fill=0.5, dtype=np.float64):
    return np.full(shape, fill, dtype=dtype)


_NAN_IMAGES = _images()
_NAN_IMAGES[0, 1, 2, 0] = np.nan

def _forward(images):
    return lambda model: model.forward(images)


def _loss(images, labels, smoothing=0.0):
    return lambda model: model.loss_and_grads(images, labels, label_smoothing=smoothing)


BAD_CALLS = [
    # id, call on a model, pattern the message must match
    ("images rank 3", _forward(_images((S, S, 3))),
     r"images must have rank 4 \(B, 8, 8, 3\), got shape \(8, 8, 3\)"),
    ("images size", _forward(_images((2, 16, 16, 3))),
     r"images must have shape \(B, 8, 8, 3\), got \(2, 16, 16, 3\)"),
    ("images channels", _forward(_images((2, S, S, 1))),
     r"images must have shape \(B, 8, 8, 3\), got \(2, 8, 8, 1\)"),
    ("empty batch", _forward(_images((0, S, S, 3))),
     r"images must have shape \(B, 8, 8, 3\), got \(0, 8, 8, 3\)"),
    ("images nan", _forward(_NAN_IMAGES), r"images contain 1 non-finite values"),
    ("images inf", _loss(_images(fill=np.inf), [0, 1]), r"images contain 384 non-finite values"),
    ("images strings", _forward(np.full((2, S, S, 3), "a")), r"images must be real numbers, got dtype <U1"),
    ("images complex", _forward(_images(dtype=np.complex128)), r"images must be real numbers, got dtype complex128"),
    ("label too big", _loss(_images(), [0, 3]), r"labels must be in \[0, 3\), got values from 0 to 3"),
    ("label negative", _loss(_images(), [-1, 0]), r"labels must be in \[0, 3\), got values from -1 to 0"),
    ("labels shape", _loss(_images(), [[0], [1]]),
     r"labels must have shape \(2,\), got \(2, 1\)"),
    ("labels count", _loss(_images(), [0, 1, 2]),
     r"labels must have shape \(2,\), got \(3,\)"),
    ("labels float", _loss(_images(), [0.0, 1.0]), r"labels must be integers, got dtype float64"),
    ("smoothing 1", _loss(_images(), [0, 1], 1.0), r"label_smoothing must be in \[0, 1\), got 1.0"),
    ("smoothing negative", _loss(_images(), [0, 1], -0.1), r"label_smoothing must be in \[0, 1\), got -0.1"),
]  # fmt: skip


@pytest.mark.parametrize("call, message", [pytest.param(c, m, id=i) for i, c, m in BAD_CALLS])
def test_bad_input_raises_a_clear_value_error_and_leaves_the_model_alone(call, message):
    """Each bad input is a ValueError naming what was expected and what came; no parameter changes."""
    model = ViT(TESTING, seed=0, dtype=np.float64)
    before = model.numpy_params()
    with pytest.raises(ValueError, match=message):
        call(model)
    for name, value in model.params.items():
        np.testing.assert_array_equal(value, before[name], err_msg=f"{name} changed")


BAD_CONFIGS = [
    ("patch does not divide image", {"image_size": 10, "patch_size": 4},
     r"patch_size 4 must divide image_size 10 \(remainder 2\)"),
    ("heads do not divide dim", {"dim": 10, "heads": 3}, r"heads 3 must divide dim 10 \(remainder 1\)"),
    ("zero dim", {"dim": 0}, r"ViTConfig.dim must be a positive integer, got 0"),
    ("negative depth", {"depth": -1}, r"ViTConfig.depth must be a positive integer, got -1"),
    ("float patch", {"patch_size": 4.0}, r"ViTConfig.patch_size must be a positive integer, got 4.0"),
    ("bool heads", {"heads": True}, r"ViTConfig.heads must be a positive integer, got True"),
]  # fmt: skip


@pytest.mark.parametrize("fields, message", [pytest.param(f, m, id=i) for i, f, m in BAD_CONFIGS])
def test_bad_config_raises_a_clear_value_error(fields, message):
    """A config that cannot describe a ViT is refused when it is made, saying which field and why."""
    with pytest.raises(ValueError, match=message):
        ViTConfig(**fields)


def test_unknown_preset_names_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown preset 'vit-z99'; expected one of \[.*'testing'.*\]"):
        get_preset("vit-z99")


def test_unknown_backend_names_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown backend 'tpu'; expected one of \[.*'numpy'.*\]"):
        ViT(TESTING, backend="tpu")


@pytest.mark.parametrize("fails", [False, True])
@pytest.mark.parametrize("was_on", [True, False])
def test_loading_a_backend_pauses_the_cycle_collector_and_puts_it_back(monkeypatch, fails, was_on):
    """The loader runs with the collector off; after it, loaded or not, the collector is as it was."""
    seen = []

    def loader():
        seen.append(gc.isenabled())
        if fails:
            raise ImportError("no such library")
        return get_backend("numpy")

    monkeypatch.setattr(backend_registry, "_LOADERS", dict(backend_registry._LOADERS))
    monkeypatch.setattr(backend_registry, "_LOADED", dict(backend_registry._LOADED))
    backend_registry.register_backend("paused", loader)
    (gc.enable if was_on else gc.disable)()
    try:
        if fails:
            with pytest.raises(RuntimeError, match="backend 'paused' could not be loaded: no such library"):
                get_backend("paused")
        else:
            assert get_backend("paused") is get_backend("numpy")
        assert seen == [False] and gc.isenabled() == was_on
    finally:
        gc.enable()


def test_unsupported_dtype_is_refused():
    with pytest.raises(ValueError, match=re.escape("dtype must be float32 or float64, got int32")):
        ViT(TESTING, dtype=np.int32)


# -- inputs are never written into -----------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_forward_and_loss_do_not_write_into_their_inputs(dtype):
    """images and labels come out of forward and loss_and_grads exactly as they went in."""
    model = _perturbed_model()
    images, labels = _batch(TESTING, dtype=dtype)
    labels = labels.astype(np.int32)
    images_before, labels_before = images.copy(), labels.copy()
    model.forward(images, return_attention=True)
    model.loss_and_grads(images, labels, label_smoothing=0.1)
    np.testing.assert_array_equal(images, images_before)
    np.testing.assert_array_equal(labels, labels_before)
    assert images.dtype == dtype and labels.dtype == np.int32


def test_building_a_model_holds_its_weights_once_plus_one_array():
    """ViT(cfg) draws the weights, then hands them to the backend one array at a time: NumPy's
    allocations (which tracemalloc sees) peak at the model's size plus its largest arrays, not
    twice the model (the peak memory of benchmarks/bench_appendix.py counts the constructor)."""
    import tracemalloc

    cfg = get_preset("testing").replace(image_size=32, dim=128, depth=6, heads=4, mlp_dim=512, num_classes=10)
    model_bytes = 4 * count_params(cfg)
    tracemalloc.start()
    try:
        model = ViT(cfg, seed=0, dtype=np.float32, backend="numpy")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sum(v.nbytes for v in model.params.values()) == model_bytes
    assert peak < 1.25 * model_bytes, f"peak {peak / 1e6:.2f} MB for a model of {model_bytes / 1e6:.2f} MB"


def test_inference_keeps_one_block_of_activations_not_the_whole_network():
    """ViT.forward (inference) asks the model for no cache, so each block's activations are freed
    as the next runs; a forward that keeps the cache for backward holds every block's. Measured
    with tracemalloc on the numpy backend, 8 blocks deep: inference peaks well under half."""
    import tracemalloc

    from tinyvit.model import forward

    cfg = get_preset("testing").replace(image_size=32, patch_size=4, dim=64, depth=8, heads=4, mlp_dim=256,
                                        num_classes=10)  # fmt: skip
    model = ViT(cfg, seed=0, dtype=np.float32, backend="numpy")
    images = np.random.default_rng(0).standard_normal((32, 32, 32, 3)).astype(np.float32)
    peaks = {}
    for name, run in (("inference", lambda: model.forward(images)),
                      ("with cache", lambda: forward(cfg, model.backend, model.params, images))):  # fmt: skip
        tracemalloc.start()
        try:
            out = run()
            _, peaks[name] = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        del out
    assert peaks["inference"] < 0.4 * peaks["with cache"], peaks
    logits, cache = forward(cfg, model.backend, model.params, images, keep_cache=False)
    assert cache is None
    np.testing.assert_array_equal(logits, model.forward(images))

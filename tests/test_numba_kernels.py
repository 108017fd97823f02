"""Every `numba` kernel against its NumPy specification, on hypothesis-drawn small shapes.

float64 must agree with the reference to 1e-10, relative to the largest reference
value (the kernels only reorder sums, which moves the last few bits). float32 is
compared with the float64 reference on the same inputs; its bounds (FLOAT32_TOL)
come from float32's resolution (6e-8) grown by the length of the sums involved,
and, for GELU, from the rational erf of kernels/numba_gelu.py (6.5e-8 absolute).
Every check also asserts that the kernel left its inputs untouched.

Each kernel file keeps its ladder of variants, plain to fast, in a VARIANTS table;
every variant is checked here against the same specification, and the backend is
checked to run the last one. The ladders of patchify, the optimiser and the head's
ops (numba_patchify, numba_adamw, numba_head) are checked in tests/test_kernel_ladders.py.
"""

import functools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from tinyvit.kernels import (
    numba_adamw,
    numba_attention,
    numba_embed,
    numba_gelu,
    numba_layernorm,
    numba_linear,
    numba_loss,
)

from tinyvit import layers, optim
from tinyvit.backend import get_backend

# 3_flash once more with blocks of 2 rows, so the online softmax meets several key blocks
ATTENTION_VARIANTS = {
    **numba_attention.VARIANTS,
    "3_flash, block 2": (functools.partial(numba_attention.attention_forward_flash, block=2),
                         numba_attention.attention_backward_flash),
}  # fmt: skip


def variants(table):
    return pytest.mark.parametrize("variant", list(table))

# float32 kernel vs the float64 reference, max |error| / max |reference| per output array.
# Sums over <= 64 terms in float32 keep ~1e-6 relative; 2e-5 leaves room for the worst draws.
FLOAT32_TOL = 2e-5
FLOAT64_TOL = 1e-10

seeds = st.integers(0, 2**32 - 1)
dtypes = st.sampled_from([np.float64, np.float32])
small = st.integers(1, 5)


def rel_err(got, want, scale=0.0):
    """max |got - want| / max(max |want|, scale): relative to the output's size, or to `scale`, the
    size of the terms that were summed into it when they cancel to much less (a floor of 1e-30)."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    return np.max(np.abs(got - want), initial=0.0) / max(np.max(np.abs(want), initial=0.0), scale, 1e-30)


def assert_close(name, got, want, dtype, scale=0.0):
    got_arr = np.asarray(got)
    assert got_arr.shape == np.shape(want), f"{name}: shape {got_arr.shape}, expected {np.shape(want)}"
    if np.ndim(got):
        assert got_arr.dtype == dtype, f"{name}: dtype {got_arr.dtype}, expected {np.dtype(dtype)}"
    tol = FLOAT64_TOL if dtype == np.float64 else FLOAT32_TOL
    err = rel_err(got, want, scale)
    assert err <= tol, f"{name} ({np.dtype(dtype)}): relative error {err:.3g} > {tol:g}"


def draw(rng, shape, dtype, scale=1.0):
    """Normal values already rounded to dtype, so the float64 reference sees the same inputs."""
    return (scale * rng.standard_normal(shape)).astype(dtype)


def reference_inputs(*arrays):
    return [a.astype(np.float64) for a in arrays]


def snapshot(*arrays):
    return [a.copy() for a in arrays]


def assert_unchanged(before, after):
    for i, (b, a) in enumerate(zip(before, after)):
        assert np.array_equal(b, a), f"input {i} was modified by the kernel"


@variants(numba_linear.VARIANTS)
@given(seed=seeds, dtype=dtypes, lead=st.lists(small, min_size=1, max_size=2), fin=small, fout=small)
def test_linear_matches_reference(variant, seed, dtype, lead, fin, fout):
    """linear forward (sgemm + the fused bias pass) and backward (two sgemms + the column sums)."""
    rng = np.random.default_rng(seed)
    x, w, b, dout = (draw(rng, s, dtype) for s in ((*lead, fin), (fin, fout), (fout,), (*lead, fout)))
    before = snapshot(x, w, b, dout)
    forward, backward = numba_linear.VARIANTS[variant]
    out, cache = forward(x, w, b)
    grads = backward(dout, cache)
    assert_unchanged(before, [x, w, b, dout])
    x64, w64, b64, d64 = reference_inputs(x, w, b, dout)
    ref_out, ref_cache = layers.linear_forward(x64, w64, b64)
    assert_close("linear out", out, ref_out, dtype)
    for name, g, r in zip(("dx", "dweight", "dbias"), grads, layers.linear_backward(d64, ref_cache)):
        assert_close("linear " + name, g, r, dtype)


@variants(numba_gelu.VARIANTS)
@given(seed=seeds, dtype=dtypes, rows=st.integers(1, 40), fin=small, m=st.integers(1, 12))
def test_linear_gelu_matches_reference(variant, seed, dtype, rows, fin, m):
    """fc1 + exact GELU, with pre-activations spread over [-6, 6] so the erf clamp at +-4 is crossed."""
    rng = np.random.default_rng(seed)
    x, w, dout = draw(rng, (rows, fin), dtype), draw(rng, (fin, m), dtype, 2.0), draw(rng, (rows, m), dtype)
    b = draw(rng, (m,), dtype, 2.0)
    before = snapshot(x, w, b, dout)
    forward, backward = numba_gelu.VARIANTS[variant]
    out, cache = forward(x, w, b)
    grads = backward(dout, cache)
    assert_unchanged(before, [x, w, b, dout])
    x64, w64, b64, d64 = reference_inputs(x, w, b, dout)
    ref_out, ref_cache = layers.linear_gelu_forward(x64, w64, b64)
    # 1_erf_loops's 1 + erf(z / sqrt 2) cancels where z is far negative (the file's docstring): its
    # error there is absolute, so it is measured against the pre-activations' size, not gelu(z)'s ~0
    tail = np.max(np.abs(x64 @ w64 + b64)) if variant == "1_erf_loops" else 0.0
    assert_close("linear_gelu out", out, ref_out, dtype, scale=tail)
    for name, g, r in zip(("dx", "dweight", "dbias"), grads, layers.linear_gelu_backward(d64, ref_cache)):
        assert_close("linear_gelu " + name, g, r, dtype)


def test_float32_gelu_error_is_within_the_documented_bound():
    """gelu and gelu' in float32 (rational erf, float32 arithmetic) stay within 1e-6 (1 + |z|) of the exact values,
    on a dense grid over [-8, 8] that includes the clamp at |z / sqrt 2| = 4."""
    z = np.linspace(-8.0, 8.0, 20001).astype(np.float32)
    one_row = z.reshape(1, -1)
    eye = np.eye(1, dtype=np.float32)
    out, cache = numba_gelu.linear_gelu_forward(eye, one_row, np.zeros_like(z))
    _, _, dz = numba_gelu.linear_gelu_backward(np.ones_like(one_row), cache)  # dbias = gelu'(z)
    ref, ref_cache = layers.gelu_forward(z.astype(np.float64))
    ref_grad = layers.gelu_backward(np.ones_like(ref), ref_cache)
    bound = 1e-6 * (1.0 + np.abs(z.astype(np.float64)))
    assert np.all(np.abs(out[0] - ref) <= bound), f"gelu error up to {np.max(np.abs(out[0] - ref)):.3g}"
    assert np.all(np.abs(dz - ref_grad) <= bound), f"gelu' error up to {np.max(np.abs(dz - ref_grad)):.3g}"


@given(seed=seeds, dtype=dtypes, lead=st.lists(small, min_size=1, max_size=2), d=st.integers(2, 12),
       shift=st.floats(-3, 3))  # fmt: skip
@variants(numba_layernorm.VARIANTS)
def test_layernorm_matches_reference(variant, seed, dtype, lead, d, shift):
    """LayerNorm forward (mean and variance in one read of each row) and backward (xhat recomputed)."""
    rng = np.random.default_rng(seed)
    x = (draw(rng, (*lead, d), np.float64) + shift).astype(dtype)
    w, b, dout = draw(rng, (d,), dtype), draw(rng, (d,), dtype), draw(rng, (*lead, d), dtype)
    before = snapshot(x, w, b, dout)
    forward, backward = numba_layernorm.VARIANTS[variant]
    out, cache = forward(x, w, b)
    grads = backward(dout, cache)
    assert_unchanged(before, [x, w, b, dout])
    x64, w64, b64, d64 = reference_inputs(x, w, b, dout)
    ref_out, ref_cache = layers.layernorm_forward(x64, w64, b64)
    assert_close("layernorm out", out, ref_out, dtype)
    # dx = rstd (g - mean g - xhat mean(g xhat)) can cancel to ~0 (exactly so for D = 2): measure
    # its error against the size of rstd * g, the terms it is made of
    terms = np.max(np.abs(ref_cache.rstd * d64 * w64))
    for name, g, r in zip(("dx", "dweight", "dbias"), grads, layers.layernorm_backward(d64, ref_cache)):
        assert_close("layernorm " + name, g, r, dtype, scale=terms if name == "dx" else 0.0)


@given(seed=seeds, dtype=dtypes, lead=st.lists(small, min_size=1, max_size=2), d=st.integers(2, 12),
       shift=st.floats(-3, 3))  # fmt: skip
@variants(numba_layernorm.ADD_VARIANTS)
def test_add_layernorm_matches_reference(variant, seed, dtype, lead, d, shift):
    """The residual add fused with LayerNorm: s = x + h and LayerNorm(s) out, ds + LayerNorm's dx back;
    s is the float32 sum the separate add would give, and the cache is LayerNorm's of s."""
    rng = np.random.default_rng(seed)
    x, h = (draw(rng, (*lead, d), np.float64) + shift).astype(dtype), draw(rng, (*lead, d), dtype)
    w, b = draw(rng, (d,), dtype), draw(rng, (d,), dtype)
    ds, dy = draw(rng, (*lead, d), dtype), draw(rng, (*lead, d), dtype)
    before = snapshot(x, h, w, b, ds, dy)
    forward, backward = numba_layernorm.ADD_VARIANTS[variant]
    (s, y), cache = forward(x, h, w, b)
    grads = backward((ds, dy), cache)
    assert_unchanged(before, [x, h, w, b, ds, dy])
    assert s.dtype == y.dtype == dtype and np.array_equal(s, x + h), "s is not the residual add x + h"
    x64, h64, w64, b64, ds64, dy64 = reference_inputs(x, h, w, b, ds, dy)
    (ref_s, ref_y), ref_cache = layers.add_layernorm_forward(x64, h64, w64, b64)
    assert_close("add_layernorm s", s, ref_s, dtype)
    assert_close("add_layernorm y", y, ref_y, dtype)
    # as for LayerNorm, dx is measured against the size of the terms it is made of
    terms = np.max(np.abs(ref_cache.rstd * dy64 * w64)) + np.max(np.abs(ds64))
    want = layers.add_layernorm_backward((ds64, dy64), ref_cache)
    for name, g, r in zip(("dx", "dweight", "dbias"), grads, want):
        assert_close("add_layernorm " + name, g, r, dtype, scale=terms if name == "dx" else 0.0)
    # the plain LayerNorm backward runs on the fused forward's cache (the model's final norm does)
    dx, dweight, dbias = get_backend("numba").layernorm_backward(dy, cache)
    for name, g, r in zip(("dx", "dweight", "dbias"), (dx, dweight, dbias), layers.layernorm_backward(dy64, ref_cache)):
        assert_close("layernorm on the fused cache " + name, g, r, dtype, scale=terms if name == "dx" else 0.0)


@given(seed=seeds, dtype=dtypes, batch=st.integers(1, 3), n=st.integers(1, 7), heads=st.integers(1, 3),
       dh=st.integers(1, 4), scale=st.sampled_from([0.5, 3.0]))  # fmt: skip
@variants(ATTENTION_VARIANTS)
def test_attention_matches_reference(variant, seed, dtype, batch, n, heads, dh, scale):
    """Attention per (batch, head): fused scale + softmax forward, the softmax Jacobian backward,
    and the kept probabilities equal the reference's (B, H, N, N)."""
    rng = np.random.default_rng(seed)
    D = heads * dh
    qkv, dout = draw(rng, (batch, n, 3 * D), dtype, scale), draw(rng, (batch, n, D), dtype)
    before = snapshot(qkv, dout)
    forward, backward = ATTENTION_VARIANTS[variant]
    out, cache = forward(qkv, heads)
    dqkv = backward(dout, cache)
    assert_unchanged(before, [qkv, dout])
    q64, d64 = reference_inputs(qkv, dout)
    ref_out, ref_cache = layers.attention_forward(q64, heads)
    assert_close("attention out", out, ref_out, dtype)
    assert_close("attention probs", cache.probs, ref_cache.probs, dtype)
    assert_close("attention dqkv", dqkv, layers.attention_backward(d64, ref_cache), dtype)


@pytest.mark.parametrize("variant, add_variant", list(zip(numba_embed.VARIANTS, numba_embed.ADD_VARIANTS, strict=True)))
@given(seed=seeds, dtype=dtypes, batch=small, n=small, d=small)
def test_embed_class_token_and_add_match_reference(variant, add_variant, seed, dtype, batch, n, d):
    """Class token + position embedding, the class-token read-out (the backend's) and the residual add."""
    rng = np.random.default_rng(seed)
    x, cls, pos = draw(rng, (batch, n, d), dtype), draw(rng, (d,), dtype), draw(rng, (n + 1, d), dtype)
    dout, dcls_row = draw(rng, (batch, n + 1, d), dtype), draw(rng, (batch, d), dtype)
    before = snapshot(x, cls, pos, dout, dcls_row)
    forward, backward = numba_embed.VARIANTS[variant]
    out, cache = forward(x, cls, pos)
    grads = backward(dout, cache)
    numba_backend = get_backend("numba")
    row, row_cache = numba_backend.class_token_forward(out)
    drow = numba_backend.class_token_backward(dcls_row, row_cache)
    total = numba_embed.ADD_VARIANTS[add_variant](out, dout)
    assert_unchanged(before, [x, cls, pos, dout, dcls_row])
    x64, c64, p64, d64, r64 = reference_inputs(x, cls, pos, dout, dcls_row)
    ref_out, ref_cache = layers.embed_forward(x64, c64, p64)
    assert_close("embed out", out, ref_out, dtype)
    for name, g, r in zip(("dx", "dcls", "dpos"), grads, layers.embed_backward(d64, ref_cache)):
        assert_close("embed " + name, g, r, dtype)
    ref_row, ref_row_cache = layers.class_token_forward(ref_out)
    assert_close("class token", row, ref_row, dtype)
    assert_close("class token dx", drow, layers.class_token_backward(r64, ref_row_cache), dtype)
    assert_close("add", total, ref_out + d64, dtype)


def test_the_backend_runs_each_files_last_variant():
    """The ladder's last rung is what `get_backend("numba")` runs; the tables are ordered plain to fast."""
    backend = get_backend("numba")
    pairs = {
        numba_linear: (backend.linear_forward, backend.linear_backward),
        numba_gelu: (backend.linear_gelu_forward, backend.linear_gelu_backward),
        numba_layernorm: (backend.layernorm_forward, backend.layernorm_backward),
        numba_attention: (backend.attention_forward, backend.attention_backward),
        numba_embed: (backend.embed_forward, backend.embed_backward),
        numba_loss: (backend.cross_entropy_forward, backend.cross_entropy_backward),
    }
    for module, ops in pairs.items():
        names = list(module.VARIANTS)
        assert names == sorted(names, key=lambda n: int(n.split("_")[0])), f"{module.__name__}: {names}"
        assert module.VARIANTS[names[-1]] == ops, f"{module.__name__}: the backend does not run {names[-1]}"
    assert list(numba_embed.ADD_VARIANTS.values())[-1] is backend.add
    names = list(numba_layernorm.ADD_VARIANTS)
    assert names == sorted(names, key=lambda n: int(n.split("_")[0])), f"numba_layernorm.ADD_VARIANTS: {names}"
    fused = (backend.add_layernorm_forward, backend.add_layernorm_backward)
    assert numba_layernorm.ADD_VARIANTS[names[-1]] == fused, f"the backend does not run add_layernorm {names[-1]}"


def test_flash_attention_keeps_no_square_array_and_recomputes_the_maps():
    """3_flash's cache holds (B, H, N) log-sum-exps, not (B, H, N, N) probabilities; asked for the maps,
    it recomputes them equal to the reference's (what the lessons draw)."""
    rng = np.random.default_rng(0)
    qkv = draw(rng, (2, 9, 3 * 4), np.float64)
    _, cache = numba_attention.attention_forward_flash(qkv, 2, block=4)
    square = [f for f, a in zip(cache._fields, cache) if isinstance(a, np.ndarray) and a.ndim == 4]
    assert not square, f"the cache keeps square arrays {square}"
    assert cache.lse.shape == (2, 2, 9)
    _, ref_cache = layers.attention_forward(qkv, 2)
    assert_close("attention maps", cache.probs, ref_cache.probs, np.float64)
    with pytest.raises(ValueError, match="block must be at least 1"):
        numba_attention.attention_forward_flash(qkv, 2, block=0)


@given(seed=seeds, dtype=dtypes, batch=st.integers(1, 3), n=st.integers(1, 7), heads=st.integers(1, 3),
       dh=st.integers(1, 4))  # fmt: skip
@pytest.mark.parametrize("rung", ["3_flash, block 2", "3_flash", "4_direct", "5_kept"])
def test_attention_with_a_bias_matches_reference(rung, seed, dtype, batch, n, heads, dh):
    """The fused rungs with a bias (H, N, N) added to the scores: out, dqkv, and dbias, the scores'
    gradient summed over the batch (the relative position bias's path)."""
    rng = np.random.default_rng(seed)
    D = heads * dh
    qkv, bias, dout = draw(rng, (batch, n, 3 * D), dtype), draw(rng, (heads, n, n), dtype), draw(rng, (batch, n, D), dtype)
    before = snapshot(qkv, bias, dout)
    forward = ATTENTION_VARIANTS[rung][0]
    out, cache = forward(qkv, heads, bias=bias)
    dqkv, dscores = numba_attention._grads(dout, cache, with_dscores=True)
    assert_unchanged(before, [qkv, bias, dout])
    q64, b64, d64 = reference_inputs(qkv, bias, dout)
    ref_out, ref_cache = layers.attention_bias_forward(q64, b64, heads)
    ref_dqkv, ref_dbias = layers.attention_bias_backward(d64, ref_cache)
    assert_close("attention out", out, ref_out, dtype)
    assert_close("attention probs", cache.probs, ref_cache.probs, dtype)
    assert_close("attention dqkv", dqkv, ref_dqkv, dtype)
    # dbias_hij = sum_b probs (dprobs - delta): the size of its terms, for when they cancel (n = 1: to 0)
    v = q64[..., 2 * D :].reshape(batch, n, heads, dh).transpose(0, 2, 1, 3)
    dprobs = d64.reshape(batch, n, heads, dh).transpose(0, 2, 1, 3) @ v.transpose(0, 1, 3, 2)
    delta = (ref_cache.probs * dprobs).sum(axis=-1, keepdims=True)
    terms = (ref_cache.probs * (np.abs(dprobs) + np.abs(delta))).sum(axis=0).max()
    assert_close("attention dbias", dscores.sum(axis=0), ref_dbias, dtype, scale=terms)


def test_add_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="equal shapes"):
        numba_embed.add(np.zeros((2, 3)), np.zeros((3, 2)))


@variants(numba_loss.VARIANTS)
@given(seed=seeds, dtype=dtypes, batch=small, k=st.integers(2, 6), smoothing=st.sampled_from([0.0, 0.1, 0.5]))
def test_cross_entropy_matches_reference(variant, seed, dtype, batch, k, smoothing):
    """Loss (log-sum-exp with the row max) and dlogits, with and without label smoothing."""
    rng = np.random.default_rng(seed)
    logits, labels = draw(rng, (batch, k), dtype, 4.0), rng.integers(0, k, batch)
    before = snapshot(logits, labels)
    forward, backward = numba_loss.VARIANTS[variant]
    loss, cache = forward(logits, labels, smoothing)
    dlogits = backward(0.7, cache)
    assert_unchanged(before, [logits, labels])
    ref_loss, ref_cache = layers.cross_entropy_forward(logits.astype(np.float64), labels, smoothing)
    assert isinstance(loss, float)
    assert_close("loss", loss, ref_loss, dtype)
    assert_close("dlogits", dlogits, layers.cross_entropy_backward(0.7, ref_cache), dtype)


# Rows where argmax's rules decide: a tie (the first wins), a NaN (the first NaN is the largest).
ARGMAX_RULES = (np.array([[1.0, 3.0, 3.0], [2.0, np.nan, 5.0], [np.nan, 0.0, np.nan], [0.0, -1.0, -2.0]]),
                np.array([1, 1, 0, 2]))  # the first three rows are right, the last one wrong  # fmt: skip


def test_count_correct_follows_numpy_argmax_on_ties_and_nans():
    logits, labels = ARGMAX_RULES
    assert layers.count_correct(logits, labels) == 3
    assert numba_loss.count_correct(logits, labels) == 3
    assert numba_loss.count_correct(logits, labels + np.array([1, 0, 0, 0])) == 2


@given(seed=seeds, dtype=dtypes, batch=st.integers(0, 40), k=small)
def test_count_correct_matches_reference(seed, dtype, batch, k):
    """Integer-valued logits so ties are common; labels drawn at random."""
    rng = np.random.default_rng(seed)
    logits = rng.integers(-2, 3, size=(batch, k)).astype(dtype)
    labels = rng.integers(0, k, size=batch)
    before = snapshot(logits, labels)
    got = numba_loss.count_correct(logits, labels)
    assert_unchanged(before, [logits, labels])
    assert got == layers.count_correct(logits, labels) == int((logits.argmax(1) == labels).sum())


def test_cross_entropy_rejects_labels_out_of_range():
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\)"):
        numba_loss.cross_entropy_forward(np.zeros((2, 3)), np.array([0, 3]))


def test_kernels_use_the_specifications_caches_and_eps():
    """One definition of each: the numba kernels return the specification's cache records."""
    from tinyvit.layers.attention import AttentionCache
    from tinyvit.layers.layernorm import EPS
    from tinyvit.layers.linear import LinearCache
    from tinyvit.layers.loss import CrossEntropyCache

    x = np.ones((2, 3, 6))
    assert type(numba_linear.linear_forward(x, np.ones((6, 4)), np.zeros(4))[1]) is LinearCache
    # the attention variants that keep the probabilities keep them in the specification's record;
    # 3_flash keeps log-sum-exps instead, a cache of its own (FlashAttentionCache)
    for name in ("1_loops", "2_blas_heads", "5_kept"):
        assert type(numba_attention.VARIANTS[name][0](x, 2)[1]) is AttentionCache, name
    assert type(numba_loss.cross_entropy_forward(np.zeros((2, 3)), np.array([0, 2]))[1]) is CrossEntropyCache
    assert numba_layernorm.layernorm_forward.__defaults__ == (EPS,)


def test_elementwise_kernels_take_arrays_of_any_memory_layout():
    """A transposed (Fortran-ordered) or sliced parameter gives the specification's result, not a
    write into a temporary copy: AdamW's new parameter and moments, scale and add. Sizes below and
    above the kernels' parallel threshold."""
    rng = np.random.default_rng(0)
    hp = optim.AdamWStep(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.05, step=3)
    for rows, cols in [(6, 5), (300, 210)]:
        grad, m = rng.standard_normal((2, rows, cols))
        v = np.abs(rng.standard_normal((rows, cols)))
        transposed = rng.standard_normal((cols, rows)).T
        sliced = rng.standard_normal((rows, cols + 7))[:, 3 : cols + 3]
        for param in (transposed, sliced):
            assert not param.flags.c_contiguous
            got = numba_adamw.adamw_update(param, grad, m, v, hp)
            want = optim.adamw_update(np.ascontiguousarray(param), grad, m, v, hp)
            for g, w in zip(got, want, strict=True):
                np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-14)
            np.testing.assert_allclose(numba_adamw.scale([param], 0.5)[0], param * 0.5, rtol=1e-15)
            np.testing.assert_allclose(numba_embed.add(param, grad), param + grad, rtol=1e-15)


def test_mimetic_init_trains_the_same_on_numba_as_on_the_specification():
    """Mimetic init factors products into transposed arrays; every backend gets C-ordered copies,
    and three steps agree with the specification's."""
    from tinyvit import ViT, get_preset
    from tinyvit.optim import AdamW

    cfg = get_preset("testing", classifier="gap")
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((6, 8, 8, 3)), rng.integers(0, 3, 6)
    losses = {}
    for backend in ("numpy", "numba"):
        model = ViT(cfg, seed=0, dtype=np.float64, backend=backend, attention_init="mimetic")
        assert all(p.flags.c_contiguous for p in model.params.values())
        opt = AdamW(model, lr=1e-2, weight_decay=0.05, clip_norm=1.0)
        losses[backend] = []
        for _ in range(3):
            loss, grads = model.loss_and_grads(x, y)
            opt.step(grads, 1e-2)
            losses[backend].append(float(loss))
        losses[backend + " params"] = model.numpy_params()
    np.testing.assert_allclose(losses["numba"], losses["numpy"], rtol=1e-10)
    for k, w in losses["numpy params"].items():  # atol: Adam turns ~1e-17 rounding in the key bias's
        # zero gradient into steps of ~lr * 1e-17 / eps (test_conformance.ADAM_FLOAT64_TOL)
        np.testing.assert_allclose(losses["numba params"][k], w, rtol=1e-8, atol=1e-9, err_msg=k)

"""Properties of the layers that hold by construction, checked on hypothesis-drawn inputs.

The gradient checks prove each backward matches its forward; these prove each
forward is the function it claims to be: softmax gives distributions, LayerNorm
normalises, patchify is a rearrangement with a known layout, self-attention
without position embedding does not care about token order, cross-entropy is
-log of the label's probability, GELU is x * Phi(x). They run on the nasty
values hypothesis likes (ties, zeros, constant rows), which the finite
differences cannot use.
"""

import math

import numpy as np
import pytest
import strategies as S
from hypothesis import given
from hypothesis import strategies as st

from tinyvit import layers
from tinyvit.layers.layernorm import EPS


@given(data=st.data())
def test_softmax_rows_are_distributions(data):
    """Every softmax row lies in (0, 1] and sums to 1, even for logits far apart (the max is subtracted)."""
    shape = data.draw(st.tuples(S.batch, S.tokens, S.width))
    x = data.draw(S.float_arrays(shape, elements=st.floats(-100.0, 100.0)))
    p = layers.softmax(x)
    assert p.shape == x.shape
    assert np.all(p > 0.0) and np.all(p <= 1.0), f"softmax left (0, 1]: min {p.min()}, max {p.max()}"
    np.testing.assert_allclose(p.sum(axis=-1), 1.0, rtol=0, atol=1e-14)


@given(data=st.data())
def test_layernorm_output_has_zero_mean_and_unit_variance(data):
    """With weight 1 and bias 0 each row has mean 0 and variance var / (var + eps).

    That is 1 for a row with spread, and 0 for a constant row: eps keeps the
    division finite and, for rows far wider than sqrt(eps) = 1e-3, costs nothing.
    """
    B, N, D = data.draw(S.batch), data.draw(S.tokens), data.draw(S.width)
    x = data.draw(S.float_arrays((B, N, D)))
    out, _ = layers.layernorm_forward(x, np.ones(D), np.zeros(D))
    var = x.var(axis=-1)
    np.testing.assert_allclose(out.mean(axis=-1), 0.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(out.var(axis=-1), var / (var + EPS), rtol=1e-9, atol=1e-12)


@given(data=st.data())
def test_layernorm_applies_weight_then_bias(data):
    """The affine part is out = xhat * weight + bias, column by column."""
    B, N, D = data.draw(S.batch), data.draw(S.tokens), data.draw(S.width)
    x = data.draw(S.float_arrays((B, N, D)))
    weight, bias = data.draw(S.float_arrays((D,))), data.draw(S.float_arrays((D,)))
    xhat, _ = layers.layernorm_forward(x, np.ones(D), np.zeros(D))
    out, _ = layers.layernorm_forward(x, weight, bias)
    np.testing.assert_allclose(out, xhat * weight + bias, rtol=1e-12, atol=1e-12)


@given(data=st.data())
def test_unpatchify_inverts_patchify(data):
    """patchify then unpatchify gives back the very same images (a rearrangement loses nothing)."""
    patch, side = data.draw(S.patch_and_image())
    images = data.draw(S.float_arrays((data.draw(S.batch), side, side, data.draw(S.channels))))
    patches = layers.patchify(images, patch)
    assert patches.shape == (images.shape[0], (side // patch) ** 2, patch * patch * images.shape[3])
    assert np.array_equal(layers.unpatchify(patches, patch, side, side, images.shape[3]), images)


def test_patchify_layout_on_one_pixel():
    """A 4x4 one-channel image cut into 2x2 patches: pixel (row 1, column 2) lands in patch 1, position 2.

    Patches run row-major over the grid: patch 0 is top-left, patch 1 top-right.
    Pixel (1, 2) is in the top-right patch, at row 1, column 0 inside it, and
    within a patch the vector runs over (row, column, channel): position
    1 * 2 + 0 = 2.
    """
    image = np.zeros((1, 4, 4, 1))
    image[0, 1, 2, 0] = 7.0
    patches = layers.patchify(image, 2)
    assert patches.shape == (1, 4, 4)
    assert patches[0, 1, 2] == 7.0
    assert np.count_nonzero(patches) == 1


@given(data=st.data())
def test_patchify_layout_every_pixel(data):
    """Pixel (r, c, ch) goes to patch (r // P) * g + c // P, position ((r % P) * P + c % P) * C + ch.

    Each pixel holds its own index, so every pixel's destination is checked.
    """
    patch, side = data.draw(S.patch_and_image())
    B, C = data.draw(S.batch), data.draw(S.channels)
    images = np.arange(B * side * side * C, dtype=np.float64).reshape(B, side, side, C)
    patches = layers.patchify(images, patch)
    grid = side // patch
    for b, r, c, ch in np.ndindex(images.shape):
        where = (b, (r // patch) * grid + c // patch, ((r % patch) * patch + c % patch) * C + ch)
        assert patches[where] == images[b, r, c, ch], f"pixel {(b, r, c, ch)} is not at {where}"


def _attention_sublayer(x, p, heads):
    """proj(attention(qkv(norm1(x)))): the attention half of a block, without the residual."""
    h, _ = layers.layernorm_forward(x, p["norm.weight"], p["norm.bias"])
    h, _ = layers.linear_forward(h, p["qkv.weight"], p["qkv.bias"])
    h, _ = layers.attention_forward(h, heads)
    h, _ = layers.linear_forward(h, p["proj.weight"], p["proj.bias"])
    return h


def _sublayer_params(rng, D):
    return {
        "norm.weight": rng.normal(size=D), "norm.bias": rng.normal(size=D),
        "qkv.weight": rng.normal(size=(D, 3 * D)), "qkv.bias": rng.normal(size=3 * D),
        "proj.weight": rng.normal(size=(D, D)), "proj.bias": rng.normal(size=D),
    }  # fmt: skip


@given(data=st.data())
def test_self_attention_is_permutation_equivariant(data):
    """Permuting the tokens permutes the attention sublayer's output the same way.

    Nothing in LN -> qkv -> attention -> proj looks at a token's index: every
    token is treated alike and attention sums over all of them. This is why a
    ViT needs a position embedding to know where a patch came from.
    """
    B, N = data.draw(S.batch), data.draw(S.tokens)
    heads, D = data.draw(S.heads_and_width())
    x = data.draw(S.generic_arrays((B, N, D)))
    perm = np.array(data.draw(st.permutations(range(N))))
    p = _sublayer_params(np.random.default_rng(data.draw(S.seeds)), D)
    out = _attention_sublayer(x, p, heads)
    out_of_permuted = _attention_sublayer(x[:, perm], p, heads)
    np.testing.assert_allclose(out_of_permuted, out[:, perm], rtol=1e-10, atol=1e-10)


def test_position_embedding_breaks_permutation_equivariance():
    """Add a position embedding first and swapping two tokens no longer just swaps the outputs."""
    rng = np.random.default_rng(0)
    B, N, D, heads = 1, 4, 6, 2
    x, pos = rng.normal(size=(B, N, D)), rng.normal(size=(N, D))
    p = _sublayer_params(rng, D)
    perm = np.array([1, 0, 2, 3])
    out = _attention_sublayer(x + pos, p, heads)
    out_of_permuted = _attention_sublayer(x[:, perm] + pos, p, heads)
    assert not np.allclose(out_of_permuted, out[:, perm], rtol=1e-3, atol=1e-3)


@given(data=st.data())
def test_cross_entropy_is_minus_log_softmax_at_the_label(data):
    """Without smoothing the loss is mean_b -log softmax(logits_b)[label_b], written out here term by term."""
    B, K = data.draw(S.batch), data.draw(S.classes)
    logits = data.draw(S.float_arrays((B, K)))
    labels = data.draw(S.labels(B, K))
    loss, _ = layers.cross_entropy_forward(logits, labels, 0.0)
    nll = [-(logits[b, y] - math.log(sum(math.exp(z) for z in logits[b]))) for b, y in enumerate(labels)]
    assert loss == pytest.approx(sum(nll) / B, rel=1e-12, abs=1e-12)


@given(data=st.data())
def test_label_smoothing_mixes_in_the_mean_over_classes(data):
    """With smoothing s the loss is (1 - s) * nll + s * mean_k(-log p_k): the target puts s / K on every class."""
    B, K = data.draw(S.batch), data.draw(S.classes)
    logits = data.draw(S.float_arrays((B, K)))
    labels = data.draw(S.labels(B, K))
    s = data.draw(S.smoothing)
    loss, _ = layers.cross_entropy_forward(logits, labels, s)
    log_p = np.log(layers.softmax(logits))
    nll = -log_p[np.arange(B), labels].mean()
    uniform = -log_p.mean(axis=1).mean()
    assert loss == pytest.approx((1 - s) * nll + s * uniform, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize(
    "x, phi",
    [(0.0, 0.5), (1.0, 0.8413447460685429), (-1.0, 0.15865525393145707), (2.0, 0.9772498680518208),
     (-2.0, 0.022750131948179195), (3.0, 0.9986501019683699)],
)  # fmt: skip
def test_gelu_at_known_values(x, phi):
    """gelu(x) = x * Phi(x), with Phi(x) the standard normal CDF from a table of known values."""
    out, _ = layers.gelu_forward(np.array([x]))
    assert out[0] == pytest.approx(x * phi, rel=1e-15, abs=1e-15)


@given(x=st.floats(-5.0, 5.0))
def test_gelu_matches_x_times_normal_cdf(x):
    """gelu(x) = x * Phi(x) with Phi written through erfc, an independent form: Phi(x) = erfc(-x / sqrt 2) / 2."""
    out, _ = layers.gelu_forward(np.array([x]))
    expected = x * 0.5 * math.erfc(-x / math.sqrt(2.0))
    assert out[0] == pytest.approx(expected, rel=1e-9, abs=1e-15)


def _float32_cases():
    """(name, forward, backward, inputs) for every layer, in float32."""
    rng = np.random.default_rng(0)

    def f32(*shape):
        return rng.normal(size=shape).astype(np.float32)

    labels = np.array([0, 2])
    return [
        ("linear", layers.linear_forward, layers.linear_backward, [f32(2, 3, 4), f32(4, 5), f32(5)]),
        ("gelu", layers.gelu_forward, layers.gelu_backward, [f32(2, 3, 4)]),
        ("linear_gelu", layers.linear_gelu_forward, layers.linear_gelu_backward, [f32(2, 3, 4), f32(4, 5), f32(5)]),
        ("embed", layers.embed_forward, layers.embed_backward, [f32(2, 3, 4), f32(4), f32(4, 4)]),
        ("class_token", layers.class_token_forward, layers.class_token_backward, [f32(2, 3, 4)]),
        ("layernorm", layers.layernorm_forward, layers.layernorm_backward, [f32(2, 3, 4), f32(4), f32(4)]),
        ("attention", lambda qkv: layers.attention_forward(qkv, 2), layers.attention_backward, [f32(2, 3, 12)]),
        ("cross_entropy", lambda z: layers.cross_entropy_forward(z, labels), layers.cross_entropy_backward,
         [f32(2, 3)]),
    ]  # fmt: skip


@pytest.mark.parametrize("name, forward, backward, inputs", [pytest.param(*c, id=c[0]) for c in _float32_cases()])
def test_float32_layers_stay_float32(name, forward, backward, inputs):
    """A float32 forward and backward give float32 arrays: a float32 model must not turn into float64.

    Under NumPy 2's promotion rules a NumPy float64 scalar (such as 1 / np.sqrt(Dh))
    turns a float32 array into float64, while a Python float does not.
    """
    out, cache = forward(*inputs)
    if np.ndim(out) == 0:
        dout = 1.0
    else:
        assert out.dtype == np.float32, f"{name} forward gave {out.dtype}, expected float32"
        dout = np.ones_like(out)
    grads = backward(dout, cache)
    for i, g in enumerate(grads if isinstance(grads, tuple) else (grads,)):
        assert g.dtype == np.float32, f"{name} backward gave gradient {i} as {g.dtype}, expected float32"

"""Every layer's hand-written backward against float64 finite differences.

Each test draws small shapes and bounded values with hypothesis, runs the
layer forward, backward with a random upstream gradient, and compares every
gradient with the centred finite difference of sum(out * dout) (see
tinyvit/gradcheck.py). check_layer also checks that neither forward nor backward
wrote into any input.

How the tolerances were chosen (tinyvit/gradcheck.py holds the numbers). An op
that is linear in the checked input has no truncation error, so it is checked
with a step of h = 1 and only the rounding of its outputs remains: 1e-10 or
tighter. A nonlinear op (GELU, softmax, LayerNorm) needs a small step,
h = 1e-6, whose difference quotient carries ~1e-10 of absolute noise; its
worst relative error comes from the rare gradient entry that is itself tiny.
Such entries are rare, so the worst error grows slowly with the number of
draws; each tolerance sits above the worst of several thousand random draws
(benchmarks/gradcheck_report.py prints fresh measurements) and at least two
orders of magnitude below what a wrong term in a backward pass gives (1e-2 to 1).
"""

from functools import partial

import numpy as np
import strategies as S
from gradcheck import STEP, TOLERANCE, check_layer, on_grid
from hypothesis import given
from hypothesis import strategies as st

from tinyvit import layers


@given(data=st.data())
def test_patchify_backward_matches_finite_differences(data):
    """patchify_backward (unpatchify) is the gradient of patchify. Tolerance 1e-12, step h = 1.

    Patchify only moves numbers: it is linear, the difference quotient with h = 1
    is exact but for the rounding of (x + 1) - (x - 1), a few eps. Hypothesis
    picks the pixel values themselves, ties and zeros included.
    """
    patch, side = data.draw(S.patch_and_image())
    shape = (data.draw(S.batch), side, side, data.draw(S.channels))
    images = data.draw(S.float_arrays(shape))
    check_layer(
        lambda x: layers.patchify_forward(x, patch),
        layers.patchify_backward,
        [images], tol=TOLERANCE["patchify"], h=STEP["patchify"], names=["images"],
    )  # fmt: skip


@given(data=st.data())
def test_linear_backward_matches_finite_differences(data):
    """linear_backward gives dx, dweight, dbias of x @ W + b. Tolerance 1e-10, step h = 1.

    x @ W + b is linear in each of x, W and b on its own, so the difference
    quotient has no truncation error and h = 1 leaves only the rounding of the
    outputs (~eps * |out|). Measured worst: ~7e-12, on gradient entries a few
    hundred times smaller than the outputs they are summed from.
    """
    B, N = data.draw(S.batch), data.draw(S.tokens)
    d_in, d_out = data.draw(S.width), data.draw(S.width)
    x = data.draw(S.generic_arrays((B, N, d_in)))
    weight = data.draw(S.generic_arrays((d_in, d_out)))
    bias = data.draw(S.generic_arrays((d_out,)))
    check_layer(
        layers.linear_forward, layers.linear_backward, [x, weight, bias],
        tol=TOLERANCE["linear"], h=STEP["linear"], names=["x", "weight", "bias"],
    )  # fmt: skip


@given(data=st.data())
def test_gelu_backward_matches_finite_differences(data):
    """gelu_backward is Phi(x) + x phi(x). Tolerance 1e-5, step h = 1e-6.

    GELU is smooth (truncation h^2 |f'''| / 6 ~ 1e-13), so rounding sets the
    error, largest where the derivative is small: it crosses zero near x = -0.75
    and fades in the negative tail. Inputs stay in [-4, 4]: further out the erf
    form loses the digits the difference needs (1 + erf(x / sqrt 2) cancels).
    Measured worst over 3000 draws: ~2e-6.
    """
    shape = data.draw(st.tuples(S.batch, S.tokens, S.width))
    x = data.draw(S.generic_arrays(shape, -4.0, 4.0))
    check_layer(layers.gelu_forward, layers.gelu_backward, [x], tol=TOLERANCE["gelu"], h=STEP["gelu"], names=["x"])


@given(data=st.data())
def test_linear_gelu_backward_matches_finite_differences(data):
    """linear_gelu_backward gives dx, dweight, dbias of gelu(x @ W + b). Tolerance 3e-4, step h = 1e-6.

    The weights are scaled by 1 / d_in so the pre-activations stay in [-2, 2],
    away from GELU's far negative tail (see the GELU test). The worst entries
    are those of units near z = -0.75, where GELU's slope, and so every
    gradient through that unit, passes through zero. Measured worst over 3000
    draws: 5e-5 to 8e-5.
    """
    B, N = data.draw(S.batch), data.draw(S.tokens)
    d_in, d_out = data.draw(S.width), data.draw(S.width)
    x = data.draw(S.generic_arrays((B, N, d_in), -1.0, 1.0))
    weight = data.draw(S.generic_arrays((d_in, d_out), -1.0, 1.0)) / d_in
    bias = data.draw(S.generic_arrays((d_out,), -1.0, 1.0))
    check_layer(
        layers.linear_gelu_forward, layers.linear_gelu_backward, [x, weight, bias],
        tol=TOLERANCE["linear_gelu"], h=STEP["linear_gelu"], names=["x", "weight", "bias"],
    )  # fmt: skip


@given(data=st.data())
def test_embed_backward_matches_finite_differences(data):
    """embed_backward: dx is dout without row 0; dcls and dpos sum over the batch. Tolerance 1e-10, step h = 1.

    Prepending the class token and adding the position embedding are linear, so
    only the rounding of the additions remains (measured worst ~6e-13, where a
    batch sum of dout nearly cancels). Hypothesis picks the values.
    """
    B, N, D = data.draw(S.batch), data.draw(S.tokens), data.draw(S.width)
    x = data.draw(S.float_arrays((B, N - 1, D)))
    cls_token = data.draw(S.float_arrays((D,)))
    pos_embed = data.draw(S.float_arrays((N, D)))
    check_layer(
        layers.embed_forward, layers.embed_backward, [x, cls_token, pos_embed],
        tol=TOLERANCE["embed"], h=STEP["embed"], names=["x", "cls_token", "pos_embed"],
    )  # fmt: skip


@given(data=st.data())
def test_class_token_backward_matches_finite_differences(data):
    """class_token_backward puts dout in row 0 and zeros elsewhere. Tolerance 1e-12, step h = 1 (a selection)."""
    B, N, D = data.draw(S.batch), data.draw(S.tokens), data.draw(S.width)
    x = data.draw(S.float_arrays((B, N, D)))
    check_layer(
        layers.class_token_forward, layers.class_token_backward, [x],
        tol=TOLERANCE["class_token"], h=STEP["class_token"], names=["x"],
    )  # fmt: skip


@given(data=st.data())
def test_layernorm_backward_matches_finite_differences(data):
    """layernorm_backward gives dx, dweight, dbias. Tolerance 1e-4, step h = 1e-6.

    The worst entries are those of dx that the normalisation nearly cancels:
    moving an entry that is far from the rest of its row mostly rescales the
    row, which LayerNorm undoes. Widths start at 3: with D = 2 the output is
    +-1 up to eps for any row, so every dx entry is that kind (~1e-8).
    Measured worst over 3000 draws: ~1e-5.
    """
    B, N, D = data.draw(S.batch), data.draw(S.tokens), data.draw(st.integers(3, 8))
    x = data.draw(S.generic_arrays((B, N, D)))
    weight = data.draw(S.generic_arrays((D,)))
    bias = data.draw(S.generic_arrays((D,)))
    check_layer(
        layers.layernorm_forward, layers.layernorm_backward, [x, weight, bias],
        tol=TOLERANCE["layernorm"], h=STEP["layernorm"], names=["x", "weight", "bias"],
    )  # fmt: skip


@given(data=st.data())
def test_add_layernorm_backward_matches_finite_differences(data):
    """add_layernorm_backward gives ds + LayerNorm's dx (the gradient of x and of h), dweight, dbias.

    Tolerance 3e-4, step h = 2^-17, inputs on a grid of 2^-20 (tinyvit.gradcheck.add_layernorm_case
    says why: s = x + h and x +- h stay exact). Both outputs, s and y, get a random upstream
    gradient; the worst entries are those where ds and LayerNorm's dx nearly cancel.
    """
    B, N, D = data.draw(S.batch), data.draw(S.tokens), data.draw(st.integers(3, 8))
    x, h = (on_grid(data.draw(S.generic_arrays((B, N, D)))) for _ in range(2))
    weight, bias = (on_grid(data.draw(S.generic_arrays((D,)))) for _ in range(2))

    def backward(dout, cache):
        dx, dweight, dbias = layers.add_layernorm_backward(dout, cache)
        return dx, dx, dweight, dbias  # s = x + h hands x and h the same gradient

    check_layer(
        layers.add_layernorm_forward, backward, [x, h, weight, bias],
        tol=TOLERANCE["add_layernorm"], h=STEP["add_layernorm"], names=["x", "h", "weight", "bias"],
    )  # fmt: skip


@given(data=st.data())
def test_attention_backward_matches_finite_differences(data):
    """attention_backward gives dqkv through softmax(q k^T / sqrt(Dh)) v, for every head. Tolerance 3e-4, h = 1e-6.

    The loosest bound here: dq and dk come through the softmax Jacobian, whose
    terms cancel for keys the softmax nearly ignores, leaving entries 1e-5 of
    their neighbours; the ~1e-10 noise of the difference is 1e-5 of those.
    Measured worst over 1000-3000 draws: 4e-5 to 7e-5 (an entry of ~1e-6 next
    to a median of 0.2). A wrong term in backward gives errors of 1e-2 or more.
    """
    B, N = data.draw(S.batch), data.draw(S.tokens)
    heads, D = data.draw(S.heads_and_width())
    qkv = data.draw(S.generic_arrays((B, N, 3 * D)))
    check_layer(
        partial(layers.attention_forward, heads=heads), layers.attention_backward, [qkv],
        tol=TOLERANCE["attention"], h=STEP["attention"], names=["qkv"],
    )  # fmt: skip


@given(data=st.data(), smooth=st.booleans())
def test_cross_entropy_backward_matches_finite_differences(data, smooth):
    """cross_entropy_backward gives dlogits = dloss (probs - targets) / B, with and without smoothing.

    Tolerance 1e-4, step h = 1e-6. The loss is one number of order 1, so its
    difference quotient carries ~2e-10 of noise; an entry of dlogits is tiny
    when a class's probability nearly equals its target (a class the model all
    but rules out, or, with smoothing, one whose probability is close to s / K).
    Measured worst over 3000 draws: ~2e-5. The labels carry no gradient.
    """
    B, K = data.draw(S.batch), data.draw(S.classes)
    logits = data.draw(S.generic_arrays((B, K), -4.0, 4.0))
    labels = data.draw(S.labels(B, K))
    smoothing = data.draw(S.smoothing) if smooth else 0.0
    labels_before = labels.copy()
    check_layer(
        lambda z: layers.cross_entropy_forward(z, labels, smoothing), layers.cross_entropy_backward, [logits],
        tol=TOLERANCE["cross_entropy"], h=STEP["cross_entropy"], names=["logits"],
    )  # fmt: skip
    assert np.array_equal(labels, labels_before), "cross-entropy wrote into the labels"

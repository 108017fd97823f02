"""Gradient checks: every hand-written backward against finite differences, and a CLI to run them.

    python -m tinyvit.gradcheck [LAYER ...] [--backend NAME] [--break LAYER] [--cases N] [--seed S]

runs the checks of the named layers (all of them, and the whole model, by
default) and prints, for each, what the check proves, the worst relative error
against its tolerance and the finite-difference step it used. `--break LAYER`
swaps a deliberately wrong term into that layer's backward (BREAKS below) so
that a learner sees what a failing check looks like; the exit code is 1 when
any check fails. The tests (tests/test_gradcheck_layers.py, tests/test_model.py)
and benchmarks/gradcheck_report.py use the same helpers:

- `rel_error(a, b)`: how far apart two gradients are, relative to their size;
- `numerical_grad(f, x, dout, h)`: the gradient of sum(f(x) * dout) by centred
  finite differences, one entry of x at a time;
- `check_layer(forward, backward, inputs, tol)`: run a layer forward and
  backward with a random upstream gradient, compare every gradient it returns
  with the numerical one, and check that nothing was written into the inputs;
- `directional_errors(loss, params, grads)`: a whole model, one parameter
  tensor at a time, along a random direction.

Why contract with a random dout. A layer's backward computes a vector-Jacobian
product dout^T J, not the Jacobian itself. Checking it against finite
differences of the scalar sum(f(x) * dout), with dout random, tests every
column of J at once: an error in any output's derivative shows up, whereas
dout = ones would let errors that cancel across outputs slip through.

Why float64 and h ~ 1e-6. The centred difference (f(x+h) - f(x-h)) / 2h has a
truncation error of about h^2 |f'''| / 6 (the h^1 terms of the Taylor series
cancel, which is why it is centred) and a rounding error of about eps |f| / h,
since f(x+h) - f(x-h) loses the leading digits they share. The sum of the two
is smallest near h = (3 eps)^(1/3): with float64's eps = 2.2e-16 that is
h ~ 1e-5..1e-6 and a total error near 1e-10 for values of order 1; in float32
(eps = 1.2e-7) the best h is ~5e-3 and the error ~1e-5, too coarse to tell a
subtle backward bug from noise. So every check here runs in float64.

The exception proves the rule: for an op that is linear in the checked input
the third derivative is zero, there is no truncation error at any h, and a step
of 1 leaves only the rounding of the outputs themselves (STEP below).

Why a tolerance and not equality. Even at the best h a few gradient entries
are tiny next to the outputs they come from, and for those the difference
quotient's absolute noise (~1e-10) is a sizeable part of the entry. Each
layer's tolerance (TOLERANCE below) is therefore measured, not assumed: it sits
above the worst error seen over thousands of random draws
(benchmarks/gradcheck_report.py), and far below the 1e-2..1 that a wrong or
missing term in a backward pass gives (try `--break`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import numpy as np
from scipy.special import erfc

from . import layers
from .backend import Backend, backend_names, get_backend
from .layers.attention import merge_heads, split_heads

H = 1e-6  # finite-difference step for float64 (see the module docstring)
LINEAR_H = 1.0  # step for an op that is linear in the checked input
FLOOR = 1e-8  # denominator floor of rel_error

# The step each layer's check uses. An op that is linear in each input on its own (patchify, linear,
# embed, class token) has f''' = 0, so the centred difference is exact for any h: a large step
# leaves only the rounding of the outputs, eps * |out|, instead of eps * |out| / 1e-6.
STEP = {
    "patchify": LINEAR_H, "linear": LINEAR_H, "embed": LINEAR_H, "class_token": LINEAR_H,
    "gelu": H, "linear_gelu": H, "layernorm": H, "attention": H, "cross_entropy": H, "model": H,
    "add_layernorm": 2.0**-17,  # with inputs on GRID: see add_layernorm_case
    # the options of the official checkpoints (tests/test_model_options.py)
    "gelu_tanh": H, "linear_gelu_tanh": H, "tanh": H, "token_mean": LINEAR_H, "pos_embed": LINEAR_H,
    # the relative position bias (tests/test_rel_pos_bias.py)
    "attention_bias": H, "rel_pos_bias": LINEAR_H,
}  # fmt: skip

# The worst rel_error each check may show; WHY says why. The nonlinear ones are set by rare gradient
# entries that happen to be tiny (1e-5 of their neighbours): the absolute noise of a h = 1e-6
# difference, ~1e-10, is a sizeable part of such an entry. Such entries are rare, so the worst case
# creeps up with the number of draws: each bound sits above the worst of several thousand draws.
TOLERANCE = {
    "patchify": 1e-12, "linear": 1e-10, "embed": 1e-10, "class_token": 1e-12,
    "gelu": 1e-5, "linear_gelu": 3e-4, "layernorm": 1e-4, "attention": 3e-4, "cross_entropy": 1e-4,
    "add_layernorm": 3e-4,  # dx = ds + LayerNorm's dx: a sum that now and then cancels to a tiny entry
    "model": 1e-6,
    "gelu_tanh": 1e-5, "linear_gelu_tanh": 3e-4, "tanh": 1e-7, "token_mean": 1e-12, "pos_embed": 1e-10,
    # attention_bias is attention's softmax with one more linear input: attention's bound; the
    # gather of rel_pos_bias is linear, a product with a 0/1 matrix: only output rounding is left
    "attention_bias": 3e-4, "rel_pos_bias": 1e-10,
}  # fmt: skip


class GradcheckError(AssertionError):
    """A gradient check failed: a wrong gradient, a wrong shape, or an input written into."""


def rel_error(a, b, floor: float = FLOOR) -> float:
    """The worst elementwise relative error max |a - b| / max(floor, |a| + |b|).

    Relative, so a gradient of size 1e3 and one of size 1e-3 are judged alike.
    The floor keeps entries where both are (nearly) zero from dividing noise by
    noise: two values below ~1e-8 that differ by 1e-12 score 1e-4, not 1.
    float32 results against a float64 reference pass a floor at the output's
    scale instead (tests/backends.py): float32 rounding is relative to the
    size of the terms summed, not to an entry that cancelled to near zero.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"rel_error needs arrays of the same shape, got {a.shape} and {b.shape}")
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a - b) / np.maximum(floor, np.abs(a) + np.abs(b))))


def numerical_grad(f, x, dout, h: float = H) -> np.ndarray:
    """d/dx of sum(f(x) * dout), by centred differences, entry by entry; same shape as x.

    f maps an array shaped like x to an array shaped like dout (or to a scalar,
    with dout a scalar; or to a tuple of equal-shaped arrays, with dout a tuple
    like it). x is not modified: the perturbations are made in a copy.

    The contraction is applied to the difference, sum((f(x+h) - f(x-h)) * dout),
    rather than taking the difference of two contractions. It is the same number
    in exact arithmetic, but here the outputs that do not depend on the perturbed
    entry cancel exactly, so the rounding error comes only from the outputs that
    moved, not from the size of the whole sum.
    """
    x_work = np.array(x, dtype=np.float64, copy=True)
    dout = np.asarray(dout, dtype=np.float64)
    grad = np.zeros_like(x_work)
    for idx in np.ndindex(x_work.shape):
        original = x_work[idx]
        x_work[idx] = original + h
        # copy: an output may be a view of its input (patchify of a single patch is)
        f_plus = np.array(f(x_work), dtype=np.float64, copy=True)
        x_work[idx] = original - h
        f_minus = np.array(f(x_work), dtype=np.float64, copy=True)
        x_work[idx] = original
        grad[idx] = np.sum((f_plus - f_minus) * dout) / (2.0 * h)
    return grad


def _random_dout(out, rng):
    if isinstance(out, tuple):  # a layer with several outputs gets an upstream gradient for each
        return tuple(_random_dout(o, rng) for o in out)
    if np.ndim(out) == 0:
        return float(
            rng.normal()
        )  # a scalar output (a loss) gets a scalar upstream gradient
    return rng.normal(size=np.shape(out))


def _require(condition, message):
    if not condition:
        raise GradcheckError(message)


def check_layer(
    forward,
    backward,
    inputs,
    tol=None,
    wrt=None,
    names=None,
    h: float = H,
    seed: int = 0,
):
    """Check a forward/backward pair against finite differences; return the relative errors.

    forward(*inputs) -> (out, cache); backward(dout, cache) -> the gradients of the
    inputs listed in `wrt` (all of them by default), in that order, as a tuple, or
    a single array when there is one. `inputs` are float64 arrays.

    Steps: run forward; draw a random dout (seeded); run backward; require that
    neither forward nor backward wrote into the inputs or into dout (each is
    compared with a copy taken before); require each gradient to have its input's
    shape and dtype; compare each with numerical_grad. With `tol`, require every
    relative error to be at most tol. Raises GradcheckError when a requirement
    fails; returns a list of the errors, one per checked input.
    """
    inputs = list(inputs)
    names = names or [f"input {i}" for i in range(len(inputs))]
    wrt = list(range(len(inputs))) if wrt is None else list(wrt)
    for i in wrt:
        if np.asarray(inputs[i]).dtype != np.float64:
            raise ValueError(
                f"gradient checks run in float64; {names[i]} is {np.asarray(inputs[i]).dtype}"
            )
    before = [np.array(a, copy=True) for a in inputs]

    out, cache = forward(*inputs)
    _require_unchanged(inputs, before, names, "forward")
    dout = _random_dout(out, np.random.default_rng(seed))
    dout_before = np.array(dout, copy=True)
    grads = backward(dout, cache)
    grads = grads if isinstance(grads, tuple) else (grads,)
    _require_unchanged(inputs, before, names, "backward")
    _require(np.array_equal(dout, dout_before), "backward wrote into dout")
    _require(
        len(grads) == len(wrt),
        f"backward returned {len(grads)} gradients, expected {len(wrt)}",
    )

    errors = []
    for i, grad in zip(wrt, grads):
        x = inputs[i]
        _require(
            grad.shape == x.shape,
            f"gradient of {names[i]} has shape {grad.shape}, expected {x.shape}",
        )
        _require(
            grad.dtype == x.dtype,
            f"gradient of {names[i]} has dtype {grad.dtype}, expected {x.dtype}",
        )

        def f(value, i=i):
            args = list(inputs)
            args[i] = value
            return forward(*args)[0]

        errors.append(rel_error(grad, numerical_grad(f, x, dout, h)))
    _require_unchanged(inputs, before, names, "the finite differences")
    if tol is not None:
        worst = max(errors, default=0.0)
        detail = ", ".join(f"{names[i]}: {e:.2e}" for i, e in zip(wrt, errors))
        _require(
            worst <= tol,
            f"relative error {worst:.2e} exceeds the tolerance {tol:.0e} ({detail})",
        )
    return errors


def _require_unchanged(inputs, before, names, stage):
    for name, now, then in zip(names, inputs, before):
        _require(np.array_equal(now, then), f"{stage} wrote into {name}")


def directional_errors(loss, params, grads, h: float = H, seed: int = 0) -> dict:
    """Check a whole model's gradients, one parameter tensor at a time, along random directions.

    loss() evaluates the scalar loss with the current entries of `params`
    (name -> array); here each entry is replaced by a perturbed array and put
    back afterwards, never written into. grads holds the hand-written gradients
    at those values. For each tensor p and a random direction d of its shape,
        (loss(p + h d) - loss(p - h d)) / 2h   should equal   <grads[p], d>,
    which tests every entry of the tensor's gradient with two forward passes
    instead of two per entry. Returns name -> relative error.
    """
    rng = np.random.default_rng(seed)
    errors = {}
    for name in list(params):
        original = params[name]
        host = np.asarray(original, dtype=np.float64)
        d = rng.normal(size=host.shape)
        try:
            params[name] = host + h * d
            plus = loss()
            params[name] = host - h * d
            minus = loss()
        finally:
            params[name] = original
        errors[name] = rel_error(
            np.sum(np.asarray(grads[name]) * d), (plus - minus) / (2.0 * h)
        )
    return errors


# -- the checks, one per layer: random cases, what each proves, why its tolerance ------------------


class Case(NamedTuple):
    """One random instance of a layer check: forward(*inputs) -> (out, cache), backward(dout, cache)."""

    forward: Callable
    backward: Callable
    inputs: list  # float64 arrays, each checked
    names: list  # their names, for messages


def _uniform(rng, shape, low=-2.0, high=2.0):
    return rng.uniform(low, high, size=shape)


def _dims(rng, *ranges):
    return [int(rng.integers(low, high + 1)) for low, high in ranges]


def patchify_case(rng, ops):
    """Images (B, g*P, g*P, C) with P, g >= 2, so that a wrong rearrangement cannot hide."""
    P, g, B, C = _dims(rng, (2, 3), (2, 3), (1, 2), (1, 3))
    side = P * g
    forward = partial(ops.patchify_forward, patch_size=P)
    return Case(forward, ops.patchify_backward, [_uniform(rng, (B, side, side, C))], ["images"])


def linear_case(rng, ops):
    B, N, d_in, d_out = _dims(rng, (1, 3), (2, 6), (1, 8), (1, 8))
    inputs = [
        _uniform(rng, (B, N, d_in)),
        _uniform(rng, (d_in, d_out)),
        _uniform(rng, (d_out,)),
    ]
    return Case(
        ops.linear_forward, ops.linear_backward, inputs, ["x", "weight", "bias"]
    )


def _activation_case(rng, ops, fused, forward, backward):
    """An elementwise activation on (B, N, D) inputs in [-4, 4] (further out the erf form loses the
    digits a difference needs). The backends have it only fused into fc1 (`fused`, the name of the
    fused forward): an identity weight and a zero bias leave the activation alone."""
    B, N, D = _dims(rng, (1, 3), (2, 6), (1, 8))
    if ops.name != "numpy":
        eye, zero = ops.asarray(np.eye(D), np.float64), ops.asarray(np.zeros(D), np.float64)
        fused_forward, fused_backward = getattr(ops, fused + "_forward"), getattr(ops, fused + "_backward")
        forward = lambda x: fused_forward(x, eye, zero)
        backward = lambda d, c: fused_backward(d, c)[0]
    return Case(forward, backward, [_uniform(rng, (B, N, D), -4.0, 4.0)], ["x"])


def gelu_case(rng, ops):
    return _activation_case(rng, ops, "linear_gelu", layers.gelu_forward, layers.gelu_backward)


def gelu_tanh_case(rng, ops):
    return _activation_case(rng, ops, "linear_gelu_tanh", layers.gelu_tanh_forward, layers.gelu_tanh_backward)


def linear_gelu_tanh_case(rng, ops):
    """The inputs of linear_gelu_case, through the tanh form."""
    case = linear_gelu_case(rng, ops)
    return case._replace(forward=ops.linear_gelu_tanh_forward, backward=ops.linear_gelu_tanh_backward)


def tanh_case(rng, ops):
    B, D = _dims(rng, (1, 3), (1, 8))
    return Case(ops.tanh_forward, ops.tanh_backward, [_uniform(rng, (B, D), -3.0, 3.0)], ["x"])


def token_mean_case(rng, ops):
    B, N, D = _dims(rng, (1, 3), (1, 6), (1, 8))
    return Case(ops.token_mean_forward, ops.token_mean_backward, [_uniform(rng, (B, N, D))], ["x"])


def pos_embed_case(rng, ops):
    """B >= 2, so that the sum over the batch is tested."""
    B, N, D = _dims(rng, (2, 3), (1, 6), (1, 8))
    inputs = [_uniform(rng, (B, N, D)), _uniform(rng, (N, D))]
    return Case(ops.pos_embed_forward, ops.pos_embed_backward, inputs, ["x", "pos_embed"])


def linear_gelu_case(rng, ops):
    """Weights scaled by 1/d_in keep the pre-activations in [-2, 2], away from GELU's far tail."""
    B, N, d_in, d_out = _dims(rng, (1, 3), (2, 6), (1, 8), (1, 8))
    inputs = [_uniform(rng, (B, N, d_in), -1, 1), _uniform(rng, (d_in, d_out), -1, 1) / d_in,
              _uniform(rng, (d_out,), -1, 1)]  # fmt: skip
    return Case(
        ops.linear_gelu_forward,
        ops.linear_gelu_backward,
        inputs,
        ["x", "weight", "bias"],
    )


def embed_case(rng, ops):
    """B >= 2, so that the sums over the batch are tested."""
    B, N, D = _dims(rng, (2, 3), (2, 6), (1, 8))
    inputs = [_uniform(rng, (B, N - 1, D)), _uniform(rng, (D,)), _uniform(rng, (N, D))]
    return Case(
        ops.embed_forward, ops.embed_backward, inputs, ["x", "cls_token", "pos_embed"]
    )


def class_token_case(rng, ops):
    B, N, D = _dims(rng, (1, 3), (2, 6), (1, 8))
    return Case(
        ops.class_token_forward,
        ops.class_token_backward,
        [_uniform(rng, (B, N, D))],
        ["x"],
    )


def layernorm_case(rng, ops):
    """Widths from 3: with D = 2 every output is +-1 and every dx entry is noise."""
    B, N, D = _dims(rng, (1, 3), (2, 6), (3, 8))
    inputs = [_uniform(rng, (B, N, D)), _uniform(rng, (D,)), _uniform(rng, (D,))]
    return Case(
        ops.layernorm_forward, ops.layernorm_backward, inputs, ["x", "weight", "bias"]
    )


GRID = 2.0**20  # add_layernorm's inputs are multiples of 1 / GRID


def on_grid(a):
    """a rounded to a multiple of 1 / GRID."""
    return np.round(a * GRID) / GRID


def add_layernorm_case(rng, ops):
    """LayerNorm's shapes, with x and h both drawn; every output (s and y) gets its own upstream
    gradient. h's gradient is x's (s = x + h), returned by the op once and checked for both.

    The inputs lie on a grid of 2^-20 and the step is 2^-17, so x +- step and s = x + h are
    exact in float64: the residual output s adds no rounding to the difference quotient (with
    h = 1e-6 it added ~4e-10 * |ds|), and the larger step shrinks LayerNorm's own rounding noise.
    What is left are the entries where ds + LayerNorm's dx cancels to ~1e-8 of its row: measured
    worst over 12,000 draws 9e-5, hence 3e-4."""
    B, N, D = _dims(rng, (1, 3), (2, 6), (3, 8))
    inputs = [on_grid(_uniform(rng, s)) for s in ((B, N, D), (B, N, D), (D,), (D,))]

    def backward(dout, cache):
        dx, dweight, dbias = ops.add_layernorm_backward(dout, cache)
        return dx, dx, dweight, dbias

    return Case(ops.add_layernorm_forward, backward, inputs, ["x", "h", "weight", "bias"])


def attention_case(rng, ops):
    B, N, heads, Dh = _dims(rng, (1, 3), (2, 6), (1, 3), (1, 4))
    qkv = _uniform(rng, (B, N, 3 * heads * Dh))
    return Case(
        partial(ops.attention_forward, heads=heads),
        ops.attention_backward,
        [qkv],
        ["qkv"],
    )


def cross_entropy_case(rng, ops):
    """B >= 2 (the mean over the batch is tested); label smoothing in half the cases."""
    B, K = _dims(rng, (2, 3), (2, 5))
    labels = rng.integers(0, K, size=B)
    smoothing = 0.0 if rng.random() < 0.5 else float(rng.uniform(0.01, 0.9))
    forward = partial(ops.cross_entropy_forward, labels=labels, smoothing=smoothing)
    return Case(
        forward,
        ops.cross_entropy_backward,
        [_uniform(rng, (B, K), -4.0, 4.0)],
        ["logits"],
    )


class Check(NamedTuple):
    """What one layer's check proves, how its cases are drawn, and why its tolerance is what it is."""

    proves: str
    make_case: Callable  # (rng, Backend) -> Case; None for the whole model
    why: str


CHECKS: dict[str, Check] = {
    "patchify": Check(
        "patchify_backward puts every patch entry back on its own pixel", patchify_case,
        "a pure rearrangement is linear: h = 1 has no truncation error, only rounding"),
    "linear": Check(
        "dx = dout W^T, dW = x^T dout, db = dout summed over every row", linear_case,
        "linear in each of x, W, b: h = 1, only the rounding of the outputs is left"),
    "gelu": Check(
        "d gelu / dx = Phi(x) + x phi(x)", gelu_case,
        "smooth; the worst entries sit where the slope crosses zero (x ~ -0.75)"),
    "linear_gelu": Check(
        "the chain rule through gelu(x W + b): GELU's slope, then the linear layer", linear_gelu_case,
        "as GELU, through units whose slope passes through zero"),
    "embed": Check(
        "dx drops the class-token row; dcls and dpos sum over the batch", embed_case,
        "adding and prepending are linear: h = 1, only rounding"),
    "class_token": Check(
        "the head's gradient lands in row 0 and nowhere else", class_token_case,
        "a selection: h = 1, exact but for rounding"),
    "layernorm": Check(
        "dx = rstd (g - mean(g) - xhat mean(g xhat)): the terms through the mean and the variance",
        layernorm_case,
        "entries of dx that the normalisation nearly cancels are ~1e-5 of their row"),
    "add_layernorm": Check(
        "d(x + h) = ds + LayerNorm's dx: the residual stream's gradient and the norm's, summed",
        add_layernorm_case,
        "dx = ds + LayerNorm's dx now and then cancels to a tiny entry; inputs on a grid keep s exact"),
    "attention": Check(
        "dqkv through softmax(q k^T / sqrt(Dh)) v for every head, the softmax Jacobian included",
        attention_case,
        "dq, dk terms cancel for keys the softmax all but ignores, leaving tiny entries"),
    "cross_entropy": Check(
        "dlogits = dloss (probs - targets) / B, label smoothing included", cross_entropy_case,
        "a dlogits entry is tiny where a probability nearly equals its target"),
    # the options the official checkpoints need (ViTConfig gelu="tanh", classifier="gap", pre_logits)
    "gelu_tanh": Check(
        "the derivative of the tanh form of GELU", gelu_tanh_case,
        "smooth; like GELU, the worst entries sit where the slope crosses zero"),
    "linear_gelu_tanh": Check(
        "the chain rule through gelu_tanh(x W + b)", linear_gelu_tanh_case,
        "as GELU's fused layer"),
    "tanh": Check(
        "d tanh / dx = 1 - tanh^2 (the pre_logits activation)", tanh_case,
        "smooth and bounded: only the quotient's rounding noise"),
    "token_mean": Check(
        "global average pooling: every token gets dout / N", token_mean_case,
        "a mean is linear: h = 1, only rounding"),
    "pos_embed": Check(
        "the position embedding without a class token: dpos sums over the batch", pos_embed_case,
        "an add is linear: h = 1, only rounding"),
    "model": Check(
        "every parameter's gradient of a whole ViT (testing preset), along random directions", None,
        "the loss is of order 1: the quotient's noise ~2e-10 against <grad, d>, a sum of many entries"),
}  # fmt: skip


# -- deliberately wrong backward passes, for --break ------------------------------------------------


def _patchify_backward_reshape_only(dpatches, cache):
    """Wrong: reshapes the patches back without undoing the transpose (grid and in-patch axes mixed)."""
    return dpatches.reshape(dpatches.shape[0], cache.height, cache.width, cache.channels)


def _linear_backward_mean_bias(dout, cache):
    """Wrong: db averages dout over the rows instead of summing (every row adds the same b)."""
    dx, dweight, dbias = layers.linear_backward(dout, cache)
    return dx, dweight, dbias / (dout.size // dout.shape[-1])


def _gelu_backward_cdf_only(dout, cache):
    """Wrong: d gelu / dx = Phi(x) only; the x phi(x) term of the product rule is dropped."""
    return dout * (0.5 * erfc(-cache.x / np.sqrt(2.0)))


def _linear_gelu_backward_cdf_only(dout, cache):
    """Wrong: the fused layer with GELU's slope missing its x phi(x) term."""
    return layers.linear_backward(
        _gelu_backward_cdf_only(dout, cache.gelu), cache.linear
    )


def _embed_backward_mean_pos(dout, cache):
    """Wrong: dpos averages over the batch; every image adds the same table, so the gradients sum."""
    dx, dcls, dpos = layers.embed_backward(dout, cache)
    return dx, dcls, dpos / dout.shape[0]


def _class_token_backward_last_row(dout, cache):
    """Wrong: the gradient goes to the last token's row instead of the class token's (row 0)."""
    dx = np.zeros((dout.shape[0], cache.num_tokens, dout.shape[1]), dtype=dout.dtype)
    dx[:, -1] = dout
    return dx


def _layernorm_backward_without_mean_term(dout, cache):
    """Wrong: leaves out the term through the mean, -rstd * mean(g) = -(rstd / D) * sum(g)."""
    dx, dweight, dbias = layers.layernorm_backward(dout, cache)
    g = dout * cache.weight
    return dx + cache.rstd * g.mean(axis=-1, keepdims=True), dweight, dbias


def _attention_backward_without_jacobian_term(dout, cache):
    """Wrong: dscores = probs * dprobs, the softmax Jacobian's -probs * sum_j(dprobs probs) term dropped."""
    qkv, probs, heads = cache
    q, k, v = split_heads(qkv, heads)
    B, N, D = dout.shape
    scale = 1.0 / np.sqrt(q.shape[-1])
    dout_h = dout.reshape(B, N, heads, D // heads).transpose(
        0, 2, 1, 3
    )  # (B, H, N, Dh)
    dprobs = dout_h @ v.transpose(0, 1, 3, 2)  # (B, H, N, N)
    dv = probs.transpose(0, 1, 3, 2) @ dout_h
    dscores = (
        probs * dprobs
    )  # the right line: probs * (dprobs - (dprobs * probs).sum(-1, keepdims=True))
    dq = (dscores @ k) * scale
    dk = (dscores.transpose(0, 1, 3, 2) @ q) * scale
    return np.concatenate([merge_heads(dq), merge_heads(dk), merge_heads(dv)], axis=-1)


def _cross_entropy_backward_without_mean(dloss, cache):
    """Wrong: forgets the 1/B of the mean over the batch."""
    return layers.cross_entropy_backward(dloss, cache) * cache.probs.shape[0]


# layer -> (the wrong backward, on the NumPy specification's caches). Each docstring says what is wrong.
BREAKS: dict[str, Callable] = {
    "patchify": _patchify_backward_reshape_only,
    "linear": _linear_backward_mean_bias,
    "gelu": _gelu_backward_cdf_only,
    "linear_gelu": _linear_gelu_backward_cdf_only,
    "embed": _embed_backward_mean_pos,
    "class_token": _class_token_backward_last_row,
    "layernorm": _layernorm_backward_without_mean_term,
    "attention": _attention_backward_without_jacobian_term,
    "cross_entropy": _cross_entropy_backward_without_mean,
}


# -- running checks -----------------------------------------------------------------------------------


class Result(NamedTuple):
    """One layer's verdict: the worst relative error over `cases` random cases against its tolerance."""

    layer: str
    cases: int
    worst: float
    tolerance: float
    step: float
    failure: (
        str | None
    )  # why the check failed outright (wrong shape, an input written into), else None

    @property
    def passed(self) -> bool:
        return self.failure is None and self.worst <= self.tolerance


def _on_host(ops: Backend, case: Case) -> Case:
    """The case with backend arrays in and NumPy arrays out, so the finite differences run on the host."""
    if ops.name == "numpy":
        return case

    def to_backend(a):
        if isinstance(a, tuple):
            return tuple(to_backend(x) for x in a)
        return ops.asarray(a, np.float64) if isinstance(a, np.ndarray) else a

    def to_host(a):
        if isinstance(a, tuple):  # several outputs
            return tuple(to_host(x) for x in a)
        return (
            a if np.ndim(a) == 0 and not hasattr(a, "copy_to_host") else ops.to_numpy(a)
        )

    def forward(*xs):
        out, cache = case.forward(*[to_backend(x) for x in xs])
        return to_host(out), cache

    def backward(dout, cache):
        grads = case.backward(
            to_backend(dout if isinstance(dout, tuple) else np.asarray(dout)) if np.ndim(dout) else dout, cache
        )
        return (
            tuple(to_host(g) for g in grads)
            if isinstance(grads, tuple)
            else to_host(grads)
        )

    return case._replace(forward=forward, backward=backward)


def check_one(
    layer: str, backend="numpy", cases: int = 10, seed: int = 0, broken: bool = False
) -> Result:
    """Run `cases` random checks of `layer` on `backend`; with broken=True, with BREAKS[layer] as backward."""
    if layer not in CHECKS:
        raise ValueError(f"unknown layer {layer!r}; expected one of {list(CHECKS)}")
    ops = get_backend(backend)
    ops.use_dtype(np.float64)  # the checks run in float64 (the `jax` backend needs telling)
    if broken and (layer not in BREAKS or ops.name != "numpy"):
        raise ValueError(
            f"--break swaps a term of the NumPy specification; {layer!r} on {ops.name!r} has none"
        )
    rng = np.random.default_rng([seed, list(CHECKS).index(layer)])
    worst, failure = 0.0, None
    try:
        if layer == "model":
            errors = [e for s in range(cases) for e in model_errors(seed + s, ops)]
            worst = max(errors)
        else:
            for _ in range(cases):
                case = CHECKS[layer].make_case(rng, ops)
                if broken:
                    case = case._replace(backward=BREAKS[layer])
                case = _on_host(ops, case)
                errors = check_layer(
                    case.forward,
                    case.backward,
                    case.inputs,
                    names=case.names,
                    h=STEP[layer],
                    seed=int(rng.integers(2**31)),
                )
                worst = max(worst, *errors)
    except GradcheckError as e:
        failure = str(e)
    return Result(layer, cases, worst, TOLERANCE[layer], STEP[layer], failure)


def model_errors(seed: int, backend="numpy") -> list[float]:
    """Directional errors of every parameter tensor of a perturbed float64 `testing` model."""
    from .config import get_preset
    from .model import ViT

    cfg = get_preset("testing")
    model = ViT(cfg, seed=seed, dtype=np.float64, backend=backend)
    rng = np.random.default_rng(seed)
    # away from init, where the zero head hides every other gradient
    params = {
        k: v + rng.normal(0.0, 0.5, size=v.shape)
        for k, v in model.numpy_params().items()
    }
    images = rng.normal(size=(3, cfg.image_size, cfg.image_size, cfg.channels))
    labels = rng.integers(0, cfg.num_classes, size=3)
    smoothing = 0.1 * (seed % 2)

    def loss():
        model.load_params(params)
        return model.loss_and_grads(images, labels, label_smoothing=smoothing)[0]

    model.load_params(params)
    _, grads = model.loss_and_grads(images, labels, label_smoothing=smoothing)
    grads = {k: model.backend.to_numpy(g) for k, g in grads.items()}
    return list(
        directional_errors(loss, params, grads, h=STEP["model"], seed=seed).values()
    )


def report(result: Result, broken: bool = False) -> str:
    """A few lines a learner can read: what was proved, the worst error against the tolerance, the step."""
    verdict = "ok" if result.passed else "FAILED"
    lines = [f"{result.layer:<17} {verdict}"]
    lines.append(f"  proves:    {CHECKS[result.layer].proves}")
    if broken:
        lines.append(f"  broken:    {BREAKS[result.layer].__doc__}")
    if result.failure:
        lines.append(f"  failure:   {result.failure}")
    else:
        sign = "<=" if result.worst <= result.tolerance else "> "
        lines.append(f"  worst relative error {result.worst:.1e} {sign} tolerance {result.tolerance:.0e} "
                     f"over {result.cases} random {'models' if result.layer == 'model' else 'cases'}, step h = {result.step:g}")  # fmt: skip
    lines.append(f"  why that tolerance: {CHECKS[result.layer].why}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tinyvit.gradcheck",
        description="Check every hand-written backward against float64 finite differences.",
    )
    parser.add_argument(
        "layers",
        nargs="*",
        metavar="LAYER",
        help=f"layers to check (default: all of {list(CHECKS)})",
    )
    parser.add_argument(
        "--backend", default="numpy", help=f"one of {backend_names()} (default: numpy)"
    )
    parser.add_argument(
        "--break",
        dest="broken",
        metavar="LAYER",
        choices=list(BREAKS),
        help=f"swap a wrong term into this layer's backward, to see a check fail: {list(BREAKS)}",
    )
    parser.add_argument(
        "--cases", type=int, default=10, help="random cases per layer (default 10)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the random cases (default 0)"
    )
    args = parser.parse_args(argv)  # fmt: skip
    unknown = [name for name in args.layers if name not in CHECKS]
    if unknown:
        parser.error(f"unknown layers {unknown}; expected some of {list(CHECKS)}")
    if args.cases < 1:
        parser.error(f"--cases must be positive, got {args.cases}")
    if args.backend not in backend_names():
        parser.error(
            f"unknown backend {args.backend!r}; expected one of {backend_names()}"
        )
    if args.broken and args.backend != "numpy":
        parser.error(
            f"--break changes the NumPy specification; it runs with --backend numpy, not {args.backend}"
        )
    names = args.layers or list(CHECKS)
    if args.broken and args.broken not in names:
        names.append(args.broken)

    print(
        f"gradient checks on the {args.backend} backend, float64, {args.cases} random cases per layer\n"
    )
    failed = 0
    for name in names:
        broken = name == args.broken
        result = check_one(name, args.backend, args.cases, args.seed, broken=broken)
        failed += not result.passed
        print(report(result, broken), flush=True)
    print(f"\n{len(names) - failed} of {len(names)} checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

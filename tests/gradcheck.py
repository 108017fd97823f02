"""Gradient checking: compare a hand-written backward pass with finite differences.

This is a helper module for the tests and for benchmarks/gradcheck_report.py,
not a test file. It holds three plain functions:

- `rel_error(a, b)`: how far apart two gradients are, relative to their size;
- `numerical_grad(f, x, dout, h)`: the gradient of sum(f(x) * dout) by centred
  finite differences, one entry of x at a time;
- `check_layer(forward, backward, inputs, tol)`: run a layer forward and
  backward with a random upstream gradient, compare every gradient it returns
  with the numerical one, and check that nothing was written into the inputs.

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
above the worst error seen over many random draws, and far below the 1e-2..1
that a wrong or missing term in a backward pass gives.
"""

from __future__ import annotations

import numpy as np

H = 1e-6  # finite-difference step for float64 (see the module docstring)
LINEAR_H = 1.0  # step for an op that is linear in the checked input (see STEP)
FLOOR = 1e-8  # denominator floor of rel_error

# The step each layer's check uses. An op that is linear in each input on its own (patchify, linear,
# embed, class token) has f''' = 0, so the centred difference is exact for any h: a large step
# leaves only the rounding of the outputs, eps * |out|, instead of eps * |out| / 1e-6.
STEP = {
    "patchify": LINEAR_H, "linear": LINEAR_H, "embed": LINEAR_H, "class_token": LINEAR_H,
    "gelu": H, "linear_gelu": H, "layernorm": H, "attention": H, "cross_entropy": H, "model": H,
    # the options of the official checkpoints (tests/test_model_options.py)
    "gelu_tanh": H, "linear_gelu_tanh": H, "tanh": H, "token_mean": LINEAR_H, "pos_embed": LINEAR_H,
}  # fmt: skip

# The worst rel_error each check may show; each test's docstring says why. The nonlinear ones are
# set by rare gradient entries that happen to be tiny (1e-5 of their neighbours): the absolute
# noise of a h = 1e-6 difference, ~1e-10, is a sizeable part of such an entry. Such entries are
# rare, so the worst case creeps up with the number of draws: each bound sits above the worst of
# several thousand random draws (benchmarks/gradcheck_report.py measures them afresh).
TOLERANCE = {
    "patchify": 1e-12, "linear": 1e-10, "embed": 1e-10, "class_token": 1e-12,
    "gelu": 1e-5, "linear_gelu": 3e-4, "layernorm": 1e-4, "attention": 3e-4, "cross_entropy": 1e-4,
    "model": 1e-6,
    "gelu_tanh": 1e-5, "linear_gelu_tanh": 3e-4, "tanh": 1e-7, "token_mean": 1e-12, "pos_embed": 1e-10,
}  # fmt: skip


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
    with dout a scalar). x is not modified: the perturbations are made in a copy.

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
    if np.ndim(out) == 0:
        return float(rng.normal())  # a scalar output (a loss) gets a scalar upstream gradient
    return rng.normal(size=np.shape(out))


def check_layer(forward, backward, inputs, tol=None, wrt=None, names=None, h: float = H, seed: int = 0):
    """Check a forward/backward pair against finite differences; return the relative errors.

    forward(*inputs) -> (out, cache); backward(dout, cache) -> the gradients of the
    inputs listed in `wrt` (all of them by default), in that order, as a tuple, or
    a single array when there is one. `inputs` are float64 arrays.

    Steps: run forward; draw a random dout (seeded); run backward; assert that
    neither forward nor backward wrote into the inputs or into dout (each is
    compared with a copy taken before); assert each gradient has its input's
    shape and dtype; compare each with numerical_grad. With `tol`, assert that
    every relative error is at most tol. Returns a list of the errors, one per
    checked input, so a report can print them.
    """
    inputs = list(inputs)
    names = names or [f"input {i}" for i in range(len(inputs))]
    wrt = list(range(len(inputs))) if wrt is None else list(wrt)
    for i in wrt:
        if np.asarray(inputs[i]).dtype != np.float64:
            raise ValueError(f"gradient checks run in float64; {names[i]} is {np.asarray(inputs[i]).dtype}")
    before = [np.array(a, copy=True) for a in inputs]

    out, cache = forward(*inputs)
    _assert_unchanged(inputs, before, names, "forward")
    dout = _random_dout(out, np.random.default_rng(seed))
    dout_before = np.array(dout, copy=True)
    grads = backward(dout, cache)
    grads = grads if isinstance(grads, tuple) else (grads,)
    _assert_unchanged(inputs, before, names, "backward")
    assert np.array_equal(dout, dout_before), "backward wrote into dout"
    assert len(grads) == len(wrt), f"backward returned {len(grads)} gradients, expected {len(wrt)}"

    errors = []
    for i, grad in zip(wrt, grads):
        x = inputs[i]
        assert grad.shape == x.shape, f"gradient of {names[i]} has shape {grad.shape}, expected {x.shape}"
        assert grad.dtype == x.dtype, f"gradient of {names[i]} has dtype {grad.dtype}, expected {x.dtype}"

        def f(value, i=i):
            args = list(inputs)
            args[i] = value
            return forward(*args)[0]

        errors.append(rel_error(grad, numerical_grad(f, x, dout, h)))
    _assert_unchanged(inputs, before, names, "the finite differences")
    if tol is not None:
        worst = max(errors, default=0.0)
        detail = ", ".join(f"{names[i]}: {e:.2e}" for i, e in zip(wrt, errors))
        assert worst <= tol, f"relative error {worst:.2e} exceeds the tolerance {tol:.0e} ({detail})"
    return errors


def _assert_unchanged(inputs, before, names, stage):
    for name, now, then in zip(names, inputs, before):
        assert np.array_equal(now, then), f"{stage} wrote into {name}"


def directional_errors(loss, params, grads, h: float = H, seed: int = 0) -> dict:
    """Check a whole model's gradients, one parameter tensor at a time, along random directions.

    loss() evaluates the scalar loss with the current values of `params`
    (name -> array, changed in place here and restored afterwards); grads holds
    the hand-written gradients at those values. For each tensor p and a random
    direction d of its shape,
        (loss(p + h d) - loss(p - h d)) / 2h   should equal   <grads[p], d>,
    which tests every entry of the tensor's gradient with two forward passes
    instead of two per entry. Returns name -> relative error.
    """
    rng = np.random.default_rng(seed)
    errors = {}
    for name, p in params.items():
        d = rng.normal(size=p.shape)
        original = p.copy()
        try:
            p[...] = original + h * d
            plus = loss()
            p[...] = original - h * d
            minus = loss()
        finally:
            p[...] = original
        errors[name] = rel_error(np.sum(grads[name] * d), (plus - minus) / (2.0 * h))
    return errors

"""The ladders of the numba patchify, optimiser and head kernels: every variant against the specification.

kernels/numba_patchify.py (VARIANTS), numba_adamw.py (ADAMW_VARIANTS, SQUARES_VARIANTS,
SCALE_VARIANTS) and numba_head.py (GELU_TANH_VARIANTS, POS_EMBED_VARIANTS, TOKEN_MEAN_VARIANTS,
TANH_VARIANTS) keep their variants plain to fast, the last being what the numba backend runs.
Every variant is checked here against tinyvit.layers / tinyvit.optim on hypothesis-drawn small
shapes, with inputs in C order, in Fortran order (every axis transposed in memory) and sliced
(every other element of a wider array), and every check asserts that no input was written.
The other numba ops' ladders are checked in tests/test_numba_kernels.py.

Errors are max |got - want| / max |want| per output array, or relative to the size of the
terms that were summed into an output where the sum can cancel (the bias gradient, fc1's products).
- patchify only moves numbers: equal exactly, in both dtypes.
- float64: 1e-12. The kernels do the specification's arithmetic in another order (a few
  roundings of 1.1e-16 per output, sums of at most a few hundred terms).
- float32 kernels on float32 inputs, against the float64 reference on the same inputs:
  FLOAT32_ROUNDING = 5e-7 where each output is computed in float64 (or with float32's
  tanh, within 2 ulp) and rounded to float32 once or twice (2^-24 = 6e-8 each);
  FLOAT32_SUMS = 1e-5 for fc1, whose product BLAS sums in float32 (6e-8 per term, up to
  a few dozen terms, with room for the worst draws).
- The global norm's sum of squares: 1e-12 in both dtypes, since a float32 number squared in
  float64 is exact and the sum is in float64.
"""

import importlib
import pkgutil
import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from tinyvit.kernels import numba_adamw, numba_head, numba_patchify

from tinyvit import kernels, layers, optim
from tinyvit.backend import get_backend

FLOAT64_TOL = 1e-12
FLOAT32_ROUNDING = 5e-7
FLOAT32_SUMS = 1e-5

seeds = st.integers(0, 2**32 - 1)
dtypes = st.sampled_from([np.float64, np.float32])
layouts = st.sampled_from(["C", "F", "sliced"])
small = st.integers(1, 5)


def variants(table):
    return pytest.mark.parametrize("variant", list(table))


def draw(rng, shape, dtype, scale=1.0):
    """Normal values already rounded to dtype, so the float64 reference sees the same inputs."""
    return (scale * rng.standard_normal(shape)).astype(dtype)


def relayout(a, layout):
    """The same values in another memory layout: "C", "F" (Fortran order) or "sliced" (a strided view)."""
    if layout == "F":
        return np.asfortranarray(a)
    if layout == "sliced":
        wide = np.zeros((*a.shape[:-1], 2 * a.shape[-1]), a.dtype)
        wide[..., 1::2] = a
        return wide[..., 1::2]
    return a


def f64(*arrays):
    return [np.asarray(a, dtype=np.float64) for a in arrays]


def assert_close(name, got, want, dtype, tol32=FLOAT32_ROUNDING, scale=0.0):
    """got (the kernel's, in dtype) against want (the float64 reference); scale: the size of the summed terms."""
    got_arr = np.asarray(got)
    assert got_arr.shape == np.shape(want), f"{name}: shape {got_arr.shape}, expected {np.shape(want)}"
    assert got_arr.dtype == dtype, f"{name}: dtype {got_arr.dtype}, expected {np.dtype(dtype)}"
    tol = FLOAT64_TOL if dtype == np.float64 else tol32
    diff = np.max(np.abs(got_arr.astype(np.float64) - want), initial=0.0)
    err = diff / max(np.max(np.abs(want), initial=0.0), scale, 1e-30)
    assert err <= tol, f"{name} ({np.dtype(dtype)}): relative error {err:.3g} > {tol:g}"


class Unwritten:
    """Copies of the inputs on entry; check() asserts the kernel left every one as it was."""

    def __init__(self, *arrays):
        self.arrays, self.copies = arrays, [a.copy() for a in arrays]

    def check(self):
        for i, (a, c) in enumerate(zip(self.arrays, self.copies, strict=True)):
            assert np.array_equal(a, c), f"input {i} was written by the kernel"


# -- patchify -------------------------------------------------------------------------------------


@variants(numba_patchify.VARIANTS)
@given(seed=seeds, dtype=dtypes, layout=layouts, batch=st.integers(1, 3), gh=st.integers(1, 3),
       gw=st.integers(1, 3), p=st.integers(1, 3), c=st.integers(1, 3))  # fmt: skip
def test_patchify_variants_equal_the_specification(variant, seed, dtype, layout, batch, gh, gw, p, c):
    """Forward equals layers.patchify exactly (and its cache), backward layers.unpatchify; on
    non-square grids, so the grid's rows and columns cannot be confused."""
    rng = np.random.default_rng(seed)
    images = relayout(draw(rng, (batch, gh * p, gw * p, c), dtype), layout)
    dpatches = relayout(draw(rng, (batch, gh * gw, p * p * c), dtype), layout)
    unwritten = Unwritten(images, dpatches)
    forward, backward = numba_patchify.VARIANTS[variant]
    patches, cache = forward(images, p)
    dimages = backward(dpatches, cache)
    unwritten.check()
    want, want_cache = layers.patchify_forward(images, p)
    assert patches.dtype == dtype and np.array_equal(patches, want)
    assert cache == want_cache
    assert dimages.dtype == dtype and np.array_equal(dimages, layers.patchify_backward(dpatches, want_cache))
    assert np.array_equal(backward(patches, cache), images)  # backward is the inverse


@variants(numba_patchify.VARIANTS)
def test_patchify_variants_reject_bad_shapes(variant):
    forward, backward = numba_patchify.VARIANTS[variant]
    with pytest.raises(ValueError, match=r"patch_size 4 must divide the image sides, got 6x8"):
        forward(np.zeros((1, 6, 8, 3)), 4)
    cache = layers.patchify_forward(np.zeros((1, 4, 4, 3)), 2)[1]
    with pytest.raises(ValueError, match=r"patches must have shape \(1, 4, 12\), got \(1, 4, 11\)"):
        backward(np.zeros((1, 4, 11)), cache)


# -- the optimiser --------------------------------------------------------------------------------

# Shapes below and above PARALLEL_MIN; the largest spans several CHUNKs, the last one ragged.
LARGE = (289, 512)
assert LARGE[0] * LARGE[1] > numba_adamw.PARALLEL_MIN and (LARGE[0] * LARGE[1]) % numba_adamw.CHUNK
param_shapes = st.sampled_from([(1,), (7,), (20, 15), (3, 4, 5), LARGE])


@variants(numba_adamw.ADAMW_VARIANTS)
@given(seed=seeds, dtype=dtypes, layout=layouts, shape=param_shapes, step=st.integers(1, 5),
       wd=st.sampled_from([0.0, 0.05]))  # fmt: skip
def test_adamw_variants_equal_the_specification(variant, seed, dtype, layout, shape, step, wd):
    """New param, m and v as tinyvit.optim.adamw_update computes them, in C order, whatever the inputs' layout."""
    rng = np.random.default_rng(seed)
    param, grad = draw(rng, shape, dtype), draw(rng, shape, dtype)
    m, v = draw(rng, shape, dtype, 0.1), np.abs(draw(rng, shape, dtype, 0.01))
    param, grad, m, v = (relayout(a, layout) for a in (param, grad, m, v))
    hp = optim.AdamWStep(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=wd, step=step)
    unwritten = Unwritten(param, grad, m, v)
    new = numba_adamw.ADAMW_VARIANTS[variant](param, grad, m, v, hp)
    unwritten.check()
    want = optim.adamw_update(*f64(param, grad, m, v), hp)
    assert len(new) == 3
    for name, got, w in zip(("param", "m", "v"), new, want, strict=True):
        assert got.flags.c_contiguous, f"adamw {name} is not C-ordered"
        assert_close("adamw " + name, got, w, dtype)


@variants(numba_adamw.ADAMW_VARIANTS)
def test_adamw_variants_reject_mismatched_shapes(variant):
    hp = optim.AdamWStep(1.0, 0.9, 0.9, 1.0, 0.0, 1)
    with pytest.raises(ValueError, match=r"must share a shape, got \(3,\), \(4,\), \(3,\), \(3,\)"):
        numba_adamw.ADAMW_VARIANTS[variant](np.zeros(3), np.zeros(4), np.zeros(3), np.zeros(3), hp)


@pytest.mark.parametrize("variant", list(zip(numba_adamw.SQUARES_VARIANTS, numba_adamw.SCALE_VARIANTS, strict=True)))
@given(seed=seeds, dtype=dtypes, layout=layouts, shapes=st.lists(param_shapes, min_size=0, max_size=3),
       factor=st.floats(0.1, 2.0))  # fmt: skip
def test_global_norm_and_scale_variants_equal_the_specification(variant, seed, dtype, layout, shapes, factor):
    """sum_of_squares over a list of arrays (a float64 scalar), and scale of each of them into new arrays."""
    squares_name, scale_name = variant
    rng = np.random.default_rng(seed)
    arrays = [relayout(draw(rng, s, dtype), layout) for s in shapes]
    unwritten = Unwritten(*arrays)
    total = numba_adamw.SQUARES_VARIANTS[squares_name](arrays)
    scaled = numba_adamw.SCALE_VARIANTS[scale_name](arrays, factor)
    unwritten.check()
    want = optim.sum_of_squares(f64(*arrays))
    assert isinstance(total, np.float64)
    assert abs(total - want) <= 1e-12 * want, f"sum of squares {total!r}, expected {want!r}"
    assert len(scaled) == len(arrays)
    for got, w in zip(scaled, optim.scale(f64(*arrays), factor), strict=True):
        assert_close("scale", got, w, dtype)


# -- the head's ops -------------------------------------------------------------------------------


@variants(numba_head.GELU_TANH_VARIANTS)
@given(seed=seeds, dtype=dtypes, layout=layouts, lead=st.lists(small, min_size=1, max_size=2), fin=small,
       m=st.integers(1, 12))  # fmt: skip
def test_linear_gelu_tanh_variants_equal_the_specification(variant, seed, dtype, layout, lead, fin, m):
    """fc1 + tanh GELU forward and backward, pre-activations spread over about [-6, 6]."""
    rng = np.random.default_rng(seed)
    x, dout = draw(rng, (*lead, fin), dtype), draw(rng, (*lead, m), dtype)
    w, b = draw(rng, (fin, m), dtype, 2.0), draw(rng, (m,), dtype, 2.0)
    x, w, dout = (relayout(a, layout) for a in (x, w, dout))
    unwritten = Unwritten(x, w, b, dout)
    forward, backward = numba_head.GELU_TANH_VARIANTS[variant]
    out, cache = forward(x, w, b)
    dx, dw, db = backward(dout, cache)
    unwritten.check()
    x64, w64, b64, d64 = f64(x, w, b, dout)
    want, want_cache = layers.linear_gelu_tanh_forward(x64, w64, b64)
    # 0.5 z (1 + tanh u) cancels for z << 0 (1 + tanh u is 2e-11 at z = -6), in the reference as in the
    # kernels, and two tanh implementations an ulp of 1 apart then give outputs 1e-5 apart, relatively
    # (hypothesis found a 1 x 1 case): the error is measured against 0.5 |z|, the size of the terms.
    z = want_cache.gelu.x
    assert_close("gelu_tanh out", out, want, dtype, FLOAT32_SUMS, scale=0.5 * np.max(np.abs(z), initial=0.0))
    dz = layers.gelu_tanh_backward(d64, want_cache.gelu)  # the sums below are over terms of dz
    terms = {  # each gradient's sum of |terms|: where a gradient cancels, its error is measured against them
        "dx": np.abs(dz) @ np.abs(w64).T,
        "dweight": np.abs(x64).reshape(-1, fin).T @ np.abs(dz).reshape(-1, m),
        "dbias": np.abs(dz).reshape(-1, m).sum(axis=0),
    }
    for (name, s), got, w in zip(terms.items(), (dx, dw, db), layers.linear_gelu_tanh_backward(d64, want_cache),
                                 strict=True):  # fmt: skip
        assert_close("gelu_tanh " + name, got, w, dtype, FLOAT32_SUMS, scale=np.max(s))


@variants(numba_head.POS_EMBED_VARIANTS)
@given(seed=seeds, dtype=dtypes, layout=layouts, batch=small, n=small, d=small)
def test_pos_embed_variants_equal_the_specification(variant, seed, dtype, layout, batch, n, d):
    """x + the table, and backward's dx and the table's gradient summed over the batch."""
    rng = np.random.default_rng(seed)
    x, table, dout = (relayout(draw(rng, s, dtype), layout) for s in ((batch, n, d), (n, d), (batch, n, d)))
    unwritten = Unwritten(x, table, dout)
    forward, backward = numba_head.POS_EMBED_VARIANTS[variant]
    out, cache = forward(x, table)
    dx, dtable = backward(dout, cache)
    unwritten.check()
    x64, t64, d64 = f64(x, table, dout)
    want, want_cache = layers.pos_embed_forward(x64, t64)
    assert cache == want_cache
    assert_close("pos_embed out", out, want, dtype)
    want_dx, want_dtable = layers.pos_embed_backward(d64, want_cache)
    assert_close("pos_embed dx", dx, want_dx, dtype)
    assert_close("pos_embed dtable", dtable, want_dtable, dtype, scale=np.max(np.abs(d64).sum(axis=0)))


@variants(numba_head.TOKEN_MEAN_VARIANTS)
@given(seed=seeds, dtype=dtypes, layout=layouts, batch=small, n=st.integers(1, 9), d=small,
       shift=st.floats(-3, 3))  # fmt: skip
def test_token_mean_variants_equal_the_specification(variant, seed, dtype, layout, batch, n, d, shift):
    """The mean over tokens (its sum can cancel: measured against the mean of |x|) and its backward."""
    rng = np.random.default_rng(seed)
    x = relayout((draw(rng, (batch, n, d), np.float64) + shift).astype(dtype), layout)
    dout = relayout(draw(rng, (batch, d), dtype), layout)
    unwritten = Unwritten(x, dout)
    forward, backward = numba_head.TOKEN_MEAN_VARIANTS[variant]
    out, cache = forward(x)
    dx = backward(dout, cache)
    unwritten.check()
    x64, d64 = f64(x, dout)
    want, want_cache = layers.token_mean_forward(x64)
    assert cache == want_cache
    assert_close("token_mean out", out, want, dtype, scale=np.max(np.abs(x64).mean(axis=1)))
    assert_close("token_mean dx", dx, layers.token_mean_backward(d64, want_cache), dtype)


@variants(numba_head.TANH_VARIANTS)
@given(seed=seeds, dtype=dtypes, layout=layouts, lead=st.lists(small, min_size=0, max_size=2), f=small)
def test_tanh_variants_equal_the_specification(variant, seed, dtype, layout, lead, f):
    """tanh and its backward from the kept output, on values over about [-9, 9] (into saturation)."""
    rng = np.random.default_rng(seed)
    x, dout = (relayout(draw(rng, (*lead, f), dtype, 3.0), layout) for _ in range(2))
    unwritten = Unwritten(x, dout)
    forward, backward = numba_head.TANH_VARIANTS[variant]
    out, cache = forward(x)
    dx = backward(dout, cache)
    unwritten.check()
    x64, d64 = f64(x, dout)
    want, want_cache = layers.tanh_forward(x64)
    assert_close("tanh out", out, want, dtype)
    # dx = dout (1 - tanh^2): near saturation 1 - tanh^2 cancels, and float32's rounding of tanh (and of
    # tanh^2) leaves an absolute error of ~1e-7 in it; measured against |dout|, the size of dx's terms
    scale = np.max(np.abs(d64), initial=0.0)
    assert_close("tanh dx", dx, layers.tanh_backward(d64, want_cache), dtype, scale=scale)


# -- the registry runs the last rungs -------------------------------------------------------------


def test_the_backend_runs_each_tables_last_variant():
    """The last rung of each table is what `get_backend("numba")` runs; the tables are ordered plain to fast."""
    backend = get_backend("numba")
    tables = {
        "patchify": (numba_patchify.VARIANTS, (backend.patchify_forward, backend.patchify_backward)),
        "adamw": (numba_adamw.ADAMW_VARIANTS, backend.adamw_update),
        "sum_of_squares": (numba_adamw.SQUARES_VARIANTS, backend.sum_of_squares),
        "scale": (numba_adamw.SCALE_VARIANTS, backend.scale),
        "gelu_tanh": (numba_head.GELU_TANH_VARIANTS,
                      (backend.linear_gelu_tanh_forward, backend.linear_gelu_tanh_backward)),
        "pos_embed": (numba_head.POS_EMBED_VARIANTS, (backend.pos_embed_forward, backend.pos_embed_backward)),
        "token_mean": (numba_head.TOKEN_MEAN_VARIANTS, (backend.token_mean_forward, backend.token_mean_backward)),
        "tanh": (numba_head.TANH_VARIANTS, (backend.tanh_forward, backend.tanh_backward)),
    }  # fmt: skip
    for op, (table, runs) in tables.items():
        names = list(table)
        assert len(names) >= 2, f"{op}: a ladder needs a plain and a fast rung, got {names}"
        assert [int(n.split("_")[0]) for n in names] == list(range(1, len(names) + 1)), f"{op}: {names}"
        assert table[names[-1]] == runs, f"{op}: the backend does not run {names[-1]}"
        assert len({id(v) for v in table.values()}) == len(names), f"{op}: two rungs are the same function"


def test_the_package_docstring_names_every_variant():
    """kernels/__init__.py lists each numba module's ladder: a new rung must be named there too."""
    doc = kernels.__doc__
    for info in pkgutil.iter_modules(kernels.__path__):
        if not info.name.startswith("numba_"):
            continue
        entry = "\n    " + info.name  # each module's entry starts a line, indented by four
        assert entry in doc, f"kernels/__init__.py does not list {info.name}"
        module = importlib.import_module(f"tinyvit.kernels.{info.name}")
        line = doc[doc.index(entry) + 1 :].split("\n    numba_")[0]  # up to the next module's entry
        for table, variants in vars(module).items():
            if table.endswith("VARIANTS") and isinstance(variants, dict):
                missing = [name for name in variants if not re.search(rf"\b{re.escape(name)}\b", line)]
                assert not missing, f"kernels/__init__.py's entry for {info.name} lacks {table} {missing}"

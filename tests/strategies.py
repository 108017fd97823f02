"""Hypothesis strategies shared by the tests: small shapes and bounded float64 values.

The shapes are small on purpose: a float64 finite-difference check perturbs
every entry of every input twice, so a (3, 6, 24) qkv already costs 864
forward passes. The values are bounded (in [-2, 2], never NaN or inf) so that
the checks test the layer's calculus, not overflow.

Names follow the shape alphabet: B batch, N tokens, D width, H heads, P patch
side, C channels, K classes.
"""

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

batch = st.integers(1, 3)  # B
tokens = st.integers(2, 6)  # N, class token included
width = st.integers(1, 8)  # D, or any feature width
channels = st.integers(1, 3)  # C
classes = st.integers(2, 5)  # K
smoothing = st.floats(0.01, 0.9)  # label smoothing, away from 0 so it really smooths

# Values, bounded and finite, in two flavours.
#
# `float_arrays`: hypothesis picks every element, and it picks the nasty ones on purpose: zeros,
# ties, round numbers, a whole array of one value. Right for properties (softmax rows sum to 1,
# patchify round-trips) and for gradient checks of ops that only move or add numbers.
#
# `generic_arrays`: hypothesis picks a seed and the elements come uniform from it. Gradient checks
# of ops that multiply and normalise need these. Structured values make some gradient entries
# tiny but not zero -- in a LayerNorm row [a, b, b] moving a only rescales the row, so d out / d a
# is ~1e-9 -- and a finite difference cannot judge an entry that small: its own rounding noise is
# ~eps * |out| / h ~ 1e-10 in absolute terms, which the relative error (floor 1e-8) would report
# as a 1e-2 failure of a correct backward. Generic values make such entries vanishingly unlikely.
values = st.floats(-2.0, 2.0, allow_nan=False, allow_infinity=False, width=64)
seeds = st.integers(0, 2**32 - 1)


def float_arrays(shape, elements=values):
    """A float64 array of `shape` whose elements hypothesis draws (bounded, finite)."""
    return arrays(np.float64, shape, elements=elements)


@st.composite
def generic_arrays(draw, shape, low=-2.0, high=2.0):
    """A float64 array of `shape`, uniform in [low, high), from a hypothesis-drawn seed."""
    return np.random.default_rng(draw(seeds)).uniform(low, high, size=shape)


@st.composite
def heads_and_width(draw, max_heads=3, max_head_dim=4):
    """(H, D) with H dividing D: D = H * Dh."""
    heads = draw(st.integers(1, max_heads))
    head_dim = draw(st.integers(1, max_head_dim))
    return heads, heads * head_dim


@st.composite
def patch_and_image(draw, max_patch=3, max_grid=3):
    """(P, image side) with P dividing the side: side = P * (patches per side)."""
    patch = draw(st.integers(1, max_patch))
    grid = draw(st.integers(1, max_grid))
    return patch, patch * grid


def labels(batch_size, num_classes):
    """(B,) int64 labels in [0, K)."""
    return arrays(np.int64, (batch_size,), elements=st.integers(0, num_classes - 1))

"""Numba CPU kernels for the token embedding and the residual add
(the specification is tinyvit.layers.embed and the model's `x + h`).

Both ops only move memory, so their ladders are about passes over memory and
the cores that do them, not arithmetic.

Embedding variants, plain to fast (VARIANTS: name -> (forward, backward), the last is the default):
1_loops      one image after another: the class token written as row 0 and the position
             table added, in one pass that writes each (N, D) image once (instead of
             concatenate, then add); backward reads dout once for dx and for dpos, summed
             over the batch in a float64 accumulator.
2_parallel   images spread over the cores (`prange`); dpos, a sum over images, becomes one
             float64 partial per chunk of IMAGES_PER_CHUNK images, added at the end.

Residual-add variants (ADD_VARIANTS: name -> add(a, b)):
1_loops      a + b into a fresh array, one element after another (what NumPy's add does).
2_parallel   the same loop over the cores: the add is memory-bound, so the gain is the
             second core's share of the memory bandwidth.
"""

import numpy as np
from numba import njit, prange

from tinyvit.layers.embed import EmbedCache

from .numba_linear import FASTMATH

IMAGES_PER_CHUNK = 8  # images per partial sum in embed_rows_backward


# -- the residual add -----------------------------------------------------------------------------


@njit(fastmath=FASTMATH, cache=True)
def residual_add_loops(a, b, out):
    """out = a + b over flat, equal-length arrays, one element after another."""
    for i in range(a.size):
        out[i] = a[i] + b[i]


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def residual_add(a, b, out):
    """out = a + b over flat, equal-length arrays, in parallel."""
    for i in prange(a.size):
        out[i] = a[i] + b[i]


def _add(kernel, a, b):
    if a.shape != b.shape:
        raise ValueError(f"add expects equal shapes, got {a.shape} and {b.shape}")
    out = np.empty(a.shape, a.dtype)  # C order, whatever a's: out.reshape(-1) is a view
    kernel(np.ascontiguousarray(a).reshape(-1), np.ascontiguousarray(b).reshape(-1), out.reshape(-1))
    return out


def add_loops(a, b):
    """(a + b) as a fresh array of a's shape (one core); a and b must have the same shape."""
    return _add(residual_add_loops, a, b)


def add(a, b):
    """(a + b) as a fresh array of a's shape (all cores); a and b must have the same shape."""
    return _add(residual_add, a, b)


ADD_VARIANTS = {"1_loops": add_loops, "2_parallel": add}


# -- class token + position embedding ------------------------------------------------------------


@njit(fastmath=FASTMATH, cache=True, inline="always")
def _embed_image(x, cls_token, pos_embed, out, b):
    """Image b: out[b] (N, D) = [cls; x[b]] + pos_embed."""
    n, D = x.shape[1], x.shape[2]
    for d in range(D):
        out[b, 0, d] = cls_token[d] + pos_embed[0, d]
    for i in range(n):
        for d in range(D):
            out[b, i + 1, d] = x[b, i, d] + pos_embed[i + 1, d]


@njit(fastmath=FASTMATH, cache=True, inline="always")
def _embed_image_backward(dout, dx, dpos, b):
    """Image b: dx[b] (N-1, D) written; dout[b] added into the float64 accumulator dpos (N, D)."""
    N, D = dout.shape[1], dout.shape[2]
    for i in range(N):
        for d in range(D):
            dpos[i, d] += dout[b, i, d]
    for i in range(1, N):
        for d in range(D):
            dx[b, i - 1, d] = dout[b, i, d]


@njit(fastmath=FASTMATH, cache=True)
def embed_rows_forward_loops(x, cls_token, pos_embed, out):
    """x (B, N-1, D) -> out (B, N, D) = [cls; x] + pos_embed, one image after another."""
    for b in range(x.shape[0]):
        _embed_image(x, cls_token, pos_embed, out, b)


@njit(fastmath=FASTMATH, cache=True)
def embed_rows_backward_loops(dout, dx):
    """dout (B, N, D) -> dx (B, N-1, D) written; returns dpos (N, D), the sum over images."""
    B, N, D = dout.shape
    acc = np.zeros((N, D), dtype=np.float64)
    for b in range(B):
        _embed_image_backward(dout, dx, acc, b)
    return acc.astype(dout.dtype)


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def embed_rows_forward(x, cls_token, pos_embed, out):
    """x (B, N-1, D) -> out (B, N, D) = [cls; x] + pos_embed, images in parallel."""
    for b in prange(x.shape[0]):
        _embed_image(x, cls_token, pos_embed, out, b)


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def embed_rows_backward(dout, dx):
    """dout (B, N, D) -> dx (B, N-1, D) written; returns dpos (N, D), the sum over images."""
    B, N, D = dout.shape
    chunks = (B + IMAGES_PER_CHUNK - 1) // IMAGES_PER_CHUNK
    partial = np.zeros((chunks, N, D), dtype=np.float64)
    for c in prange(chunks):
        for b in range(c * IMAGES_PER_CHUNK, min(B, (c + 1) * IMAGES_PER_CHUNK)):
            _embed_image_backward(dout, dx, partial[c], b)
    dpos = np.zeros((N, D), dtype=dout.dtype)
    for i in prange(N):
        for d in range(D):
            s = 0.0
            for c in range(chunks):
                s += partial[c, i, d]
            dpos[i, d] = s
    return dpos


def _forward(kernel, x, cls_token, pos_embed):
    B, n, D = x.shape
    out = np.empty((B, n + 1, D), dtype=x.dtype)
    kernel(np.ascontiguousarray(x), cls_token, np.ascontiguousarray(pos_embed), out)
    return out, EmbedCache()


def _backward(kernel, dout):
    B, N, D = dout.shape
    dx = np.empty((B, N - 1, D), dtype=dout.dtype)
    dpos = kernel(np.ascontiguousarray(dout), dx)
    return dx, dpos[0].copy(), dpos  # the class token's gradient is row 0 of the table's


def embed_forward_loops(x, cls_token, pos_embed):
    """x (B, N-1, D), cls_token (D,), pos_embed (N, D) -> (B, N, D), one image after another."""
    return _forward(embed_rows_forward_loops, x, cls_token, pos_embed)


def embed_backward_loops(dout, cache):
    """dout (B, N, D) -> dx (B, N-1, D), dcls_token (D,), dpos_embed (N, D), one image after another."""
    return _backward(embed_rows_backward_loops, dout)


def embed_forward(x, cls_token, pos_embed):
    """x (B, N-1, D), cls_token (D,), pos_embed (N, D) -> (B, N, D), images in parallel."""
    return _forward(embed_rows_forward, x, cls_token, pos_embed)


def embed_backward(dout, cache):
    """dout (B, N, D) -> dx (B, N-1, D), dcls_token (D,), dpos_embed (N, D), images in parallel.

    The class token's gradient is row 0 of the position table's: both sum dout[:, 0] over B."""
    return _backward(embed_rows_backward, dout)


VARIANTS = {
    "1_loops": (embed_forward_loops, embed_backward_loops),
    "2_parallel": (embed_forward, embed_backward),
}

# class_token_forward / class_token_backward: the specification (tinyvit.layers.embed) is already one
# strided copy each way, so the numba backend uses it as it is.

"""Numba CPU kernels for the token embedding and the residual add
(the specification is tinyvit.layers.embed and the model's `x + h`).

Variants, plain to fast:
1. `residual_add`        a + b into a fresh array in one parallel pass; NumPy's add runs on
                         one core, this one on all of them (the add is memory-bound, so the
                         gain is the second core's bandwidth).
2. `embed_rows_forward`  the class token prepended and the position table added in one pass
                         that writes each (N, D) image once, instead of concatenate then add.
3. `embed_rows_backward` dx, dcls and dpos from one read of dout; dpos sums over the batch as
                         per-image-chunk float64 partials.
"""


import numpy as np
from numba import njit, prange

from tinyvit.layers.embed import EmbedCache

from .numba_linear import FASTMATH

IMAGES_PER_CHUNK = 8  # images per partial sum in embed_rows_backward


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def residual_add(a, b, out):
    """out = a + b over flat, equal-length arrays."""
    for i in prange(a.size):
        out[i] = a[i] + b[i]


def add(a, b):
    """(a + b) as a fresh array of a's shape; a and b must have the same shape."""
    if a.shape != b.shape:
        raise ValueError(f"add expects equal shapes, got {a.shape} and {b.shape}")
    out = np.empty_like(a)
    residual_add(np.ascontiguousarray(a).reshape(-1), np.ascontiguousarray(b).reshape(-1), out.reshape(-1))
    return out


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def embed_rows_forward(x, cls_token, pos_embed, out):
    """x (B, N-1, D) -> out (B, N, D) = [cls; x] + pos_embed."""
    B, n, D = x.shape
    for b in prange(B):
        for d in range(D):
            out[b, 0, d] = cls_token[d] + pos_embed[0, d]
        for i in range(n):
            for d in range(D):
                out[b, i + 1, d] = x[b, i, d] + pos_embed[i + 1, d]


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def embed_rows_backward(dout, dx):
    """dout (B, N, D) -> dx (B, N-1, D) written; returns dpos (N, D), the sum over images."""
    B, N, D = dout.shape
    chunks = (B + IMAGES_PER_CHUNK - 1) // IMAGES_PER_CHUNK
    partial = np.zeros((chunks, N, D), dtype=np.float64)
    for c in prange(chunks):
        for b in range(c * IMAGES_PER_CHUNK, min(B, (c + 1) * IMAGES_PER_CHUNK)):
            for i in range(N):
                for d in range(D):
                    partial[c, i, d] += dout[b, i, d]
            for i in range(1, N):
                for d in range(D):
                    dx[b, i - 1, d] = dout[b, i, d]
    dpos = np.zeros((N, D), dtype=dout.dtype)
    for i in prange(N):
        for d in range(D):
            s = 0.0
            for c in range(chunks):
                s += partial[c, i, d]
            dpos[i, d] = s
    return dpos


def embed_forward(x, cls_token, pos_embed):
    """x (B, N-1, D), cls_token (D,), pos_embed (N, D) -> (B, N, D)."""
    B, n, D = x.shape
    out = np.empty((B, n + 1, D), dtype=x.dtype)
    embed_rows_forward(np.ascontiguousarray(x), cls_token, np.ascontiguousarray(pos_embed), out)
    return out, EmbedCache()


def embed_backward(dout, cache):
    """dout (B, N, D) -> dx (B, N-1, D), dcls_token (D,), dpos_embed (N, D).

    The class token's gradient is row 0 of the position table's: both sum dout[:, 0] over B."""
    B, N, D = dout.shape
    dx = np.empty((B, N - 1, D), dtype=dout.dtype)
    dpos = embed_rows_backward(np.ascontiguousarray(dout), dx)
    return dx, dpos[0].copy(), dpos


# class_token_forward / class_token_backward: the specification (tinyvit.layers.embed) is already one
# strided copy each way, so the numba backend uses it as it is.

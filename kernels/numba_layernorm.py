"""Numba CPU kernels for LayerNorm over the last axis (the specification is tinyvit.layers.layernorm).

Every leading position is one row of D values; the kernels work on the (R, D)
rows and keep the mean and rstd of each row (float64, even for float32 x)
for backward, which recomputes xhat from them rather than storing it.

Variants, plain to fast (VARIANTS: name -> (forward, backward), the last is the default):
1_loops           one row after another: the mean, the variance about it, then the output
                  (three short loops over a row that stays in L1 cache, so the row is read
                  from memory once). Backward per row: xhat recomputed, the two row means of
                  the derivation, mean(g) (the term through the mean) and mean(g xhat) (the
                  term through the variance), then dx; dweight and dbias summed over all rows
                  into one float64 accumulator.
2_parallel_rows   the same row kernels with rows spread over the cores (`prange`). Backward's
                  sums over rows become a parallel reduction without atomics: each chunk of
                  CHUNK_ROWS rows adds into its own float64 partial, and the few partials are
                  added at the end.

The residual add fused with the LayerNorm after it (ADD_VARIANTS, the same shape of
ladder; the specification is tinyvit.layers.layernorm.add_layernorm_*). Composed, the
add reads x and h and writes s, then LayerNorm reads s again and writes y; backward
writes LayerNorm's dx, then the add reads it back with ds. Fused, each row of s is made
and normalised while it sits in L1 cache, and ds is added to a row of dx before it
leaves: one pass over (R, D) saved each way.
1_loops           one row after another: s = x + h written, then the row kernel above on
                  it; backward is the row kernel above, then ds added to the row of dx.
2_parallel_rows   the same over the cores, rows (forward) and chunks of rows (backward).
"""

from typing import NamedTuple

import numpy as np
from numba import njit, prange

from tinyvit.layers.layernorm import EPS

from .numba_linear import CHUNK_ROWS, FASTMATH, rows, sum_partials


@njit(fastmath=FASTMATH, cache=True, inline="always")
def _normalise_row(x, weight, bias, eps, out, mean, rstd, r):
    """Row r of x (R, D) -> row r of out; mean[r] and rstd[r] written."""
    D = x.shape[1]
    s = 0.0
    for j in range(D):
        s += x[r, j]
    mu = s / D
    ss = 0.0
    for j in range(D):
        d = x[r, j] - mu
        ss += d * d  # about the mean: as safe as the reference's two-pass variance
    inv = 1.0 / np.sqrt(ss / D + eps)
    for j in range(D):
        out[r, j] = (x[r, j] - mu) * inv * weight[j] + bias[j]
    mean[r] = mu
    rstd[r] = inv


@njit(fastmath=FASTMATH, cache=True, inline="always")
def _row_backward(dout, x, weight, mean, rstd, dx, dw, db, r):
    """Row r: dx[r] written; dout * xhat and dout added into the float64 accumulators dw and db (D,)."""
    D = x.shape[1]
    mu = np.float64(mean[r])
    inv = np.float64(rstd[r])
    sg = 0.0
    sgx = 0.0
    for j in range(D):
        xhat = (x[r, j] - mu) * inv
        g = dout[r, j] * weight[j]  # the gradient at xhat
        sg += g
        sgx += g * xhat
        dw[j] += dout[r, j] * xhat
        db[j] += dout[r, j]
    mg = sg / D  # mean(g): the term through the mean
    mgx = sgx / D  # mean(g xhat): the term through the variance
    for j in range(D):
        xhat = (x[r, j] - mu) * inv
        dx[r, j] = inv * (dout[r, j] * weight[j] - mg - xhat * mgx)


@njit(fastmath=FASTMATH, cache=True, inline="always")
def _add_normalise_row(x, h, weight, bias, eps, s, out, mean, rstd, r):
    """Row r: s[r] = x[r] + h[r], then normalised into out[r] (the row is still in L1 cache)."""
    for j in range(x.shape[1]):
        s[r, j] = x[r, j] + h[r, j]
    _normalise_row(s, weight, bias, eps, out, mean, rstd, r)


@njit(fastmath=FASTMATH, cache=True, inline="always")
def _row_backward_add(dout, x, weight, mean, rstd, dresid, dx, dw, db, r):
    """Row r: LayerNorm's dx[r], then the residual stream's own gradient dresid[r] added to it."""
    _row_backward(dout, x, weight, mean, rstd, dx, dw, db, r)
    for j in range(x.shape[1]):
        dx[r, j] = dresid[r, j] + dx[r, j]


# -- 1_loops --------------------------------------------------------------------------------------


@njit(fastmath=FASTMATH, cache=True)
def layernorm_rows_forward_loops(x, weight, bias, eps, out, mean, rstd):
    """x (R, D) -> out (R, D); mean and rstd (R,) written. One row after another."""
    for r in range(x.shape[0]):
        _normalise_row(x, weight, bias, eps, out, mean, rstd, r)


@njit(fastmath=FASTMATH, cache=True)
def layernorm_rows_backward_loops(dout, x, weight, mean, rstd, dx):
    """dx (R, D) written; returns (dweight, dbias), each (D,). One row after another."""
    D = x.shape[1]
    dw = np.zeros((1, D), dtype=np.float64)
    db = np.zeros((1, D), dtype=np.float64)
    for r in range(x.shape[0]):
        _row_backward(dout, x, weight, mean, rstd, dx, dw[0], db[0], r)
    return sum_partials(dw, x.dtype), sum_partials(db, x.dtype)


@njit(fastmath=FASTMATH, cache=True)
def add_layernorm_rows_forward_loops(x, h, weight, bias, eps, s, out, mean, rstd):
    """x, h (R, D) -> s = x + h and out = LayerNorm(s), (R, D); mean and rstd (R,) written. One row at a time."""
    for r in range(x.shape[0]):
        _add_normalise_row(x, h, weight, bias, eps, s, out, mean, rstd, r)


@njit(fastmath=FASTMATH, cache=True)
def add_layernorm_rows_backward_loops(dout, x, weight, mean, rstd, dresid, dx):
    """dx = dresid + LayerNorm's dx, (R, D), written; returns (dweight, dbias). One row at a time."""
    D = x.shape[1]
    dw = np.zeros((1, D), dtype=np.float64)
    db = np.zeros((1, D), dtype=np.float64)
    for r in range(x.shape[0]):
        _row_backward_add(dout, x, weight, mean, rstd, dresid, dx, dw[0], db[0], r)
    return sum_partials(dw, x.dtype), sum_partials(db, x.dtype)


# -- 2_parallel_rows ------------------------------------------------------------------------------


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def layernorm_rows_forward(x, weight, bias, eps, out, mean, rstd):
    """x (R, D) -> out (R, D); mean and rstd (R,) written. Rows in parallel."""
    for r in prange(x.shape[0]):
        _normalise_row(x, weight, bias, eps, out, mean, rstd, r)


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def layernorm_rows_backward(dout, x, weight, mean, rstd, dx):
    """dx (R, D) written; returns (dweight, dbias), each (D,). Chunks of rows in parallel."""
    R, D = x.shape
    chunks = (R + CHUNK_ROWS - 1) // CHUNK_ROWS
    pw = np.zeros((chunks, D), dtype=np.float64)
    pb = np.zeros((chunks, D), dtype=np.float64)
    for c in prange(chunks):
        for r in range(c * CHUNK_ROWS, min(R, (c + 1) * CHUNK_ROWS)):
            _row_backward(dout, x, weight, mean, rstd, dx, pw[c], pb[c], r)
    return sum_partials(pw, x.dtype), sum_partials(pb, x.dtype)


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def add_layernorm_rows_forward(x, h, weight, bias, eps, s, out, mean, rstd):
    """x, h (R, D) -> s = x + h and out = LayerNorm(s), (R, D); mean and rstd (R,) written. Rows in parallel."""
    for r in prange(x.shape[0]):
        _add_normalise_row(x, h, weight, bias, eps, s, out, mean, rstd, r)


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def add_layernorm_rows_backward(dout, x, weight, mean, rstd, dresid, dx):
    """dx = dresid + LayerNorm's dx, (R, D), written; returns (dweight, dbias). Chunks of rows in parallel."""
    R, D = x.shape
    chunks = (R + CHUNK_ROWS - 1) // CHUNK_ROWS
    pw = np.zeros((chunks, D), dtype=np.float64)
    pb = np.zeros((chunks, D), dtype=np.float64)
    for c in prange(chunks):
        for r in range(c * CHUNK_ROWS, min(R, (c + 1) * CHUNK_ROWS)):
            _row_backward_add(dout, x, weight, mean, rstd, dresid, dx, pw[c], pb[c], r)
    return sum_partials(pw, x.dtype), sum_partials(pb, x.dtype)


# -- the layer, on either pair of row kernels ---------------------------------------------------


class LayerNormCache(NamedTuple):
    """Not the specification's cache: x is kept as its (R, D) rows, and mean and rstd are (R,)."""

    x: np.ndarray  # (R, D): the rows of the input (..., D), flattened
    weight: np.ndarray  # (D,)
    mean: np.ndarray  # (R,) float64
    rstd: np.ndarray  # (R,) float64


def _forward(row_kernel, x, weight, bias, eps):
    x2 = rows(x)
    out = np.empty_like(x2)
    mean = np.empty(x2.shape[0], dtype=np.float64)  # float64 even for float32 x: xhat is recomputed from them
    rstd = np.empty(x2.shape[0], dtype=np.float64)
    row_kernel(x2, weight, bias, eps, out, mean, rstd)
    return out.reshape(x.shape), LayerNormCache(x2, weight, mean, rstd)


def _backward(row_kernel, dout, cache):
    x2, weight, mean, rstd = cache
    dx = np.empty_like(x2)
    dweight, dbias = row_kernel(rows(dout), x2, weight, mean, rstd, dx)
    return dx.reshape(dout.shape), dweight, dbias


def layernorm_forward_loops(x, weight, bias, eps=EPS):
    """(..., D) -> (..., D), normalised per row, then scaled and shifted (rows one after another)."""
    return _forward(layernorm_rows_forward_loops, x, weight, bias, eps)


def layernorm_backward_loops(dout, cache):
    """dout (..., D) -> dx (..., D), dweight (D,), dbias (D,) (rows one after another)."""
    return _backward(layernorm_rows_backward_loops, dout, cache)


def layernorm_forward(x, weight, bias, eps=EPS):
    """(..., D) -> (..., D), normalised per row, then scaled and shifted (rows in parallel)."""
    return _forward(layernorm_rows_forward, x, weight, bias, eps)


def layernorm_backward(dout, cache):
    """dout (..., D) -> dx (..., D), dweight (D,), dbias (D,) (rows in parallel)."""
    return _backward(layernorm_rows_backward, dout, cache)


def _add_forward(row_kernel, x, h, weight, bias, eps):
    if x.shape != h.shape:
        raise ValueError(f"add_layernorm expects x and h of equal shapes, got {x.shape} and {h.shape}")
    x2, h2 = rows(x), rows(h)
    s, out = np.empty_like(x2), np.empty_like(x2)
    mean = np.empty(x2.shape[0], dtype=np.float64)
    rstd = np.empty(x2.shape[0], dtype=np.float64)
    row_kernel(x2, h2, weight, bias, eps, s, out, mean, rstd)
    return (s.reshape(x.shape), out.reshape(x.shape)), LayerNormCache(s, weight, mean, rstd)


def _add_backward(row_kernel, dout, cache):
    ds, dy = dout
    if ds.shape != dy.shape:
        raise ValueError(f"add_layernorm_backward expects ds and dy of equal shapes, got {ds.shape} and {dy.shape}")
    x2, weight, mean, rstd = cache
    dx = np.empty_like(x2)
    dweight, dbias = row_kernel(rows(dy), x2, weight, mean, rstd, rows(ds), dx)
    return dx.reshape(dy.shape), dweight, dbias


def add_layernorm_forward_loops(x, h, weight, bias, eps=EPS):
    """x, h (..., D) -> ((s = x + h, LayerNorm(s)), cache) (rows one after another)."""
    return _add_forward(add_layernorm_rows_forward_loops, x, h, weight, bias, eps)


def add_layernorm_backward_loops(dout, cache):
    """dout = (ds, dy) (..., D) -> ds + LayerNorm's dx (..., D), dweight (D,), dbias (D,) (rows one after another)."""
    return _add_backward(add_layernorm_rows_backward_loops, dout, cache)


def add_layernorm_forward(x, h, weight, bias, eps=EPS):
    """x, h (..., D) -> ((s = x + h, LayerNorm(s)), cache) (rows in parallel)."""
    return _add_forward(add_layernorm_rows_forward, x, h, weight, bias, eps)


def add_layernorm_backward(dout, cache):
    """dout = (ds, dy) (..., D) -> ds + LayerNorm's dx (..., D), dweight (D,), dbias (D,) (rows in parallel)."""
    return _add_backward(add_layernorm_rows_backward, dout, cache)


VARIANTS = {
    "1_loops": (layernorm_forward_loops, layernorm_backward_loops),
    "2_parallel_rows": (layernorm_forward, layernorm_backward),
}

ADD_VARIANTS = {
    "1_loops": (add_layernorm_forward_loops, add_layernorm_backward_loops),
    "2_parallel_rows": (add_layernorm_forward, add_layernorm_backward),
}

"""Learned 2-D relative position bias: one number per head for each (row, column) offset.

Attention with it adds bias[h, i, j] to the scores of head h before the softmax, where
bias[h, i, j] = table[h, clip(r_j - r_i) + K, clip(c_j - c_i) + K] for patches i, j at
grid rows r and columns c, offsets clipped to [-K, K] (Shaw et al., 2018, in 2-D).
The table (H, 2K+1, 2K+1) does not depend on the grid, so one table serves every
resolution (progressive resizing needs no interpolation). A class token is no place on
the grid: its row and column of the bias are zero.

The gather is written as a product with a constant one-hot matrix, (H, T) @ (T, N*N),
so forward and backward are matrix products in any array namespace (NumPy, JAX): the
backward is the same matrix transposed, which sums the gradient of every pair of
patches that shares an offset into that offset's entry.
"""

from functools import lru_cache
from typing import NamedTuple

import numpy as np


@lru_cache(maxsize=16)
def offset_one_hot(grid: int, max_offset: int, class_token: bool) -> np.ndarray:
    """(T, N*N) float64, T = (2K+1)^2: column i*N + j has a 1 in the row of the clipped offset
    from token i to token j, or no 1 at all where i or j is the class token."""
    K = max_offset
    rows, cols = (a.reshape(-1) for a in np.mgrid[:grid, :grid])  # (g*g,)
    dr = np.clip(rows[None, :] - rows[:, None], -K, K) + K  # (g*g, g*g), [i, j]: offset from i to j
    dc = np.clip(cols[None, :] - cols[:, None], -K, K) + K
    c = int(class_token)
    N, T = c + grid * grid, (2 * K + 1) ** 2
    index = np.full((N, N), -1)
    index[c:, c:] = dr * (2 * K + 1) + dc
    pairs = np.flatnonzero(index.reshape(-1) >= 0)
    one_hot = np.zeros((T, N * N))
    one_hot[index.reshape(-1)[pairs], pairs] = 1.0
    one_hot.setflags(write=False)
    return one_hot


class RelPosCache(NamedTuple):
    one_hot: np.ndarray  # (T, N*N), of the table's dtype
    shape: tuple  # the table's (H, 2K+1, 2K+1)


def rel_pos_bias_forward(table, grid, class_token):
    """table (H, 2K+1, 2K+1) -> bias (H, N, N) for a grid x grid of patches (and a class token)."""
    H, S, _ = table.shape
    one_hot = offset_one_hot(grid, (S - 1) // 2, bool(class_token)).astype(table.dtype)
    N = int(class_token) + grid * grid
    bias = (table.reshape(H, S * S) @ one_hot).reshape(H, N, N)
    return bias, RelPosCache(one_hot, table.shape)


def rel_pos_bias_backward(dbias, cache):
    """dbias (H, N, N) -> dtable (H, 2K+1, 2K+1): each offset's entry sums the pairs that share it."""
    H = dbias.shape[0]
    return (dbias.reshape(H, -1) @ cache.one_hot.T).reshape(cache.shape)

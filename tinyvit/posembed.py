"""Fixed position embeddings: the tables of ViTConfig.pos_embed "sincos2d" and "none".

A learned position embedding is a parameter (tinyvit.model.param_shapes). The
fixed kinds are not: their table is a function of the config alone, rebuilt for
whatever grid the model has, so a change of resolution needs no interpolation.
This module builds those tables; the model adds them with the same embedding
layers as a learned table and drops the table's gradient.

"sincos2d" is big_vision's 2-D sine-cosine embedding: the D columns are four
quarters, sin(c w), cos(c w), sin(r w), cos(r w), for the patch's column c and row
r on the grid and D/4 frequencies w_i = 1 / 10000^(i / (D/4 - 1)), from 1 down to
1/10000. A class token gets no position (a row of zeros), as in big_vision, where
the class token is prepended after the embedding is added.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from .config import ViTConfig

TEMPERATURE = 10_000.0  # the longest wavelength, in patches, is 2 pi times this


def sincos2d(grid: int, dim: int) -> np.ndarray:
    """(grid*grid, dim) float64: row r*grid + c is the embedding of the patch in row r, column c."""
    if dim % 4 or dim < 8:
        raise ValueError(f"sincos2d needs dim divisible by 4 and at least 8, got {dim}")
    quarter = dim // 4
    omega = 1.0 / TEMPERATURE ** (np.arange(quarter) / (quarter - 1))  # (D/4,)
    rows, cols = np.mgrid[:grid, :grid]
    r = rows.reshape(-1, 1) * omega  # (grid*grid, D/4)
    c = cols.reshape(-1, 1) * omega
    return np.concatenate([np.sin(c), np.cos(c), np.sin(r), np.cos(r)], axis=1)


@lru_cache(maxsize=16)
def _table(kind: str, grid: int, dim: int, class_token: bool) -> np.ndarray:
    patches = sincos2d(grid, dim) if kind == "sincos2d" else np.zeros((grid * grid, dim))
    table = np.concatenate([np.zeros((int(class_token), dim)), patches])  # (N, D)
    table.setflags(write=False)  # shared by every call: nobody may change it
    return table


def fixed_table(cfg: ViTConfig) -> np.ndarray:
    """The (N, D) float64 table a model with a fixed position embedding adds to its tokens
    (read-only; zeros for "none"). Raises ValueError for a learned embedding, which is a parameter."""
    if cfg.pos_embed == "learned":
        raise ValueError("a learned position embedding is the parameter pos_embed, not a fixed table")
    return _table(cfg.pos_embed, cfg.grid_size, cfg.dim, cfg.has_class_token)


def pos_embed_table(cfg: ViTConfig, params: dict) -> np.ndarray:
    """The (N, D) table a model adds to its tokens, learned or fixed, as a host array."""
    if cfg.pos_embed == "learned":
        return np.asarray(params["pos_embed"])
    return fixed_table(cfg)

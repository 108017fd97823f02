"""Changing a model's resolution: interpolate the position embedding to a new grid.

The paper fine-tunes at a higher resolution than it pre-trains (section 3.2):
the patch size stays, so the grid of patches grows, and the learned position
embedding of the old grid is interpolated in 2-D to the new grid. The class
token's row has no place on the grid and is kept as it is. The trainer uses the
same step for progressive resolution: train small, then grow (the images are
resized by tinyvit.data.base.resize_images).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .config import ViTConfig


def resize_pos_embed(pos_embed: np.ndarray, new_grid: int) -> np.ndarray:
    """(1 + g*g, D) -> (1 + new_grid*new_grid, D), bilinear on the grid, class row kept.

    Bilinear (order 1) zoom as in google-research/vision_transformer's checkpoint loader."""
    n, D = pos_embed.shape
    g = round((n - 1) ** 0.5)
    if g * g != n - 1:
        raise ValueError(f"pos_embed has {n - 1} patch rows, expected a square grid")
    if new_grid == g:
        return pos_embed.copy()
    grid = pos_embed[1:].reshape(g, g, D).astype(np.float64)
    zoom = new_grid / g
    new = ndimage.zoom(grid, (zoom, zoom, 1), order=1)  # (new_grid, new_grid, D)
    return np.concatenate([pos_embed[:1], new.reshape(new_grid * new_grid, D).astype(pos_embed.dtype)])


def params_at_resolution(params: dict, cfg: ViTConfig, image_size: int) -> tuple[ViTConfig, dict]:
    """A config at `image_size` and a copy of params whose pos_embed fits it."""
    new_cfg = cfg.replace(image_size=image_size)
    out = dict(params)
    out["pos_embed"] = resize_pos_embed(np.asarray(params["pos_embed"]), new_cfg.grid_size)
    return new_cfg, out

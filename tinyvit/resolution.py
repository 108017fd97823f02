"""Changing a model's resolution: interpolate the position embedding to a new grid.

The paper fine-tunes at a higher resolution than it pre-trains (section 3.2):
the patch size stays, so the grid of patches grows, and the learned position
embedding of the old grid is interpolated in 2-D to the new grid. The class
token's row has no place on the grid and is kept as it is. The trainer uses the
same step for progressive resolution: train small, then grow (the images are
resized by tinyvit.data.base.resize_images). A fixed position embedding
(pos_embed "sincos2d" or "none") is not a parameter and needs nothing here.
"""

from __future__ import annotations

import numpy as np

from .config import ViTConfig


def resize_pos_embed(pos_embed: np.ndarray, new_grid: int, has_class_token: bool = True) -> np.ndarray:
    """(c + g*g, D) -> (c + new_grid*new_grid, D), bilinear on the grid; c = 1 class-token row, kept as it is.

    Bilinear (order 1) zoom as in google-research/vision_transformer's checkpoint loader:
    scipy.ndimage.zoom maps the corner patches of the old grid onto the corners of the new one.
    A model without a class token ("gap") has no row to keep apart (c = 0)."""
    n, D = pos_embed.shape
    c = int(bool(has_class_token))
    g = round(max(n - c, 0) ** 0.5)
    if g < 1 or g * g != n - c:
        raise ValueError(f"pos_embed has {n - c} patch rows, expected a square grid")
    if new_grid == g:
        return pos_embed.copy()
    # imported here, not with the module: scipy.ndimage takes a third of a second to load, and most runs never resize
    from scipy import ndimage

    grid = pos_embed[c:].reshape(g, g, D).astype(np.float64)
    zoom = new_grid / g
    new = ndimage.zoom(grid, (zoom, zoom, 1), order=1)  # (new_grid, new_grid, D)
    return np.concatenate([pos_embed[:c], new.reshape(new_grid * new_grid, D).astype(pos_embed.dtype)])


def params_at_resolution(params: dict, cfg: ViTConfig, image_size: int) -> tuple[ViTConfig, dict]:
    """A config at `image_size` and a copy of params whose pos_embed fits it."""
    new_cfg = cfg.replace(image_size=image_size)
    out = dict(params)
    if "pos_embed" not in params:  # a fixed table (tinyvit.posembed) is rebuilt for any grid
        return new_cfg, out
    out["pos_embed"] = resize_pos_embed(np.asarray(params["pos_embed"]), new_cfg.grid_size, cfg.has_class_token)
    return new_cfg, out

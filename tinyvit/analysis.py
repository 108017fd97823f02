"""What a trained ViT has learned, as numbers to draw: the paper's figures 6 and 7.

- `class_attention_maps`: where the class token looks, per block and head, as a
  (grid, grid) map over the patches (figure 6 draws these over the image).
- `mean_attention_distance`: for every block and head, the average distance in
  pixels between a query patch and the patches it attends to, weighted by the
  attention (figure 7, right): small for heads that look locally, large for
  heads that look across the image.
- `pos_embed_similarity`: the cosine similarity of each patch's position
  embedding with every other's (figure 7, centre); a trained model shows the
  2-D grid it was never told about.

All take the outputs of `model.forward(images, return_attention=True)` or the
model's parameters, as NumPy arrays; none of them changes the model.
"""

from __future__ import annotations

import numpy as np


def patch_centres(grid: int, patch_size: int) -> np.ndarray:
    """(grid*grid, 2) pixel coordinates (row, column) of each patch's centre, row-major like patchify."""
    rows, cols = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
    return (np.stack([rows.ravel(), cols.ravel()], axis=1) + 0.5) * patch_size


def class_attention_maps(probs: np.ndarray, grid: int) -> np.ndarray:
    """One block's attention probs (B, H, N, N) -> (B, H, grid, grid): the class token's row over the patches."""
    B, H, N, _ = probs.shape
    if N != grid * grid + 1:
        raise ValueError(f"probs have {N} tokens, expected {grid * grid + 1} (a {grid}x{grid} grid + class token)")
    return probs[:, :, 0, 1:].reshape(B, H, grid, grid)


def mean_attention_distance(all_probs, grid: int, patch_size: int) -> np.ndarray:
    """A list of per-block probs, each (B, H, N, N) -> (depth, H) mean attention distance in pixels.

    For each query patch i: sum_j probs[i, j] * |centre_i - centre_j| over the patch keys j
    (renormalised to exclude the class token, which has no position), then averaged over
    query patches and images."""
    centres = patch_centres(grid, patch_size)  # (N-1, 2)
    dist = np.linalg.norm(centres[:, None, :] - centres[None, :, :], axis=-1)  # (N-1, N-1) pixels
    out = []
    for probs in all_probs:
        p = np.asarray(probs, dtype=np.float64)[:, :, 1:, 1:]  # patch queries, patch keys
        p = p / p.sum(axis=-1, keepdims=True)
        out.append((p * dist).sum(axis=-1).mean(axis=(0, 2)))  # (H,)
    return np.stack(out)


def pos_embed_similarity(pos_embed: np.ndarray) -> np.ndarray:
    """pos_embed (N, D) -> (grid, grid, grid, grid): [r, c] is the cosine similarity map of patch (r, c)."""
    patches = np.asarray(pos_embed, dtype=np.float64)[1:]  # the class token's row has no position
    grid = round(len(patches) ** 0.5)
    if grid * grid != len(patches):
        raise ValueError(f"pos_embed has {len(patches)} patch rows, expected a square grid")
    unit = patches / np.linalg.norm(patches, axis=1, keepdims=True)
    return (unit @ unit.T).reshape(grid, grid, grid, grid)

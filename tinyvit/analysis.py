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
- `attention_rollout`: attention followed through every block at once
  (Abnar & Zuidema 2020), what the paper draws in figure 6 and appendix D.8.
- `filter_components`: the principal components of the patch-embedding
  filters (figure 7, left): the basis the model projects each patch onto.

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
        raise ValueError(
            f"probs have {N} tokens, expected {grid * grid + 1} (a {grid}x{grid} grid + class token)"
        )
    return probs[:, :, 0, 1:].reshape(B, H, grid, grid)


def mean_attention_distance(all_probs, grid: int, patch_size: int) -> np.ndarray:
    """A list of per-block probs, each (B, H, N, N) -> (depth, H) mean attention distance in pixels.

    For each query patch i: sum_j probs[i, j] * |centre_i - centre_j| over the patch keys j
    (renormalised to exclude the class token, which has no position), then averaged over
    query patches and images."""
    centres = patch_centres(grid, patch_size)  # (N-1, 2)
    dist = np.linalg.norm(
        centres[:, None, :] - centres[None, :, :], axis=-1
    )  # (N-1, N-1) pixels
    out = []
    for probs in all_probs:
        p = np.asarray(probs, dtype=np.float64)[
            :, :, 1:, 1:
        ]  # patch queries, patch keys
        p = p / p.sum(axis=-1, keepdims=True)
        out.append((p * dist).sum(axis=-1).mean(axis=(0, 2)))  # (H,)
    return np.stack(out)


def pos_embed_similarity(pos_embed: np.ndarray) -> np.ndarray:
    """pos_embed (N, D) -> (grid, grid, grid, grid): [r, c] is the cosine similarity map of patch (r, c)."""
    patches = np.asarray(pos_embed, dtype=np.float64)[
        1:
    ]  # the class token's row has no position
    grid = round(len(patches) ** 0.5)
    if grid * grid != len(patches):
        raise ValueError(
            f"pos_embed has {len(patches)} patch rows, expected a square grid"
        )
    unit = patches / np.linalg.norm(patches, axis=1, keepdims=True)
    return (unit @ unit.T).reshape(grid, grid, grid, grid)


def attention_rollout(all_probs, residual: float = 0.5) -> np.ndarray:
    """A list of per-block probs, each (B, H, N, N) -> (B, N, N): how much each token draws on each input token.

    Each block's heads are averaged, and the residual connection is counted as
    attention to oneself: A = residual * I + (1 - residual) * mean_h(probs), so
    every row still sums to 1. The blocks are then chained, R = A_depth ... A_2 A_1:
    row i of R says how token i's output mixes the embedded input tokens.
    Row 0 over the patches is the class token's rollout map (paper, appendix D.8).
    """
    if not 0.0 <= residual < 1.0:
        raise ValueError(f"residual must be in [0, 1), got {residual}")
    rollout = None
    for probs in all_probs:
        p = np.asarray(probs, dtype=np.float64).mean(
            axis=1
        )  # (B, N, N), heads averaged
        a = residual * np.eye(p.shape[-1]) + (1.0 - residual) * p
        rollout = (
            a if rollout is None else a @ rollout
        )  # later blocks act on the result of earlier ones
    if rollout is None:
        raise ValueError("attention_rollout needs the probs of at least one block")
    return rollout


def filter_components(weight: np.ndarray, patch_size: int, channels: int, k: int = 28):
    """patch_embed.weight (P*P*C, D) -> (components (k, P, P, C), explained variance fractions (k,)).

    The D columns of the weight are D filters, each a P x P x C patch. Their
    principal components (the filters centred on their mean, then an SVD) are
    the directions in patch space the embedding is most sensitive to, largest
    first; the fractions say how much of the filters' variance each explains.
    Each component is scaled to [-1, 1] for drawing; its sign is arbitrary.
    """
    w = np.asarray(weight, dtype=np.float64)
    if w.ndim != 2 or w.shape[0] != patch_size * patch_size * channels:
        raise ValueError(
            f"weight must be (P*P*C, D) = ({patch_size * patch_size * channels}, D), got {w.shape}"
        )
    filters = w.T - w.T.mean(axis=0)  # (D, P*P*C), one filter per row
    _, s, vt = np.linalg.svd(filters, full_matrices=False)
    k = min(k, len(s))
    explained = s**2 / np.sum(s**2)
    comps = vt[:k] / np.abs(vt[:k]).max(axis=1, keepdims=True)  # (k, P*P*C)
    return comps.reshape(k, patch_size, patch_size, channels), explained[:k]

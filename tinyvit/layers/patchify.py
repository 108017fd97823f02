"""Patchify: cut images into flattened square patches, and put them back.

This is the first step of a ViT: an image (H, W, C) becomes a sequence of
N-1 = (H/P)*(W/P) vectors of length P*P*C. Within a patch the vector runs over
(row, column, channel); patches run row-major over the grid, so this layout
matches a (P, P, C, D) convolution kernel reshaped to (P*P*C, D).

Patchify is a pure rearrangement, so its backward is its inverse.
"""

import numpy as np


def patchify(images, patch_size):
    """(B, H, W, C) images -> (B, N-1, P*P*C) patches."""
    B, H, W, C = images.shape
    P = patch_size
    gh, gw = H // P, W // P
    x = images.reshape(B, gh, P, gw, P, C)  # (B, gh, P, gw, P, C)
    x = x.transpose(0, 1, 3, 2, 4, 5)  # (B, gh, gw, P, P, C): grid first, then inside the patch
    return np.ascontiguousarray(x).reshape(B, gh * gw, P * P * C)


def unpatchify(patches, patch_size, image_size, channels):
    """(B, N-1, P*P*C) patches -> (B, H, W, C) images; the inverse of patchify (square images)."""
    B = patches.shape[0]
    P, C = patch_size, channels
    g = image_size // P
    x = patches.reshape(B, g, g, P, P, C).transpose(0, 1, 3, 2, 4, 5)  # (B, g, P, g, P, C)
    return np.ascontiguousarray(x).reshape(B, g * P, g * P, C)


def patchify_backward(dpatches, patch_size, image_size, channels):
    """Gradient of patchify: the same numbers moved back to their pixels."""
    return unpatchify(dpatches, patch_size, image_size, channels)

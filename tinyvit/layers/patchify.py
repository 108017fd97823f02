"""Patchify: cut images into flattened square patches, and put them back.

This is the first step of a ViT: an image (H, W, C) becomes a sequence of
N-1 = (H/P)*(W/P) vectors of length P*P*C. Within a patch the vector runs over
(row, column, channel); patches run row-major over the grid, so this layout
matches a (P, P, C, D) convolution kernel reshaped to (P*P*C, D).

Patchify is a pure rearrangement, so its backward is its inverse. In a ViT the
images carry no gradient, so the model never calls the backward; it is here
because every layer has one, and because it is the clearest picture of what
patchify does: the same numbers, moved.
"""

from typing import NamedTuple


class PatchifyCache(NamedTuple):
    """The image shape backward puts the numbers back into."""

    patch_size: int
    height: int
    width: int
    channels: int


def patchify(images, patch_size):
    """(B, H, W, C) images -> (B, N-1, P*P*C) patches."""
    B, H, W, C = images.shape
    P = patch_size
    gh, gw = H // P, W // P
    x = images.reshape(B, gh, P, gw, P, C)  # (B, gh, P, gw, P, C)
    x = x.transpose(0, 1, 3, 2, 4, 5)  # (B, gh, gw, P, P, C): grid first, then inside the patch
    return x.reshape(B, gh * gw, P * P * C)  # the reshape of a transposed array copies


def unpatchify(patches, patch_size, height, width, channels):
    """(B, N-1, P*P*C) patches -> (B, H, W, C) images; the inverse of patchify."""
    B = patches.shape[0]
    P, C = patch_size, channels
    gh, gw = height // P, width // P
    x = patches.reshape(B, gh, gw, P, P, C).transpose(0, 1, 3, 2, 4, 5)  # (B, gh, P, gw, P, C)
    return x.reshape(B, gh * P, gw * P, C)


def patchify_forward(images, patch_size):
    """(B, H, W, C) images -> (B, N-1, P*P*C) patches, and the cache backward needs."""
    _, H, W, C = images.shape
    return patchify(images, patch_size), PatchifyCache(patch_size, H, W, C)


def patchify_backward(dpatches, cache):
    """dpatches (B, N-1, P*P*C) -> dimages (B, H, W, C): each number back at its pixel."""
    return unpatchify(dpatches, *cache)

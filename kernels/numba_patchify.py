"""Numba CPU kernels for patchify and its inverse (the specification is tinyvit.layers.patchify).

Patchify is a pure rearrangement: pixel (b, gy*P + py, gx*P + px, c) goes to
patch gy*gw + gx, position (py*P + px)*C + c, where gw = W/P patches make a row
of the grid. Its backward is its inverse, the same map read the other way.
No arithmetic is done on the numbers, so every variant is exact; the ladder is
about the order memory is walked in and the cores that walk it.

Variants, plain to fast (VARIANTS: name -> (forward, backward), the last is the default):
1_loops      the map as written, one pixel after another: each pixel's (y, x) is split into
             its patch (gy, gx) and its place in the patch (py, px) by a division and a
             remainder, and its number is copied there. The image is read in memory order;
             the writes jump between patches. Backward is the same loop with the copy reversed.
2_parallel   images in parallel (`prange`), and the loops nested as grid row, grid column,
             patch row, patch column, channel: no division, and each patch row is P*C values
             that are contiguous in the image and in the patch, so reads and writes both run
             along memory.
"""

import numpy as np
from numba import njit, prange

from tinyvit.layers.patchify import PatchifyCache

# -- 1_loops --------------------------------------------------------------------------------------


@njit(cache=True)
def patchify_images_loops(images, P, out):
    """images (B, H, W, C) -> out (B, (H/P)*(W/P), P*P*C), written; one pixel after another."""
    B, H, W, C = images.shape
    gw = W // P  # patches per row of the grid
    for b in range(B):
        for y in range(H):
            gy, py = y // P, y % P  # grid row, row inside the patch
            for x in range(W):
                gx, px = x // P, x % P
                for c in range(C):
                    out[b, gy * gw + gx, (py * P + px) * C + c] = images[b, y, x, c]


@njit(cache=True)
def unpatchify_images_loops(patches, P, gh, gw, C, out):
    """patches (B, gh*gw, P*P*C) -> out (B, gh*P, gw*P, C), written; one pixel after another."""
    B = patches.shape[0]
    for b in range(B):
        for y in range(gh * P):
            gy, py = y // P, y % P
            for x in range(gw * P):
                gx, px = x // P, x % P
                for c in range(C):
                    out[b, y, x, c] = patches[b, gy * gw + gx, (py * P + px) * C + c]


# -- 2_parallel -----------------------------------------------------------------------------------


@njit(parallel=True, cache=True)
def patchify_images(images, P, out):
    """images (B, H, W, C) -> out (B, (H/P)*(W/P), P*P*C), written; images in parallel."""
    B, H, W, C = images.shape
    gh, gw = H // P, W // P
    for b in prange(B):
        for gy in range(gh):
            for gx in range(gw):
                n = gy * gw + gx
                for py in range(P):
                    for px in range(P):  # one patch row: P pixels of C channels, contiguous in both
                        for c in range(C):
                            out[b, n, (py * P + px) * C + c] = images[b, gy * P + py, gx * P + px, c]


@njit(parallel=True, cache=True)
def unpatchify_images(patches, P, gh, gw, C, out):
    """patches (B, gh*gw, P*P*C) -> out (B, gh*P, gw*P, C), written; images in parallel."""
    B = patches.shape[0]
    for b in prange(B):
        for gy in range(gh):
            for gx in range(gw):
                n = gy * gw + gx
                for py in range(P):
                    for px in range(P):
                        for c in range(C):
                            out[b, gy * P + py, gx * P + px, c] = patches[b, n, (py * P + px) * C + c]


# -- the layer, on either pair of kernels ---------------------------------------------------------


def _patchify(kernel, images, P):
    B, H, W, C = images.shape
    if H % P or W % P:
        raise ValueError(f"patch_size {P} must divide the image sides, got {H}x{W}")
    out = np.empty((B, (H // P) * (W // P), P * P * C), dtype=images.dtype)
    kernel(np.ascontiguousarray(images), P, out)
    return out


def _unpatchify(kernel, patches, P, height, width, C):
    B = patches.shape[0]
    gh, gw = height // P, width // P
    expected = (B, gh * gw, P * P * C)
    if patches.shape != expected:
        raise ValueError(f"patches must have shape {expected}, got {patches.shape}")
    out = np.empty((B, gh * P, gw * P, C), dtype=patches.dtype)
    kernel(np.ascontiguousarray(patches), P, gh, gw, C, out)
    return out


def patchify(images, patch_size):
    """(B, H, W, C) images -> (B, N-1, P*P*C) patches."""
    return _patchify(patchify_images, images, patch_size)


def unpatchify(patches, patch_size, height, width, channels):
    """(B, N-1, P*P*C) patches -> (B, H, W, C) images; the inverse of patchify."""
    return _unpatchify(unpatchify_images, patches, patch_size, height, width, channels)


def patchify_forward_loops(images, patch_size):
    """(B, H, W, C) images -> (B, N-1, P*P*C) patches and the cache; one pixel after another."""
    _, H, W, C = images.shape
    return _patchify(patchify_images_loops, images, patch_size), PatchifyCache(patch_size, H, W, C)


def patchify_backward_loops(dpatches, cache):
    """dpatches (B, N-1, P*P*C) -> dimages (B, H, W, C); one pixel after another."""
    return _unpatchify(unpatchify_images_loops, dpatches, *cache)


def patchify_forward(images, patch_size):
    """(B, H, W, C) images -> (B, N-1, P*P*C) patches, and the cache backward needs; images in parallel."""
    _, H, W, C = images.shape
    return patchify(images, patch_size), PatchifyCache(patch_size, H, W, C)


def patchify_backward(dpatches, cache):
    """dpatches (B, N-1, P*P*C) -> dimages (B, H, W, C): the same numbers moved back to their pixels."""
    return unpatchify(dpatches, *cache)


VARIANTS = {
    "1_loops": (patchify_forward_loops, patchify_backward_loops),
    "2_parallel": (patchify_forward, patchify_backward),
}

"""Numba CPU kernels for patchify and its inverse (the specification is tinyvit.layers.patchify).

Patchify is a pure rearrangement: pixel (b, gy*P + py, gx*P + px, c) goes to
patch gy*g + gx, position (py*P + px)*C + c. Its backward is its inverse.

Variants, plain to fast:
1. `patchify_images`    one parallel loop over images, each patch row copied as P*C
                        contiguous values: the reshape/transpose/copy of the reference as a
                        single pass, with no temporary.
2. `unpatchify_images`  the same copy the other way round: patchify's backward.
"""

import numpy as np
from numba import njit, prange

from tinyvit.layers.patchify import PatchifyCache


@njit(parallel=True, cache=True)
def patchify_images(images, P, out):
    """images (B, H, W, C) -> out (B, (H/P)*(W/P), P*P*C), written."""
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
    """patches (B, gh*gw, P*P*C) -> out (B, gh*P, gw*P, C), written."""
    B = patches.shape[0]
    for b in prange(B):
        for gy in range(gh):
            for gx in range(gw):
                n = gy * gw + gx
                for py in range(P):
                    for px in range(P):
                        for c in range(C):
                            out[b, gy * P + py, gx * P + px, c] = patches[b, n, (py * P + px) * C + c]


def patchify(images, patch_size):
    """(B, H, W, C) images -> (B, N-1, P*P*C) patches."""
    B, H, W, C = images.shape
    P = patch_size
    if H % P or W % P:
        raise ValueError(f"patch_size {P} must divide the image sides, got {H}x{W}")
    out = np.empty((B, (H // P) * (W // P), P * P * C), dtype=images.dtype)
    patchify_images(np.ascontiguousarray(images), P, out)
    return out


def unpatchify(patches, patch_size, height, width, channels):
    """(B, N-1, P*P*C) patches -> (B, H, W, C) images; the inverse of patchify."""
    B = patches.shape[0]
    P, C = patch_size, channels
    gh, gw = height // P, width // P
    expected = (B, gh * gw, P * P * C)
    if patches.shape != expected:
        raise ValueError(f"patches must have shape {expected}, got {patches.shape}")
    out = np.empty((B, gh * P, gw * P, C), dtype=patches.dtype)
    unpatchify_images(np.ascontiguousarray(patches), P, gh, gw, C, out)
    return out


def patchify_forward(images, patch_size):
    """(B, H, W, C) images -> (B, N-1, P*P*C) patches, and the cache backward needs."""
    _, H, W, C = images.shape
    return patchify(images, patch_size), PatchifyCache(patch_size, H, W, C)


def patchify_backward(dpatches, cache):
    """Gradient of patchify: the same numbers moved back to their pixels."""
    return unpatchify(dpatches, *cache)

"""Elementwise and rearranging CUDA kernels: one thread per output element, no reductions.

Variants (each has one version; nothing here computes, it only moves numbers):
1. fill, add, scale, add_bias: the simplest kernels there are. Each thread finds
   its element with cuda.grid(1) and returns if it falls past the end (the last
   block is usually only partly used). They teach the launch arithmetic.
2. patchify, embed, class token: each thread turns its output index back into
   the index of the input element it copies (integer division and remainder),
   the way every gather kernel works. Writes are coalesced because consecutive
   threads write consecutive outputs.

The NumPy specification is tinyvit.layers (patchify.py, embed.py, linear.py).
"""


import numpy as np
from numba import cuda

from tinyvit.layers.embed import ClassTokenCache, EmbedCache
from tinyvit.layers.patchify import PatchifyCache

from . import cuda_common as common


@cuda.jit
def _fill_kernel(out, value):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = value


@cuda.jit
def _add_kernel(a, b, out):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = a[i] + b[i]


@cuda.jit
def _scale_kernel(a, factor, out):
    i = cuda.grid(1)
    if i < a.size:
        out[i] = a[i] * factor


@cuda.jit
def _add_bias_kernel(x, bias, out):
    """x, out (rows*cols,) flat, bias (cols,): out = x + bias broadcast over rows."""
    i = cuda.grid(1)
    if i < out.size:
        out[i] = x[i] + bias[i % bias.size]


def fill(shape, dtype, value=0.0):
    """A fresh device array of `shape`, every element `value`."""
    out = common.empty(shape, dtype)
    n = out.size
    if n:
        blocks, threads = common.element_grid(n)
        _fill_kernel[blocks, threads](common.flat(out), value)
    return out


def zeros_like(a):
    return fill(a.shape, a.dtype, 0.0)


def add(a, b):
    """a + b, a fresh array of the same shape (the residual connection)."""
    common.check_device("a", a)
    common.check_device("b", b, dtype=a.dtype)
    common.check_same_shape("a", a, "b", b)
    out = common.empty(a.shape, a.dtype)
    blocks, threads = common.element_grid(out.size)
    _add_kernel[blocks, threads](common.flat(a), common.flat(b), common.flat(out))
    return out


def scale(arrays, factor):
    """Every array times factor, as new device arrays (gradient clipping)."""
    out = []
    for a in arrays:
        common.check_device("array", a)
        o = common.empty(a.shape, a.dtype)
        blocks, threads = common.element_grid(a.size)
        _scale_kernel[blocks, threads](common.flat(a), float(factor), common.flat(o))
        out.append(o)
    return out


def add_bias_(x, bias):
    """x (rows, cols) += bias (cols,), in place on x (a fresh array its caller owns)."""
    blocks, threads = common.element_grid(x.size)
    _add_bias_kernel[blocks, threads](common.flat(x), bias, common.flat(x))
    return x


# -- patchify -------------------------------------------------------------------------------


@cuda.jit
def _patchify_kernel(images, patch, out):
    """images (B, H, W, C) -> out (B, N-1, P*P*C); one thread per output element."""
    i = cuda.grid(1)
    if i >= out.size:
        return
    _, H, W, C = images.shape
    P = patch
    L = P * P * C  # length of one flattened patch
    gw = W // P
    n_patches = (H // P) * gw
    b = i // (n_patches * L)
    rest = i % (n_patches * L)
    n, j = rest // L, rest % L
    gy, gx = n // gw, n % gw  # the patch's place in the grid, row-major
    py, rest_j = j // (P * C), j % (P * C)  # inside the patch: (row, column, channel)
    px, c = rest_j // C, rest_j % C
    out[b, n, j] = images[b, gy * P + py, gx * P + px, c]


def patchify(images, patch_size):
    """(B, H, W, C) device images -> (B, N-1, P*P*C) patches, as tinyvit.layers.patchify."""
    common.check_device("images", images, ndim=4)
    B, H, W, C = images.shape
    P = int(patch_size)
    if P < 1 or H % P or W % P:
        raise ValueError(f"patch_size must be a positive divisor of the image size {H}x{W}, got {patch_size}")
    out = common.empty((B, (H // P) * (W // P), P * P * C), images.dtype)
    blocks, threads = common.element_grid(out.size)
    _patchify_kernel[blocks, threads](images, P, out)
    return out


def patchify_forward(images, patch_size):
    """(B, H, W, C) device images -> patches and the cache, as tinyvit.layers.patchify_forward."""
    _, H, W, C = images.shape
    return patchify(images, patch_size), PatchifyCache(int(patch_size), H, W, C)


@cuda.jit
def _unpatchify_kernel(patches, patch, out):
    """patches (B, N-1, P*P*C) -> out (B, H, W, C); one thread per pixel value, the inverse gather."""
    i = cuda.grid(1)
    if i >= out.size:
        return
    _, H, W, C = out.shape
    P = patch
    b, rest = i // (H * W * C), i % (H * W * C)
    y, rest = rest // (W * C), rest % (W * C)
    x, c = rest // C, rest % C
    n = (y // P) * (W // P) + x // P  # the patch this pixel sits in, row-major
    j = ((y % P) * P + x % P) * C + c  # its place inside the flattened patch
    out[b, y, x, c] = patches[b, n, j]


def patchify_backward(dpatches, cache):
    """dpatches (B, N-1, P*P*C) on the device -> dimages (B, H, W, C): the numbers back at their pixels."""
    common.check_device("dpatches", dpatches, ndim=3)
    P, H, W, C = cache
    expected = (dpatches.shape[0], (H // P) * (W // P), P * P * C)
    if tuple(dpatches.shape) != expected:
        raise ValueError(f"dpatches must have shape {expected}, got {tuple(dpatches.shape)}")
    out = common.empty((dpatches.shape[0], H, W, C), dpatches.dtype)
    blocks, threads = common.element_grid(out.size)
    _unpatchify_kernel[blocks, threads](dpatches, P, out)
    return out


# -- class token and position embedding ------------------------------------------------------


@cuda.jit(device=True)
def _unflatten3(i, N, D):
    """The flat index i of a C-ordered (B, N, D) array -> (b, n, d)."""
    b, rest = i // (N * D), i % (N * D)
    return b, rest // D, rest % D


@cuda.jit
def _embed_kernel(x, cls_token, pos_embed, out):
    """out[b, 0] = cls + pos[0]; out[b, n] = x[b, n-1] + pos[n] for n >= 1."""
    i = cuda.grid(1)
    if i >= out.size:
        return
    _, N, D = out.shape
    b, n, d = _unflatten3(i, N, D)
    if n == 0:
        out[b, n, d] = cls_token[d] + pos_embed[n, d]
    else:
        out[b, n, d] = x[b, n - 1, d] + pos_embed[n, d]


@cuda.jit
def _drop_first_token_kernel(dout, dx):
    """dx (B, N-1, D) = dout[:, 1:]."""
    i = cuda.grid(1)
    if i >= dx.size:
        return
    _, Nm1, D = dx.shape
    b, n, d = _unflatten3(i, Nm1, D)
    dx[b, n, d] = dout[b, n + 1, d]


def embed_forward(x, cls_token, pos_embed):
    """x (B, N-1, D), cls_token (D,), pos_embed (N, D) -> (B, N, D)."""
    common.check_device("x", x, ndim=3)
    common.check_device("cls_token", cls_token, ndim=1, dtype=x.dtype)
    common.check_device("pos_embed", pos_embed, ndim=2, dtype=x.dtype)
    B, Nm1, D = x.shape
    if tuple(cls_token.shape) != (D,) or tuple(pos_embed.shape) != (Nm1 + 1, D):
        raise ValueError(
            f"expected cls_token ({D},) and pos_embed ({Nm1 + 1}, {D}) for x {tuple(x.shape)}, "
            f"got {tuple(cls_token.shape)} and {tuple(pos_embed.shape)}"
        )
    out = common.empty((B, Nm1 + 1, D), x.dtype)
    blocks, threads = common.element_grid(out.size)
    _embed_kernel[blocks, threads](x, cls_token, pos_embed, out)
    return out, EmbedCache()


def embed_backward(dout, cache):
    """dout (B, N, D) -> dx (B, N-1, D), dcls_token (D,), dpos_embed (N, D).

    dpos sums dout over the batch; its row 0 is exactly the class token's gradient,
    sum_b dout[b, 0], so dcls is a copy of that row rather than a second reduction.
    """
    from .cuda_reduce import column_sum

    common.check_device("dout", dout, ndim=3)
    B, N, D = dout.shape
    dx = common.empty((B, N - 1, D), dout.dtype)
    if dx.size:
        blocks, threads = common.element_grid(dx.size)
        _drop_first_token_kernel[blocks, threads](dout, dx)
    dpos = column_sum(dout.reshape(B, N * D)).reshape(N, D)
    dcls = copy(dpos[0])
    return dx, dcls, dpos


@cuda.jit
def _copy_kernel(src, dst):
    i = cuda.grid(1)
    if i < dst.size:
        dst[i] = src[i]


def copy(a):
    """A fresh contiguous copy of a contiguous device array."""
    out = common.empty(a.shape, a.dtype)
    blocks, threads = common.element_grid(out.size)
    _copy_kernel[blocks, threads](common.flat(a), common.flat(out))
    return out


@cuda.jit
def _class_token_kernel(x, out):
    i = cuda.grid(1)
    if i < out.size:
        D = out.shape[1]
        out[i // D, i % D] = x[i // D, 0, i % D]


@cuda.jit
def _class_token_backward_kernel(dout, dx):
    """dx (B, N, D): dout in row 0, zero elsewhere; one pass writes every element."""
    i = cuda.grid(1)
    if i >= dx.size:
        return
    _, N, D = dx.shape
    b, n, d = _unflatten3(i, N, D)
    if n == 0:
        dx[b, n, d] = dout[b, d]
    else:
        dx[b, n, d] = 0.0


def class_token_forward(x):
    """x (B, N, D) -> the class token's row (B, D)."""
    common.check_device("x", x, ndim=3)
    B, N, D = x.shape
    out = common.empty((B, D), x.dtype)
    blocks, threads = common.element_grid(out.size)
    _class_token_kernel[blocks, threads](x, out)
    return out, ClassTokenCache(N)


def class_token_backward(dout, cache):
    """dout (B, D) -> dx (B, N, D): zero everywhere but row 0."""
    common.check_device("dout", dout, ndim=2)
    B, D = dout.shape
    dx = common.empty((B, cache.num_tokens, D), dout.dtype)
    blocks, threads = common.element_grid(dx.size)
    _class_token_backward_kernel[blocks, threads](dout, dx)
    return dx


def asarray(x, dtype=None):
    """Host (or device) array -> a fresh C-contiguous device array of `dtype`."""
    if common.is_device_array(x):
        x = x.copy_to_host()
    host = np.ascontiguousarray(x, dtype=dtype)
    return cuda.to_device(host)


def to_numpy(a):
    """Device array -> a fresh host NumPy array."""
    if common.is_device_array(a):
        return a.copy_to_host()
    return np.array(a, copy=True)

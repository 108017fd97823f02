"""Numba CPU kernels for multi-head self-attention (the specification is tinyvit.layers.attention).

Each (batch, head) pair is independent, so the work runs in parallel over the
B*H pairs. One pair copies its q, k, v columns out of the (B, N, 3D) qkv rows
into small contiguous (N, Dh) blocks that stay in cache, multiplies them with
BLAS (`np.dot` on 2-D arrays inside njit), and does the scale and softmax in
one pass over the (N, N) scores while they are hot.

Variants, plain to fast:
1. `attention_heads_forward`   scores = q k^T, then scale, row max, exp and normalisation fused
                               in sweeps over the cached (N, N) block, the exps in one vectorised
                               `exp_inplace` call (math.exp per element made the softmax cost
                               three times the two products); out = probs v written straight
                               into the head's columns of (B, N, D): no (B, H, N, Dh) transpose.
2. `attention_heads_backward`  the same per-pair blocking for the chain rule: dprobs = dout v^T,
                               dv = probs^T dout, the softmax Jacobian row by row with the scale
                               folded into dscores, dq = dscores k and dk = dscores^T q, written
                               into the q, k, v thirds of dqkv (B, N, 3D).
The probabilities are kept (B, H, N, N) because the lessons draw them and
backward needs them; recomputing them would trade memory for a second exp pass.
"""

import math

import numpy as np
from numba import njit, prange

from tinyvit.layers.attention import AttentionCache

from .numba_exp import exp_inplace
from .numba_linear import FASTMATH


@njit(fastmath=FASTMATH, cache=True, inline="always")
def _head_block(qkv, b, col, N, Dh):
    """The (N, Dh) columns col:col+Dh of qkv[b], as a contiguous copy."""
    blk = np.empty((N, Dh), dtype=qkv.dtype)
    for i in range(N):
        for d in range(Dh):
            blk[i, d] = qkv[b, i, col + d]
    return blk


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def attention_heads_forward(qkv, heads, out, probs):
    """qkv (B, N, 3D) -> out (B, N, D) and probs (B, H, N, N), both written."""
    B, N, three_d = qkv.shape
    D = three_d // 3
    Dh = D // heads
    scale = 1.0 / math.sqrt(Dh)
    for bh in prange(B * heads):
        b, h = bh // heads, bh % heads
        q = _head_block(qkv, b, h * Dh, N, Dh)
        k = _head_block(qkv, b, D + h * Dh, N, Dh)
        v = _head_block(qkv, b, 2 * D + h * Dh, N, Dh)
        s = np.dot(q, k.T)  # (N, N) raw scores
        e = np.empty(N * N, dtype=np.float64)  # the scaled, max-shifted scores, then their exp
        for i in range(N):
            m = s[i, 0]
            for j in range(1, N):
                m = max(m, s[i, j])
            for j in range(N):
                e[i * N + j] = (s[i, j] - m) * scale  # the row max subtracted: no overflow
        exp_inplace(e, np.empty(N * N, dtype=np.int64))  # all N*N exps in one vectorised sweep
        for i in range(N):
            total = 0.0
            for j in range(N):
                total += e[i * N + j]
            inv = 1.0 / total
            for j in range(N):
                s[i, j] = e[i * N + j] * inv
                probs[b, h, i, j] = s[i, j]
        o = np.dot(s, v)  # (N, Dh)
        for i in range(N):
            for d in range(Dh):
                out[b, i, h * Dh + d] = o[i, d]


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def attention_heads_backward(dout, qkv, probs, dqkv):
    """dout (B, N, D), the forward's qkv and probs -> dqkv (B, N, 3D), written."""
    B, heads, N, _ = probs.shape
    D = dout.shape[2]
    Dh = D // heads
    scale = 1.0 / math.sqrt(Dh)
    for bh in prange(B * heads):
        b, h = bh // heads, bh % heads
        q = _head_block(qkv, b, h * Dh, N, Dh)
        k = _head_block(qkv, b, D + h * Dh, N, Dh)
        v = _head_block(qkv, b, 2 * D + h * Dh, N, Dh)
        do = _head_block(dout, b, h * Dh, N, Dh)
        p = probs[b, h]  # (N, N), contiguous
        dp = np.dot(do, v.T)  # (N, N) dprobs
        dv = np.dot(p.T, do)  # (N, Dh)
        for i in range(N):
            # softmax Jacobian: dscores = probs * (dprobs - sum_j dprobs probs), times the scale
            t = 0.0
            for j in range(N):
                t += dp[i, j] * p[i, j]
            for j in range(N):
                dp[i, j] = p[i, j] * (dp[i, j] - t) * scale
        dq = np.dot(dp, k)  # (N, Dh)
        dk = np.dot(dp.T, q)  # (N, Dh)
        for i in range(N):
            for d in range(Dh):
                dqkv[b, i, h * Dh + d] = dq[i, d]
                dqkv[b, i, D + h * Dh + d] = dk[i, d]
                dqkv[b, i, 2 * D + h * Dh + d] = dv[i, d]


def attention_forward(qkv, heads):
    """qkv (B, N, 3D) -> out (B, N, D). cache.probs is (B, H, N, N)."""
    qkv = np.ascontiguousarray(qkv)
    B, N, three_d = qkv.shape
    out = np.empty((B, N, three_d // 3), dtype=qkv.dtype)
    probs = np.empty((B, heads, N, N), dtype=qkv.dtype)
    attention_heads_forward(qkv, heads, out, probs)
    return out, AttentionCache(qkv, probs, heads)


def attention_backward(dout, cache):
    """dout (B, N, D) -> dqkv (B, N, 3D)."""
    qkv, probs, _ = cache
    dqkv = np.empty_like(qkv)
    attention_heads_backward(np.ascontiguousarray(dout), qkv, probs, dqkv)
    return dqkv

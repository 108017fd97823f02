"""Numba CPU kernels for multi-head self-attention (the specification is tinyvit.layers.attention).

For each (batch, head) pair, with q, k, v the head's (N, Dh) columns of the
(B, N, 3D) qkv rows and scale = 1 / sqrt(Dh):
    probs = softmax(q k^T scale) over the keys,   out = probs v   (written into the head's columns)
and backward, through the softmax Jacobian:
    dprobs = dout v^T,  dv = probs^T dout,  dscores = probs (dprobs - sum_j dprobs probs),
    dq = dscores k scale,  dk = dscores^T q scale.
The pairs are independent, so every fast variant runs them in parallel.

Variants, plain to fast (VARIANTS: name -> (forward, backward), the last is the default):
1_loops         the formulas one query row at a time with scalar loops: the row of scores,
                its max, math.exp per element, the normalisation, then out = probs v. Keeps
                probs (B, H, N, N) for backward, which loops the same way.
2_blas_heads    one (batch, head) pair per task (`prange` over B*H): the pair's q, k, v copied
                out of the qkv rows into small contiguous (N, Dh) blocks that stay in cache,
                the two products by BLAS (`np.dot` inside njit), and scale, max, exp and
                normalisation fused in sweeps over the (N, N) scores while they are hot, the
                exps in one vectorised call (`exp_inplace`, kernels/numba_exp.py: math.exp per
                element made the softmax cost three times the two products). Keeps probs
                (B, H, N, N) for backward.
3_flash         fused attention with an online softmax: each block of queries meets the keys
                a block at a time, keeping per query row the running max m, the running sum
                l of exp(score - m) and the unnormalised output; when a later key block raises
                the max, what was summed so far is rescaled by exp(m_old - m_new). No
                (N, N) array and no (B, H, N, N) array: the cache keeps the output and
                lse = m + log l (B, H, N), from which backward recomputes each block of
                probabilities, exp(score - lse), as it needs it (one more q k^T product per
                block, measured against keeping probs in docs/benchmarks.md). The attention
                maps (`cache.probs`) are recomputed from lse only when asked for.
                Exps in float32 arithmetic for float32 inputs (`exp32_inplace`).
                With a bias (the relative position bias, ViTConfig.rel_pos_bias), its (H, N, N)
                entries are added to each block of scores, in forward and where backward
                recomputes them, and backward also writes dscores (B, H, N, N), whose sum
                over the batch is the bias's gradient.
4_direct        3_flash's cache and its recomputation in backward, without its copies and
                blocks: each pair's products are BLAS calls made directly (`gemm`,
                kernels/numba_matmul.py) on the head's columns of qkv, dout and dqkv in place,
                with their row strides, and its (N, N) scores are one block in scratch; the
                scale rides on the products (BLAS's alpha). Per pair: 2 products forward (q k^T,
                probs v), 5 backward (q k^T again, probs^T dout, dout v^T, dscores k,
                dscores^T q). With a bias, as 3_flash (attention_bias_forward/backward).
                2.1-2.8x faster than 3_flash at the recipe's N of 16, 36 and 64 and 1.5x at
                ViT-B/16's 197 (docs/benchmarks.md); its scratch is two (N, N) arrays per
                thread (2.7 MB at ViT-L/16 384 px's N of 577), where 3_flash's blocks bound it.
5_kept          4_direct's products, but forward writes each pair's probabilities into a
                (B, H, N, N) array that the cache keeps (the specification's AttentionCache), so
                backward skips the recomputation: 4 products per pair instead of 5, and no exp;
                the row sums sum_j dprobs probs come from the kept row. Only where that array is
                no bigger than the qkv rows the cache holds anyway (N <= 3 Dh: every CIFAR model
                here); longer sequences (ViT-B/16's 197 tokens of Dh 64) run 4_direct, whose memory
                does not grow with N^2. Forward + backward 1.17-1.38x as fast as 4_direct on
                the recipe's and cifar-small's shapes (docs/benchmarks.md); forward alone the same.
"""

import math
from typing import NamedTuple

import numpy as np
from numba import njit, prange

from tinyvit.layers.attention import AttentionCache
from tinyvit.threads import inner_blas_single_threaded

from .numba_exp import exp_any_inplace, exp_inplace
from .numba_linear import FASTMATH
from .numba_matmul import gemm

inner_blas_single_threaded()  # np.dot inside prange: the parallelism is numba's (tinyvit/threads.py)

BLOCK = 128  # rows of queries and of keys per block in 3_flash (N = 65 at 32 px is one block, 197 at 224 px two)


@njit(fastmath=FASTMATH, cache=True, inline="always")
def _head_block(qkv, b, col, N, Dh):
    """The (N, Dh) columns col:col+Dh of qkv[b], as a contiguous copy."""
    blk = np.empty((N, Dh), dtype=qkv.dtype)
    for i in range(N):
        for d in range(Dh):
            blk[i, d] = qkv[b, i, col + d]
    return blk


# -- 1_loops --------------------------------------------------------------------------------------


@njit(cache=True)
def attention_loops_forward(qkv, heads, out, probs):
    """qkv (B, N, 3D) -> out (B, N, D) and probs (B, H, N, N), both written; one query row at a time."""
    B, N, three_d = qkv.shape
    D = three_d // 3
    Dh = D // heads
    scale = 1.0 / math.sqrt(Dh)
    for b in range(B):
        for h in range(heads):
            q0, k0, v0 = h * Dh, D + h * Dh, 2 * D + h * Dh  # the head's first column in each third
            for i in range(N):
                m = -np.inf
                for j in range(N):
                    s = 0.0
                    for d in range(Dh):
                        s += qkv[b, i, q0 + d] * qkv[b, j, k0 + d]
                    probs[b, h, i, j] = s * scale
                    m = max(m, probs[b, h, i, j])
                total = 0.0
                for j in range(N):
                    e = math.exp(probs[b, h, i, j] - m)  # the row max subtracted: no overflow
                    probs[b, h, i, j] = e
                    total += e
                for j in range(N):
                    probs[b, h, i, j] /= total
                for d in range(Dh):
                    acc = 0.0
                    for j in range(N):
                        acc += probs[b, h, i, j] * qkv[b, j, v0 + d]
                    out[b, i, h * Dh + d] = acc


@njit(cache=True)
def attention_loops_backward(dout, qkv, probs, dqkv):
    """dout (B, N, D), the forward's qkv and probs -> dqkv (B, N, 3D), accumulated into zeros."""
    B, heads, N, _ = probs.shape
    D = dout.shape[2]
    Dh = D // heads
    scale = 1.0 / math.sqrt(Dh)
    dprobs = np.empty(N, dtype=np.float64)
    for b in range(B):
        for h in range(heads):
            q0, k0, v0 = h * Dh, D + h * Dh, 2 * D + h * Dh
            for i in range(N):
                t = 0.0  # sum_j dprobs_ij probs_ij
                for j in range(N):
                    s = 0.0
                    for d in range(Dh):
                        s += dout[b, i, h * Dh + d] * qkv[b, j, v0 + d]
                    dprobs[j] = s
                    t += s * probs[b, h, i, j]
                for j in range(N):
                    p = probs[b, h, i, j]
                    ds = p * (dprobs[j] - t) * scale  # softmax Jacobian, times the scale of the scores
                    for d in range(Dh):
                        dqkv[b, i, q0 + d] += ds * qkv[b, j, k0 + d]
                        dqkv[b, j, k0 + d] += ds * qkv[b, i, q0 + d]
                        dqkv[b, j, v0 + d] += p * dout[b, i, h * Dh + d]


def attention_forward_loops(qkv, heads):
    """qkv (B, N, 3D) -> out (B, N, D). cache.probs is (B, H, N, N)."""
    qkv = np.ascontiguousarray(qkv)
    B, N, three_d = qkv.shape
    out = np.empty((B, N, three_d // 3), dtype=qkv.dtype)
    probs = np.empty((B, heads, N, N), dtype=qkv.dtype)
    attention_loops_forward(qkv, heads, out, probs)
    return out, AttentionCache(qkv, probs, heads)


def attention_backward_loops(dout, cache):
    """dout (B, N, D) -> dqkv (B, N, 3D)."""
    qkv, probs, _ = cache
    dqkv = np.zeros_like(qkv)
    attention_loops_backward(np.ascontiguousarray(dout), qkv, probs, dqkv)
    return dqkv


# -- 2_blas_heads ---------------------------------------------------------------------------------


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


def attention_forward_heads(qkv, heads):
    """qkv (B, N, 3D) -> out (B, N, D). cache.probs is (B, H, N, N)."""
    qkv = np.ascontiguousarray(qkv)
    B, N, three_d = qkv.shape
    out = np.empty((B, N, three_d // 3), dtype=qkv.dtype)
    probs = np.empty((B, heads, N, N), dtype=qkv.dtype)
    attention_heads_forward(qkv, heads, out, probs)
    return out, AttentionCache(qkv, probs, heads)


def attention_backward_heads(dout, cache):
    """dout (B, N, D) -> dqkv (B, N, 3D)."""
    qkv, probs, _ = cache
    dqkv = np.empty_like(qkv)
    attention_heads_backward(np.ascontiguousarray(dout), qkv, probs, dqkv)
    return dqkv


# -- 3_flash --------------------------------------------------------------------------------------


@njit(fastmath=FASTMATH, cache=True, inline="always")
def _blocks(N, block):
    """The number of blocks and their size: N split evenly into blocks of at most `block` rows."""
    count = (N + block - 1) // block
    return count, (N + count - 1) // count


@njit(fastmath=FASTMATH, cache=True, inline="always")
def _scaled_q(qkv, b, h, N, Dh, scale):
    """The head's queries times the scale, (N, Dh): q k^T is then the scaled scores."""
    q = _head_block(qkv, b, h * Dh, N, Dh)
    for i in range(N):
        for d in range(Dh):
            q[i, d] *= scale
    return q


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def flash_forward(qkv, bias, heads, block, out, lse):
    """qkv (B, N, 3D) -> out (B, N, D) and lse (B, H, N) float64, written. bias: None, or (H, N, N)
    added to every image's scores (numba compiles the two cases apart: `bias is None` is pruned)."""
    B, N, three_d = qkv.shape
    D = three_d // 3
    Dh = D // heads
    scale = 1.0 / math.sqrt(Dh)
    count, size = _blocks(N, block)
    for bh in prange(B * heads):
        b, h = bh // heads, bh % heads
        q = _scaled_q(qkv, b, h, N, Dh, scale)
        k = _head_block(qkv, b, D + h * Dh, N, Dh)
        v = _head_block(qkv, b, 2 * D + h * Dh, N, Dh)
        for qb in range(count):
            i0, i1 = qb * size, min(N, (qb + 1) * size)
            m = np.full(i1 - i0, -np.inf)  # running max of each query row's scores
            l = np.zeros(i1 - i0)  # running sum of exp(score - m)
            acc = np.zeros((i1 - i0, Dh), dtype=qkv.dtype)  # running sum of exp(score - m) v
            for kb in range(count):
                j0, j1 = kb * size, min(N, (kb + 1) * size)
                s = np.dot(q[i0:i1], k[j0:j1].T)  # (queries, keys) scaled scores
                if bias is not None:
                    s += bias[h, i0:i1, j0:j1]
                for i in range(i1 - i0):
                    m_new = m[i]
                    for j in range(j1 - j0):
                        m_new = max(m_new, s[i, j])
                    rescale = math.exp(m[i] - m_new)  # what was summed under the old max, 0 at first
                    for j in range(j1 - j0):
                        s[i, j] -= m_new
                    m[i] = m_new
                    l[i] *= rescale
                    for d in range(Dh):
                        acc[i, d] *= rescale
                exp_any_inplace(s.reshape(-1))  # s now holds exp(score - m), in s's precision
                for i in range(i1 - i0):
                    for j in range(j1 - j0):
                        l[i] += s[i, j]
                acc += np.dot(s, v[j0:j1])
            for i in range(i1 - i0):
                inv = 1.0 / l[i]
                for d in range(Dh):
                    out[b, i0 + i, h * Dh + d] = acc[i, d] * inv
                lse[b, h, i0 + i] = m[i] + math.log(l[i])


@njit(fastmath=FASTMATH, cache=True, inline="always")
def _probs_block(q, k, bias, h, lse_row, i0, i1, j0, j1):
    """probs[i0:i1, j0:j1] = exp(q k^T (+ bias[h]) - lse), recomputed from the forward's log-sum-exp."""
    s = np.dot(q[i0:i1], k[j0:j1].T)
    if bias is not None:
        s += bias[h, i0:i1, j0:j1]
    for i in range(i1 - i0):
        for j in range(j1 - j0):
            s[i, j] -= lse_row[i0 + i]
    exp_any_inplace(s.reshape(-1))
    return s


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def flash_backward(dout, qkv, bias, out, lse, block, dqkv, dscores):
    """dout (B, N, D), the forward's qkv, bias, out and lse -> dqkv (B, N, 3D), written. With a bias,
    also dscores (B, H, N, N), the scores' gradient (summed over the batch, the bias's); else None."""
    B, heads, N = lse.shape
    D = dout.shape[2]
    Dh = D // heads
    scale = 1.0 / math.sqrt(Dh)
    count, size = _blocks(N, block)
    for bh in prange(B * heads):
        b, h = bh // heads, bh % heads
        q = _scaled_q(qkv, b, h, N, Dh, scale)
        k = _head_block(qkv, b, D + h * Dh, N, Dh)
        v = _head_block(qkv, b, 2 * D + h * Dh, N, Dh)
        do = _head_block(dout, b, h * Dh, N, Dh)
        o = _head_block(out, b, h * Dh, N, Dh)
        delta = np.zeros(N)  # sum_j dprobs_ij probs_ij = dout_i . out_i: the Jacobian's row term
        for i in range(N):
            for d in range(Dh):
                delta[i] += do[i, d] * o[i, d]
        dq = np.zeros((N, Dh), dtype=qkv.dtype)
        dk = np.zeros((N, Dh), dtype=qkv.dtype)
        dv = np.zeros((N, Dh), dtype=qkv.dtype)
        for qb in range(count):
            i0, i1 = qb * size, min(N, (qb + 1) * size)
            for kb in range(count):
                j0, j1 = kb * size, min(N, (kb + 1) * size)
                p = _probs_block(q, k, bias, h, lse[b, h], i0, i1, j0, j1)  # (queries, keys)
                dv[j0:j1] += np.dot(p.T, do[i0:i1])
                ds = np.dot(do[i0:i1], v[j0:j1].T)  # dprobs, then dscores in place
                for i in range(i1 - i0):
                    for j in range(j1 - j0):
                        ds[i, j] = p[i, j] * (ds[i, j] - delta[i0 + i])
                if dscores is not None:
                    dscores[b, h, i0:i1, j0:j1] = ds
                dq[i0:i1] += np.dot(ds, k[j0:j1])  # times the scale below
                dk[j0:j1] += np.dot(ds.T, q[i0:i1])  # q is already scaled
        for i in range(N):
            for d in range(Dh):
                dqkv[b, i, h * Dh + d] = dq[i, d] * scale
                dqkv[b, i, D + h * Dh + d] = dk[i, d]
                dqkv[b, i, 2 * D + h * Dh + d] = dv[i, d]


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def flash_probs(qkv, bias, lse, probs):
    """The attention maps (B, H, N, N) recomputed from qkv (and bias) and the forward's lse, written."""
    B, heads, N = lse.shape
    Dh = qkv.shape[2] // (3 * heads)
    scale = 1.0 / math.sqrt(Dh)
    for bh in prange(B * heads):
        b, h = bh // heads, bh % heads
        q = _scaled_q(qkv, b, h, N, Dh, scale)
        k = _head_block(qkv, b, heads * Dh + h * Dh, N, Dh)
        probs[b, h] = _probs_block(q, k, bias, h, lse[b, h], 0, N, 0, N)


class FlashAttentionCache(NamedTuple):
    qkv: np.ndarray  # (B, N, 3D)
    out: np.ndarray  # (B, N, D), the forward's output (the proj layer keeps it too)
    lse: np.ndarray  # (B, H, N) float64, log sum_j exp(score_ij) per query row
    heads: int
    block: int  # 3_flash's block of rows (0: 4_direct, one block)
    bias: np.ndarray | None = None  # (H, N, N) added to the scores (a relative position bias), or None

    @property
    def probs(self):
        """The attention probabilities (B, H, N, N), recomputed (what the lessons draw)."""
        B, H, N = self.lse.shape
        probs = np.empty((B, H, N, N), dtype=self.qkv.dtype)
        flash_probs(self.qkv, self.bias, self.lse, probs)
        return probs


def _checked(qkv, heads, bias):
    """qkv as a C-contiguous array, and bias (H, N, N) in its dtype, or None."""
    qkv = np.ascontiguousarray(qkv)
    N = qkv.shape[1]
    if bias is not None:
        if bias.shape != (heads, N, N):
            raise ValueError(f"bias must be (heads, N, N) = {(heads, N, N)}, got {bias.shape}")
        bias = np.ascontiguousarray(bias, dtype=qkv.dtype)
    return qkv, bias


def attention_forward_flash(qkv, heads, block=BLOCK, bias=None):
    """qkv (B, N, 3D) -> out (B, N, D); no (B, H, N, N) array (cache.probs recomputes it when asked).
    bias (H, N, N), if given, is added to every image's scores before the softmax."""
    if block < 1:
        raise ValueError(f"block must be at least 1, got {block}")
    qkv, bias = _checked(qkv, heads, bias)
    B, N, three_d = qkv.shape
    out = np.empty((B, N, three_d // 3), dtype=qkv.dtype)
    lse = np.empty((B, heads, N), dtype=np.float64)
    flash_forward(qkv, bias, heads, block, out, lse)
    return out, FlashAttentionCache(qkv, out, lse, heads, block, bias)


def attention_backward_flash(dout, cache):
    """dout (B, N, D) -> dqkv (B, N, 3D), each block of probabilities recomputed from lse."""
    return _grads(dout, cache)[0]


def _grads(dout, cache, with_dscores=False):
    """dqkv (B, N, 3D) and, with a bias (or with_dscores), dscores (B, H, N, N) (else None): from
    5_kept's probabilities (an AttentionCache), by 3_flash's blocks (cache.block > 0) or by
    4_direct's (cache.block 0)."""
    if isinstance(cache, AttentionCache):  # 5_kept: the probabilities themselves
        qkv, probs, _ = cache
        dqkv = np.empty_like(qkv)
        dscores = np.empty_like(probs) if with_dscores else None
        kept_backward(np.ascontiguousarray(dout, dtype=qkv.dtype), qkv, probs, dqkv, dscores)
        return dqkv, dscores
    qkv, out, lse, _, block, bias = cache
    dqkv = np.empty_like(qkv)
    dscores = None if bias is None else np.empty((*lse.shape, lse.shape[2]), dtype=qkv.dtype)
    dout = np.ascontiguousarray(dout, dtype=qkv.dtype)
    if block:
        flash_backward(dout, qkv, bias, out, lse, block, dqkv, dscores)
    else:
        direct_backward(dout, qkv, bias, lse, dqkv, dscores)
    return dqkv, dscores


# -- 4_direct -------------------------------------------------------------------------------------


@njit(fastmath=FASTMATH, cache=True)
def _softmax_rows(s, lse_row):
    """s (N, N) scores -> probabilities in place, row by row; lse_row (N,) = each row's log-sum-exp."""
    N = s.shape[0]
    for i in range(N):
        m = s[i, 0]
        for j in range(1, N):
            m = max(m, s[i, j])
        for j in range(N):
            s[i, j] -= m
        lse_row[i] = m
    exp_any_inplace(s.reshape(-1))
    for i in range(N):
        total = s[i, 0]
        for j in range(1, N):
            total += s[i, j]
        inv = 1.0 / total
        for j in range(N):
            s[i, j] *= inv
        lse_row[i] += math.log(total)


@njit(cache=True, inline="always")
def _head_thirds(x, b, c, D, Dh):
    """Views of one head's columns c:c+Dh in each third (q, k, v) of the (B, N, 3D) rows x[b]."""
    return x[b, :, c : c + Dh], x[b, :, D + c : D + c + Dh], x[b, :, 2 * D + c : 2 * D + c + Dh]


@njit(fastmath=FASTMATH, cache=True)
def _pair_forward(qkv, bias, b, h, heads, out, lse):
    """One (batch, head) pair: out's head columns and lse[b, h] written."""
    N, D = qkv.shape[1], qkv.shape[2] // 3
    Dh = D // heads
    c = h * Dh  # the head's first column in each third of qkv
    q, k, v = _head_thirds(qkv, b, c, D, Dh)
    s = np.empty((N, N), dtype=qkv.dtype)
    gemm(q, False, k, True, s, 1.0 / math.sqrt(Dh), 0.0)  # the scaled scores q k^T / sqrt(Dh)
    if bias is not None:
        s += bias[h]
    _softmax_rows(s, lse[b, h])
    gemm(s, False, v, False, out[b, :, c : c + Dh], 1.0, 0.0)  # probs v


@njit(parallel=True, cache=True)
def direct_forward(qkv, bias, heads, out, lse):
    """qkv (B, N, 3D) -> out (B, N, D) and lse (B, H, N) float64, written; bias None or (H, N, N)."""
    for bh in prange(qkv.shape[0] * heads):
        _pair_forward(qkv, bias, bh // heads, bh % heads, heads, out, lse)


@njit(fastmath=FASTMATH, cache=True)
def _pair_backward(dout, qkv, bias, lse, b, h, dqkv, dscores):
    """One (batch, head) pair: dqkv's head columns (and dscores[b, h] with a bias) written."""
    heads, N = lse.shape[1], lse.shape[2]
    D = dout.shape[2]
    Dh = D // heads
    q, k, _ = _head_thirds(qkv, b, h * Dh, D, Dh)
    p = np.empty((N, N), dtype=qkv.dtype)
    gemm(q, False, k, True, p, 1.0 / math.sqrt(Dh), 0.0)  # the scores again
    if bias is not None:
        p += bias[h]
    for i in range(N):
        for j in range(N):
            p[i, j] -= lse[b, h, i]
    exp_any_inplace(p.reshape(-1))  # probs = exp(score - lse)
    _grads_from_probs(p, dout, qkv, b, h, heads, dqkv, dscores)


@njit(fastmath=FASTMATH, cache=True)
def _grads_from_probs(p, dout, qkv, b, h, heads, dqkv, dscores):
    """One (batch, head) pair's backward from its probabilities p (N, N): dqkv's head columns
    (and dscores[b, h], when dscores is not None) written."""
    N, D = p.shape[0], dout.shape[2]
    Dh = D // heads
    scale = 1.0 / math.sqrt(Dh)
    c = h * Dh
    q, k, v = _head_thirds(qkv, b, c, D, Dh)
    dq, dk, dv = _head_thirds(dqkv, b, c, D, Dh)
    do = dout[b, :, c : c + Dh]
    gemm(p, True, do, False, dv, 1.0, 0.0)  # dv = probs^T dout
    ds = np.empty((N, N), dtype=p.dtype)
    gemm(do, False, v, True, ds, 1.0, 0.0)  # dprobs = dout v^T
    for i in range(N):
        delta = ds[i, 0] * p[i, 0]  # sum_j dprobs_ij probs_ij
        for j in range(1, N):
            delta += ds[i, j] * p[i, j]
        for j in range(N):
            ds[i, j] = p[i, j] * (ds[i, j] - delta)  # dscores
    gemm(ds, False, k, False, dq, scale, 0.0)  # dq = dscores k / sqrt(Dh)
    gemm(ds, True, q, False, dk, scale, 0.0)  # dk = dscores^T q / sqrt(Dh)
    if dscores is not None:
        dscores[b, h] = ds


@njit(parallel=True, cache=True)
def direct_backward(dout, qkv, bias, lse, dqkv, dscores):
    """dout (B, N, D), the forward's qkv, bias and lse -> dqkv (B, N, 3D) (and dscores), written."""
    heads = lse.shape[1]
    for bh in prange(qkv.shape[0] * heads):
        _pair_backward(dout, qkv, bias, lse, bh // heads, bh % heads, dqkv, dscores)


def attention_forward_direct(qkv, heads, bias=None):
    """qkv (B, N, 3D) -> out (B, N, D); the cache keeps lse as 3_flash's does (cache.probs recomputes
    the maps). bias (H, N, N), if given, is added to every image's scores before the softmax."""
    qkv, bias = _checked(qkv, heads, bias)
    B, N, three_d = qkv.shape
    out = np.empty((B, N, three_d // 3), dtype=qkv.dtype)
    lse = np.empty((B, heads, N), dtype=np.float64)
    direct_forward(qkv, bias, heads, out, lse)
    return out, FlashAttentionCache(qkv, out, lse, heads, 0, bias)


def attention_backward_direct(dout, cache):
    """dout (B, N, D) -> dqkv (B, N, 3D), the probabilities recomputed from lse."""
    return _grads(dout, cache)[0]


# -- 5_kept ---------------------------------------------------------------------------------------


@njit(fastmath=FASTMATH, cache=True)
def _pair_forward_kept(qkv, bias, b, h, heads, out, probs):
    """One (batch, head) pair: probs[b, h] and out's head columns written."""
    N, D = qkv.shape[1], qkv.shape[2] // 3
    Dh = D // heads
    c = h * Dh
    q, k, v = _head_thirds(qkv, b, c, D, Dh)
    p = probs[b, h]  # (N, N), contiguous: the scores, then in place the probabilities
    gemm(q, False, k, True, p, 1.0 / math.sqrt(Dh), 0.0)
    if bias is not None:
        p += bias[h]
    _softmax_rows(p, np.empty(N, dtype=np.float64))  # the log-sum-exps are not needed
    gemm(p, False, v, False, out[b, :, c : c + Dh], 1.0, 0.0)


@njit(parallel=True, cache=True)
def kept_forward(qkv, bias, heads, out, probs):
    """qkv (B, N, 3D) -> out (B, N, D) and probs (B, H, N, N), written; bias None or (H, N, N)."""
    for bh in prange(qkv.shape[0] * heads):
        _pair_forward_kept(qkv, bias, bh // heads, bh % heads, heads, out, probs)


@njit(parallel=True, cache=True)
def kept_backward(dout, qkv, probs, dqkv, dscores):
    """dout (B, N, D), the forward's qkv and probs (B, H, N, N) -> dqkv (B, N, 3D) (and dscores), written."""
    heads = probs.shape[1]
    for bh in prange(qkv.shape[0] * heads):
        b, h = bh // heads, bh % heads
        _grads_from_probs(probs[b, h], dout, qkv, b, h, heads, dqkv, dscores)


def attention_forward(qkv, heads, bias=None):
    """qkv (B, N, 3D) -> out (B, N, D). Where the probabilities (B, H, N, N) take no more memory than
    qkv (B, N, 3D), i.e. N <= 3 Dh, the cache is the specification's with them kept; longer sequences
    run 4_direct, whose memory does not grow with N^2. bias (H, N, N), if given, is added to every
    image's scores before the softmax."""
    B, N, three_d = qkv.shape
    if N > three_d // heads:
        return attention_forward_direct(qkv, heads, bias)
    qkv, bias = _checked(qkv, heads, bias)
    out = np.empty((B, N, three_d // 3), dtype=qkv.dtype)
    probs = np.empty((B, heads, N, N), dtype=qkv.dtype)
    kept_forward(qkv, bias, heads, out, probs)
    return out, AttentionCache(qkv, probs, heads)


def attention_backward(dout, cache):
    """dout (B, N, D) -> dqkv (B, N, 3D), from the kept probabilities (or 4_direct's lse)."""
    return _grads(dout, cache)[0]


def attention_bias_forward(qkv, bias, heads):
    """qkv (B, N, 3D), bias (H, N, N) -> out (B, N, D): the default rung with the bias added to the
    scores (tinyvit.layers.attention_bias_forward is the specification)."""
    return attention_forward(qkv, heads, bias=bias)


def attention_bias_backward(dout, cache):
    """dout (B, N, D) -> dqkv (B, N, 3D), dbias (H, N, N): the bias's gradient is the scores',
    summed over the images that share it."""
    dqkv, dscores = _grads(dout, cache, with_dscores=True)
    return dqkv, dscores.sum(axis=0)


VARIANTS = {
    "1_loops": (attention_forward_loops, attention_backward_loops),
    "2_blas_heads": (attention_forward_heads, attention_backward_heads),
    "3_flash": (attention_forward_flash, attention_backward_flash),
    "4_direct": (attention_forward_direct, attention_backward_direct),
    "5_kept": (attention_forward, attention_backward),
}

"""A vectorisable exp for numba kernels: the exponentials of softmax and of the GELU derivative.

numba has no vector math library here (no SVML), so `math.exp` in a loop is a
scalar libm call per element (~0.2-0.5 G/s per core), and it was the largest
cost of the attention softmax. `exp_inplace` is exp written with only
multiplies, adds, a floor and an integer shift, which LLVM turns into AVX-512
code:

    exp(x) = 2^n exp(r),  n = round(x / ln 2),  r = x - n ln 2 in [-ln2/2, ln2/2]

exp(r) is its Taylor series to r^12 (remainder < 1e-15 relative), ln 2 is
split in a high and a low part (Cody-Waite) so r is exact to double precision,
and 2^n is built directly as the bits of a float64, (n + 1023) << 52, written
into an int64 scratch array that is read back as float64 (an array view: the
one way to reinterpret bits in numba that vectorises). Computed in float64, it
agrees with np.exp to ~1e-15 relative, so the float64 backend keeps its 1e-10
agreement with the reference and the float32 backend gets exactly rounded
values in practice.

Variants: `math.exp` (plain, scalar) is what numba_loss still uses on its tiny
(B, K) logits; `exp_inplace` everywhere an exp runs over activations in
float64; `exp32_inplace`, the same construction in float32 arithmetic (16
lanes of AVX-512 instead of 8: the GELU derivative of float32 training), with
the Taylor series to r^7 (remainder < 1e-8 relative) and 2^n built as the bits
of a float32, (n + 127) << 23. Its error is a few float32 ulps (< 1e-6 relative).
`exp_any_inplace(x)` picks one of the two by x's dtype, inside compiled code.

Why np.floor and not math.floor: in numba, as in Python, math.floor returns an
int64, and converting 64-bit integers to and from floats is a vector
instruction only with AVX-512 (its DQ part). On an AVX2 core the whole loop then
ran one element at a time, 4x slower in float32 (10 against 2.4 us for a 65 x 65
attention map). np.floor keeps n a float of x's type, and the 2^n bits are made
from it through an int32, which AVX2 converts eight lanes at a time.
"""

import math

import numpy as np
from numba import njit, types
from numba.extending import overload

from .numba_linear import FASTMATH

_LOG2E = 1.4426950408889634
_LN2_HI = 0.693145751953125  # ln 2 to 19 bits: n * _LN2_HI is exact for |n| < 2^34
_LN2_LO = 1.4286068203094173e-06  # ln 2 - _LN2_HI
X_MIN, X_MAX = -708.0, 709.0  # exp stays a normal float64 in between; inputs are clamped to it


@njit(fastmath=FASTMATH, cache=True)
def exp_inplace(x, bits):
    """x (n,) float64 <- exp(x); bits (n,) int64 scratch of the same length."""
    two_n = bits.view(np.float64)
    for i in range(x.size):
        t = min(max(x[i], X_MIN), X_MAX)
        n = np.floor(t * _LOG2E + 0.5)  # a float: see the note on np.floor above
        r = (t - n * _LN2_HI) - n * _LN2_LO
        p = 1.0 / 479001600.0  # 1/12!, then Horner down to 1
        p = p * r + 1.0 / 39916800.0
        p = p * r + 1.0 / 3628800.0
        p = p * r + 1.0 / 362880.0
        p = p * r + 1.0 / 40320.0
        p = p * r + 1.0 / 5040.0
        p = p * r + 1.0 / 720.0
        p = p * r + 1.0 / 120.0
        p = p * r + 1.0 / 24.0
        p = p * r + 1.0 / 6.0
        p = p * r + 0.5
        p = p * r + 1.0
        p = p * r + 1.0
        x[i] = p
        bits[i] = (np.int64(np.int32(n)) + 1023) << 52  # the float64 2^n; |n| <= 1022 fits an int32
    for i in range(x.size):
        x[i] *= two_n[i]


# float32 constants: a Python float would turn float32 arithmetic into float64 in numba.
_LOG2E_32 = np.float32(_LOG2E)
_LN2_HI_32 = np.float32(0.693359375)  # ln 2 to 10 bits: n * _LN2_HI_32 is exact for |n| < 2^14
_LN2_LO_32 = np.float32(-2.12194440e-4)  # ln 2 - _LN2_HI_32
_X_MIN_32, _X_MAX_32 = np.float32(-87.0), np.float32(88.0)  # exp stays a normal float32 in between
_HALF_32, _ONE_32 = np.float32(0.5), np.float32(1.0)
_C32 = tuple(np.float32(1.0 / math.factorial(k)) for k in range(7, 1, -1))  # 1/7!, ..., 1/2!


@njit(fastmath=FASTMATH, cache=True)
def exp32_inplace(x, bits):
    """x (n,) float32 <- exp(x); bits (n,) int32 scratch of the same length."""
    two_n = bits.view(np.float32)
    for i in range(x.size):
        t = min(max(x[i], _X_MIN_32), _X_MAX_32)
        n = np.floor(t * _LOG2E_32 + _HALF_32)  # float32
        r = (t - n * _LN2_HI_32) - n * _LN2_LO_32
        p = _C32[0]
        p = p * r + _C32[1]
        p = p * r + _C32[2]
        p = p * r + _C32[3]
        p = p * r + _C32[4]
        p = p * r + _C32[5]
        p = p * r + _ONE_32
        p = p * r + _ONE_32
        x[i] = p
        bits[i] = (np.int32(n) + np.int32(127)) << np.int32(23)  # the float32 2^n
    for i in range(x.size):
        x[i] *= two_n[i]


def exp_any_inplace(x):
    """x (n,) <- exp(x) for float32 or float64 x, choosing the version above by dtype when compiled."""
    raise NotImplementedError("exp_any_inplace is for numba-compiled callers")


@overload(exp_any_inplace, jit_options={"fastmath": FASTMATH, "cache": True})
def _exp_any_inplace(x):
    # resolved while compiling, once per dtype: a plain function of the caller, so the caller caches
    if x.dtype == types.float32:
        return lambda x: exp32_inplace(x, np.empty(x.size, dtype=np.int32))
    return lambda x: exp_inplace(x, np.empty(x.size, dtype=np.int64))

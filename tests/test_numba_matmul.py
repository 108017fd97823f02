"""The products on numba's pool (kernels/numba_matmul.py) against NumPy in float64.

Row counts are chosen around the split: fewer rows than two blocks run as one
BLAS call, more are split among the threads (blocks of uneven size included),
and the weight gradient's partial sums are added; the rungs that add their epilogue
chunk by chunk (numba_linear's 4_fused_bias, numba_gelu's 4_fused) get enough rows for
several chunks per thread, which the small shapes of the property tests never reach.
float32 results are checked
against the float64 product of the same (rounded) inputs with
test_numba_kernels' tolerance."""

import os

import numpy as np
import pytest
from test_numba_kernels import assert_close
from tinyvit.kernels import numba_gelu, numba_linear, numba_matmul

from tinyvit import layers

ROWS = [1, 31, 2 * numba_matmul.MIN_ROWS, 2 * numba_matmul.MIN_ROWS + 1, 257, 1000]


def draw(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("rows", ROWS)
def test_matmul_and_matmul_tn_match_numpy(rows, dtype):
    rng = np.random.default_rng(rows)
    a, b, w, y = (draw(rng, s, dtype) for s in ((rows, 24), (24, 40), (40, 24), (rows, 40)))
    a64, b64, w64, y64 = (v.astype(np.float64) for v in (a, b, w, y))
    assert_close("a @ b", numba_matmul.matmul(a, b), a64 @ b64, dtype)
    assert_close("a @ w.T (F-contiguous b)", numba_matmul.matmul(a, w.T), a64 @ w64.T, dtype)
    assert_close("a.T @ y", numba_matmul.matmul_tn(a, y), a64.T @ y64, dtype)


def test_matmul_reads_strided_operands():
    """A b that is neither C- nor F-contiguous (a slice) is copied, not misread."""
    rng = np.random.default_rng(1)
    a, big = draw(rng, (300, 16), np.float64), draw(rng, (16, 60), np.float64)
    assert_close("a @ b[:, ::3]", numba_matmul.matmul(a, big[:, ::3]), a @ big[:, ::3], np.float64)


# (9, 65) rows: 585, so each of two threads has 292 or 293, a whole chunk of CHUNK_ROWS (256) and a ragged one
MANY = (9, 65)


def _chunked_path_runs():
    if not numba_matmul.pool_parts(MANY[0] * MANY[1]):
        pytest.skip("the products do not run on numba's pool here (one thread, or its layer is not OpenMP)")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("rung", ["3_pool", "4_fused_bias"])
def test_pool_linear_matches_the_specification_on_many_rows(rung, dtype):
    """numba_linear's rungs on the pool, on a (B, N, in) input large enough to be split among threads
    and, for 4_fused_bias, into several chunks per thread."""
    _chunked_path_runs()
    rng = np.random.default_rng(2)
    x, w, b, dout = (draw(rng, s, dtype) for s in ((*MANY, 48), (48, 96), (96,), (*MANY, 96)))
    forward, backward = numba_linear.VARIANTS[rung]
    out, cache = forward(x, w, b)
    ref_out, ref_cache = layers.linear_forward(*(v.astype(np.float64) for v in (x, w, b)))
    assert_close("linear out", out, ref_out, dtype)
    ref_grads = layers.linear_backward(dout.astype(np.float64), ref_cache)
    for name, g, r in zip(("dx", "dweight", "dbias"), backward(dout, cache), ref_grads):
        assert_close("linear " + name, g, r, dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_fused_gelu_matches_the_specification_on_many_rows(dtype):
    """numba_gelu's 4_fused, several chunks per thread: out and the cached pre-activation z."""
    _chunked_path_runs()
    rng = np.random.default_rng(3)
    x, w, b = draw(rng, (*MANY, 40), dtype), draw(rng, (40, 24), dtype) / 3, draw(rng, (24,), dtype)
    out, cache = numba_gelu.VARIANTS["4_fused"][0](x, w, b)
    ref_out, ref_cache = layers.linear_gelu_forward(*(v.astype(np.float64) for v in (x, w, b)))
    assert_close("linear_gelu out", out, ref_out, dtype)
    assert_close("linear_gelu z", cache.z.reshape(*MANY, 24), ref_cache.gelu.x, dtype)


def test_products_use_numbas_pool_when_it_is_openmp():
    import numba

    numba_matmul.matmul(np.ones((300, 4)), np.ones((4, 4)))  # a parallel loop: numba's pool is up
    expected = numba_matmul._INNER_BLAS_ALONE and numba.threading_layer() == "omp"
    assert numba_matmul.products_on_pool() == expected


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("a_transposed", [False, True])
@pytest.mark.parametrize("b_transposed", [False, True])
def test_gemm_on_strided_blocks_with_alpha_and_beta(a_transposed, b_transposed, dtype):
    """gemm reads and writes blocks of bigger arrays in place (rows strided, columns contiguous):
    out = alpha op(a) op(b) + beta out, the rest of out's array untouched."""
    from numba import njit

    gemm = njit(lambda a, ta, b, tb, out, alpha, beta: numba_matmul.gemm(a, ta, b, tb, out, alpha, beta))
    rng = np.random.default_rng(7)
    big_a, big_b, big_out = draw(rng, (9, 20), dtype), draw(rng, (11, 30), dtype), draw(rng, (12, 15), dtype)
    a = big_a[1:6, 2:9] if a_transposed else big_a[1:8, 2:7]  # op(a) is (7, 5)
    b = big_b[3:7, 4:9] if b_transposed else big_b[3:8, 4:8]  # op(b) is (5, 4)
    op_a, op_b = (a.T if a_transposed else a), (b.T if b_transposed else b)
    want = big_out.astype(np.float64)
    want[2:9, 1:5] = 0.5 * op_a.astype(np.float64) @ op_b.astype(np.float64) + 2.0 * want[2:9, 1:5]
    gemm(a, a_transposed, b, b_transposed, big_out[2:9, 1:5], 0.5, 2.0)
    assert_close("gemm", big_out, want, dtype)


POOL_CHILD = """
import numpy as np
from tinyvit.kernels import numba_matmul
rng = np.random.default_rng(3)
a, y = rng.standard_normal((300, 24)), rng.standard_normal((300, 40))
print(numba_matmul.POOL_BLAS, np.abs(numba_matmul.matmul_tn(a, y) - a.T @ y).max())
"""


def test_either_pool_blas_runs_kernels_cached_under_the_other(tmp_path):
    """The kernels call the pool's BLAS by one symbol name whichever library it is, so numba's cache
    filled under SciPy's BLAS (TINYVIT_POOL_BLAS=scipy) serves the default, and the other way round."""
    import importlib.util
    import subprocess
    import sys

    own = importlib.util.find_spec("scipy_openblas32") is not None
    seen = []
    for choice in ("scipy", "default", "scipy"):
        env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path), TINYVIT_POOL_BLAS=choice)
        out = subprocess.run([sys.executable, "-c", POOL_CHILD], env=env, capture_output=True, text=True, check=False)
        assert out.returncode == 0, out.stderr[-2000:]
        blas, err = out.stdout.split()
        assert float(err) < 1e-10, f"{choice}: a.T @ y off by {err}"
        seen.append(blas)
    assert seen[0] == seen[2] == "scipy"
    assert (seen[1] != "scipy") == own, f"scipy-openblas32 installed: {own}, the default ran {seen[1]}"


def test_the_pools_own_blas_keeps_one_thread_after_set_threads():
    """scipy-openblas32's library runs only inside numba's loops, one call per thread: set_threads
    must not give it more threads (that would nest BLAS threads inside numba's)."""
    from threadpoolctl import threadpool_info

    from tinyvit.threads import set_threads

    if numba_matmul.POOL_BLAS == "scipy":
        pytest.skip("scipy-openblas32 is not installed here: SciPy's BLAS runs the pool's products")
    set_threads(2)
    try:
        pools = {os.path.realpath(p["filepath"]): p["num_threads"] for p in threadpool_info()}
        assert pools[os.path.realpath(numba_matmul.POOL_BLAS)] == 1, pools
    finally:
        set_threads(None)


def test_a_scipy_openblas32_that_does_not_load_leaves_scipys_blas(monkeypatch, tmp_path):
    """A broken install (no library where the package says) is not an error: SciPy's BLAS runs the
    products (_pool_blas falls back on None)."""
    scipy_openblas32 = pytest.importorskip("scipy_openblas32")
    monkeypatch.setattr(scipy_openblas32, "get_lib_dir", lambda: str(tmp_path / "missing"))
    assert numba_matmul._own_openblas() is None
    (tmp_path / "libscipy_openblas.so").write_bytes(b"not a library")
    monkeypatch.setattr(scipy_openblas32, "get_lib_dir", lambda: str(tmp_path))
    assert numba_matmul._own_openblas() is None

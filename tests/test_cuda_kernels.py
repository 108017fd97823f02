"""Every CUDA kernel against its NumPy specification (tinyvit.layers, tinyvit.optim).

Runs on a real GPU when there is one, and under the CUDA simulator otherwise
(tests/conftest.py sets NUMBA_ENABLE_CUDASIM=1 before numba is imported). The
shapes are tiny and the blocks small (tile 4, 16 threads per elementwise
block, 4 threads per row reduction under the simulator), so several blocks
take part and no edge is a multiple of a block.

Tolerances, as relative errors max|got - want| / max|want|:
- float64 kernels against the float64 specification: 1e-12. Only the order of
  the sums differs, which moves the last few bits.
- float32 kernels (inputs rounded to float32) against the float64
  specification on the unrounded inputs: 1e-5 (2e-5 for attention and LayerNorm
  backward, whose few chained float32 products add up). float32 keeps 24 bits
  (eps 6e-8); the inputs' own rounding, and sums of up to ~10 terms, stay far
  below that bound, while an indexing bug gives errors of order 1.
"""


import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import cuda, float64
from tinyvit.kernels import cuda_backend as cb
from tinyvit.kernels import cuda_common, cuda_matmul, cuda_reduce
from tinyvit.kernels.cuda_attention import softmax_rows_
from tinyvit.kernels.cuda_common import MAX_ROW_THREADS
from tinyvit.kernels.cuda_matmul import Blocking, matmul

from tinyvit import layers
from tinyvit.optim import AdamWStep, adamw_update, sum_of_squares

TOL = {np.float64: 1e-12, np.float32: 1e-5}
DTYPES = [np.float64, np.float32]
ops = cb.BACKEND
needs_gpu = pytest.mark.skipif(
    cuda_common.SIMULATING, reason="warp shuffles (cuda.shfl_xor_sync) do not exist in the CUDA simulator"
)


pytestmark = pytest.mark.usefixtures("small_cuda_blocks", "fast_simulator_barriers")  # tests/conftest.py


def dev(x, dtype):
    return ops.asarray(np.asarray(x), dtype)


def host(a):
    return ops.to_numpy(a)


def assert_close(got, want, tol, what):
    got = np.asarray(got, dtype=np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, expected {want.shape}"
    err = np.max(np.abs(got - want), initial=0.0) / max(1e-8, np.max(np.abs(want), initial=0.0))
    assert err < tol, f"{what}: relative error {err:.2e} exceeds {tol:.0e}"


def rng_normal(seed, *shape):
    return np.random.default_rng(seed).standard_normal(shape)


# -- matrix products -------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (False, True), (True, False), (True, True)])
@pytest.mark.parametrize("variant", cuda_matmul.VARIANTS)
def test_matmul_every_transposed_form_matches_numpy(variant, trans_a, trans_b, dtype):
    """5x7 @ 7x9 in tiles of 4 (tiled) or 8x4 blocks (regblock): partial tiles on every edge, K not a tile multiple."""
    A, B = rng_normal(1, 5, 7), rng_normal(2, 7, 9)
    a = A.T.copy() if trans_a else A
    b = B.T.copy() if trans_b else B
    got = matmul(dev(a, dtype), dev(b, dtype), trans_a, trans_b, variant=variant)
    assert_close(host(got), A @ B, TOL[dtype], f"{variant} matmul trans_a={trans_a} trans_b={trans_b}")


@pytest.mark.parametrize("variant", cuda_matmul.VARIANTS)
@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (False, True), (True, False)])
def test_batched_matmul_is_one_product_per_leading_index(variant, trans_a, trans_b):
    """(3, 5, 6) @ (3, 6, 7): blockIdx.z picks the pair, as attention's batch x heads do."""
    A, B = rng_normal(3, 3, 5, 6), rng_normal(4, 3, 6, 7)
    a = A.transpose(0, 2, 1).copy() if trans_a else A
    b = B.transpose(0, 2, 1).copy() if trans_b else B
    got = matmul(dev(a, np.float64), dev(b, np.float64), trans_a, trans_b, variant=variant)
    assert_close(host(got), A @ B, 1e-12, f"batched {variant} matmul")


@settings(max_examples=12)
@given(
    m=st.integers(1, 10), k=st.integers(1, 10), n=st.integers(1, 10),
    trans_a=st.booleans(), trans_b=st.booleans(), variant=st.sampled_from(cuda_matmul.VARIANTS),
    seed=st.integers(0, 2**32 - 1),
)  # fmt: skip
def test_matmul_any_small_shape_matches_numpy(m, k, n, trans_a, trans_b, variant, seed):
    """Shapes from 1 to 10 on each side against tiles of 4 and 8x4: full, partial and lone tiles alike."""
    A, B = rng_normal(seed, m, k), rng_normal(seed + 1, k, n)
    a = A.T.copy() if trans_a else A
    b = B.T.copy() if trans_b else B
    got = matmul(dev(a, np.float64), dev(b, np.float64), trans_a, trans_b, variant=variant)
    assert_close(host(got), A @ B, 1e-12, f"{variant} {m}x{k} @ {k}x{n}")


def test_matmul_thread_patch_larger_than_the_matrix():
    """A 2x3 @ 3x1 product with 8x4 block tiles: most threads own only outputs past the edge."""
    A, B = rng_normal(5, 2, 3), rng_normal(6, 3, 1)
    assert_close(host(matmul(dev(A, np.float64), dev(B, np.float64))), A @ B, 1e-12, "tiny regblock matmul")


def test_the_simulators_shared_array_is_one_array_for_threads_that_ask_at_once():
    """The simulator makes a block's shared array when the first thread asks for it; threads that
    ask at the same moment must get that one array (cuda_common makes the look-up and the store
    one step). Unpatched, 16 threads released together by a barrier got two arrays or more in
    about 1 trial in 20 here, and a product's threads then read tiles the others never wrote."""
    import sys
    import threading

    if not cuda_common.SIMULATING:
        pytest.skip("on a GPU shared memory is the hardware's: nothing to patch")
    from numba.cuda.simulator import kernelapi

    def ask(shared, together, got, i):
        together.wait()
        got[i] = shared.array(8, np.float64)  # one source line: one array for the block

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch as often as they can: inside the look-up too
    try:
        for trial in range(200):
            shared, together, got = kernelapi.FakeCUDAShared(0), threading.Barrier(16), [None] * 16
            threads = [threading.Thread(target=ask, args=(shared, together, got, i)) for i in range(16)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert len({id(a) for a in got}) == 1, f"trial {trial}: 16 threads got {len({id(a) for a in got})} arrays"
    finally:
        sys.setswitchinterval(interval)


def test_matmul_rejects_mismatched_inner_dimensions():
    a, b = dev(np.ones((2, 3)), np.float64), dev(np.ones((4, 5)), np.float64)
    with pytest.raises(ValueError, match="inner dimensions"):
        matmul(a, b)
    with pytest.raises(ValueError, match="blocking"):
        matmul(a, dev(np.ones((3, 5)), np.float64), blocking=Blocking(4, 4, 2, 3, 2))


# -- block reductions --------------------------------------------------------------------------


@cuda.jit
def _block_reduce_shared_kernel(x, sums, maxes):
    """Every thread of one block reports the block's sum and max of x (strided over x)."""
    scratch = cuda.shared.array(MAX_ROW_THREADS, float64)
    t = cuda.threadIdx.x
    s, m = 0.0, -np.inf
    for j in range(t, x.size, cuda.blockDim.x):
        s += x[j]
        m = max(m, x[j])
    sums[t] = cuda_reduce.block_sum_shared(s, scratch)
    maxes[t] = cuda_reduce.block_max_shared(m, scratch)


@cuda.jit
def _block_reduce_warp_kernel(x, sums, maxes):
    scratch = cuda.shared.array(MAX_ROW_THREADS, float64)
    t = cuda.threadIdx.x
    s, m = 0.0, -np.inf
    for j in range(t, x.size, cuda.blockDim.x):
        s += x[j]
        m = max(m, x[j])
    sums[t] = cuda_reduce.block_sum_warp(s, scratch)
    maxes[t] = cuda_reduce.block_max_warp(m, scratch)


def _check_block_reduce(kernel, threads):
    x = rng_normal(7, 3 * threads + 5)  # some threads take 4 values, some 3
    sums, maxes = cuda.device_array(threads), cuda.device_array(threads)
    kernel[1, threads](cuda.to_device(x), sums, maxes)
    assert_close(sums.copy_to_host(), np.full(threads, x.sum()), 1e-12, "block sum, every thread")
    np.testing.assert_array_equal(maxes.copy_to_host(), np.full(threads, x.max()), "block max, every thread")


def test_block_reduce_shared_memory_tree_gives_every_thread_the_total():
    _check_block_reduce(_block_reduce_shared_kernel, 8)


@needs_gpu
def test_block_reduce_warp_shuffles_give_every_thread_the_total():
    """Two warps: the shuffle butterfly within each, then the per-warp partials across them."""
    _check_block_reduce(_block_reduce_warp_kernel, 64)


def test_sum_of_squares_matches_the_float64_specification():
    """Several arrays, mixed sizes; MAX_REDUCE_BLOCKS=2 makes the grid-stride loop take several turns."""
    hosts = [rng_normal(8, 3, 5), rng_normal(9, 7), rng_normal(10, 2, 2, 3)]
    for dtype in DTYPES:
        got = ops.sum_of_squares([dev(h, dtype) for h in hosts])
        assert isinstance(got, float)
        assert_close(np.array(got), np.array(sum_of_squares(hosts)), TOL[dtype], f"sum_of_squares {dtype}")


@pytest.mark.parametrize("variant", ["plain", "chunked"])
def test_column_sum_is_the_sum_over_rows(variant):
    """(11, 20): with 16 threads per block and chunks of 3 rows, a 2 x 4 grid of blocks."""
    x = rng_normal(11, 11, 20)
    assert_close(host(cuda_reduce.column_sum(dev(x, np.float64), variant)), x.sum(axis=0), 1e-12, variant)
    with pytest.raises(ValueError, match="variant"):
        cuda_reduce.column_sum(dev(x, np.float64), "fast")


# -- elementwise and rearranging -----------------------------------------------------------------


def test_add_scale_and_zeros_like():
    a, b = rng_normal(12, 3, 7), rng_normal(13, 3, 7)
    da, db = dev(a, np.float64), dev(b, np.float64)
    assert_close(host(ops.add(da, db)), a + b, 1e-15, "add")
    np.testing.assert_array_equal(host(da), a, "add wrote into its input")
    sa, sb = ops.scale([da, db], 0.5)
    assert_close(host(sa), 0.5 * a, 1e-15, "scale first array")
    assert_close(host(sb), 0.5 * b, 1e-15, "scale second array")
    np.testing.assert_array_equal(host(da), a, "scale wrote into its input")
    z = ops.zeros_like(da)
    np.testing.assert_array_equal(host(z), np.zeros_like(a))
    with pytest.raises(ValueError, match="shape"):
        ops.add(da, dev(np.ones((7, 3)), np.float64))


def test_patchify_matches_the_specification():
    images = rng_normal(14, 2, 8, 12, 3)
    patches, cache = ops.patchify_forward(dev(images, np.float64), 4)
    want, want_cache = layers.patchify_forward(images, 4)
    np.testing.assert_array_equal(host(patches), want)
    assert cache == want_cache
    np.testing.assert_array_equal(host(ops.patchify_backward(patches, cache)), images)  # the inverse
    with pytest.raises(ValueError, match="patch_size"):
        ops.patchify_forward(dev(images, np.float64), 5)


def test_embed_and_class_token_forward_and_backward():
    x, cls, pos = rng_normal(15, 2, 4, 5), rng_normal(16, 5), rng_normal(17, 5, 5)
    out, cache = ops.embed_forward(dev(x, np.float64), dev(cls, np.float64), dev(pos, np.float64))
    want, ref_cache = layers.embed_forward(x, cls, pos)
    assert_close(host(out), want, 1e-15, "embed forward")
    dout = rng_normal(18, 2, 5, 5)
    got = ops.embed_backward(dev(dout, np.float64), cache)
    for g, w, name in zip(got, layers.embed_backward(dout, ref_cache), ("dx", "dcls", "dpos")):
        assert_close(host(g), w, 1e-14, f"embed backward {name}")

    row, c = ops.class_token_forward(dev(want, np.float64))
    want_row, ref_c = layers.class_token_forward(want)
    assert_close(host(row), want_row, 0.0 + 1e-15, "class token forward")
    drow = rng_normal(19, 2, 5)
    assert_close(host(ops.class_token_backward(dev(drow, np.float64), c)),
                 layers.class_token_backward(drow, ref_c), 1e-15, "class token backward")  # fmt: skip


# -- layers ------------------------------------------------------------------------------------


def _check_backward(got, want, tol, what, names):
    assert len(got) == len(want)
    for g, w, name in zip(got, want, names):
        assert_close(host(g), w, tol, f"{what} {name}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_and_linear_gelu_match_the_specification(dtype):
    """x (2, 3, 5) @ W (5, 6): leading axes fold into rows; backward uses the transposed matmuls."""
    x, w, b = rng_normal(20, 2, 3, 5), rng_normal(21, 5, 6), rng_normal(22, 6)
    dout = rng_normal(23, 2, 3, 6)
    for fwd, bwd, ref_f, ref_b in (
        (ops.linear_forward, ops.linear_backward, layers.linear_forward, layers.linear_backward),
        (ops.linear_gelu_forward, ops.linear_gelu_backward, layers.linear_gelu_forward, layers.linear_gelu_backward),
    ):
        dx_in, dw_in, db_in, dd = dev(x, dtype), dev(w, dtype), dev(b, dtype), dev(dout, dtype)
        out, cache = fwd(dx_in, dw_in, db_in)
        want, ref_cache = ref_f(x, w, b)
        assert_close(host(out), want, TOL[dtype], f"{fwd.__name__} {dtype.__name__}")
        _check_backward(bwd(dd, cache), ref_b(dout, ref_cache), TOL[dtype], bwd.__name__, ("dx", "dw", "db"))
        np.testing.assert_array_equal(host(dd), dout.astype(dtype), "backward wrote into dout")
        np.testing.assert_array_equal(host(dx_in), x.astype(dtype), "backward wrote into x")


@pytest.mark.parametrize("dtype", DTYPES)
def test_layernorm_matches_the_specification(dtype):
    """Rows of D=13 reduced by 4 threads (32 on a GPU): each thread strides over several values."""
    x = rng_normal(24, 2, 3, 13) * 3.0 + 1.5  # a mean far from 0 checks the two-pass variance
    w, b, dout = rng_normal(25, 13), rng_normal(26, 13), rng_normal(27, 2, 3, 13)
    out, cache = ops.layernorm_forward(dev(x, dtype), dev(w, dtype), dev(b, dtype))
    want, ref_cache = layers.layernorm_forward(x, w, b)
    assert_close(host(out), want, TOL[dtype], "layernorm forward")
    dd = dev(dout, dtype)
    tol = {np.float64: 1e-12, np.float32: 2e-5}[dtype]
    _check_backward(ops.layernorm_backward(dd, cache), layers.layernorm_backward(dout, ref_cache), tol,
                    "layernorm backward", ("dx", "dweight", "dbias"))  # fmt: skip
    np.testing.assert_array_equal(host(dd), dout.astype(dtype), "backward wrote into dout")


@pytest.mark.parametrize("dtype", DTYPES)
def test_add_layernorm_matches_the_specification(dtype):
    """The residual add fused with LayerNorm: rows of D=13 over 4 threads, s and y out, ds added to dx."""
    x, h = rng_normal(60, 2, 3, 13) * 3.0 + 1.5, rng_normal(61, 2, 3, 13)
    w, b = rng_normal(62, 13), rng_normal(63, 13)
    ds, dy = rng_normal(64, 2, 3, 13), rng_normal(65, 2, 3, 13)
    inputs = [dev(a, dtype) for a in (x, h, w, b)]
    (s, y), cache = ops.add_layernorm_forward(*inputs)
    (want_s, want_y), ref_cache = layers.add_layernorm_forward(x, h, w, b)
    assert_close(host(s), want_s, TOL[dtype], "add_layernorm s")
    assert_close(host(y), want_y, TOL[dtype], "add_layernorm y")
    dd = (dev(ds, dtype), dev(dy, dtype))
    tol = {np.float64: 1e-12, np.float32: 2e-5}[dtype]
    _check_backward(ops.add_layernorm_backward(dd, cache), layers.add_layernorm_backward((ds, dy), ref_cache), tol,
                    "add_layernorm backward", ("dx", "dweight", "dbias"))  # fmt: skip
    for a, want in zip((*inputs, *dd), (x, h, w, b, ds, dy)):
        np.testing.assert_array_equal(host(a), want.astype(dtype), "add_layernorm wrote into an input")
    with pytest.raises(ValueError, match="shape"):
        ops.add_layernorm_forward(inputs[0], dev(h[:, :2], dtype), inputs[2], inputs[3])


def test_softmax_rows_sum_to_one_and_match_the_specification():
    x = rng_normal(28, 6, 11) * 10.0  # large logits: the max subtraction has to work
    got = host(softmax_rows_(dev(x, np.float64), 0.5))
    assert_close(got, layers.softmax(0.5 * x), 1e-12, "softmax")
    np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-12)
    with pytest.raises(ValueError, match="positive"):
        softmax_rows_(dev(x, np.float64), 0.0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_forward_backward_and_probs_match_the_specification(dtype):
    """B=2, N=5, H=2, Dh=3: 4 (batch, head) products per batched matmul, 5-wide softmax rows."""
    qkv, dout = rng_normal(29, 2, 5, 18), rng_normal(30, 2, 5, 6)
    out, cache = ops.attention_forward(dev(qkv, dtype), 2)
    want, ref_cache = layers.attention_forward(qkv, 2)
    tol = {np.float64: 1e-12, np.float32: 2e-5}[dtype]
    assert_close(host(out), want, tol, "attention forward")
    assert_close(host(ops.attention_probs(cache)), ref_cache.probs, tol, "attention probs (B, H, N, N)")
    dd = dev(dout, dtype)
    assert_close(host(ops.attention_backward(dd, cache)), layers.attention_backward(dout, ref_cache), tol,
                 "attention backward dqkv")  # fmt: skip
    np.testing.assert_array_equal(host(dd), dout.astype(dtype), "backward wrote into dout")
    with pytest.raises(ValueError, match="heads"):
        ops.attention_forward(dev(qkv, dtype), 4)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_matches_the_specification(dtype, smoothing):
    logits, labels = rng_normal(31, 5, 7) * 4.0, np.array([0, 6, 3, 3, 1])
    loss, cache = ops.cross_entropy_forward(dev(logits, dtype), labels, smoothing)
    want, ref_cache = layers.cross_entropy_forward(logits, labels, smoothing)
    assert isinstance(loss, float)
    assert_close(np.array(loss), np.array(want), TOL[dtype], "cross-entropy loss")
    assert_close(host(ops.cross_entropy_backward(1.0, cache)), layers.cross_entropy_backward(1.0, ref_cache),
                 TOL[dtype], "cross-entropy dlogits")  # fmt: skip
    with pytest.raises(ValueError, match="labels"):
        ops.cross_entropy_forward(dev(logits, dtype), np.array([0, 7, 0, 0, 0]), smoothing)


@pytest.mark.parametrize("dtype", DTYPES)
def test_count_correct_stays_on_the_device_and_matches_the_specification(dtype):
    """One thread per row over 3 blocks of 16 (40 rows): integer logits for ties, and a row with a NaN."""
    rng = np.random.default_rng(5)
    logits = rng.integers(-2, 3, size=(40, 6)).astype(np.float64)
    logits[7, 2] = np.nan
    labels = rng.integers(0, 6, size=40)
    labels[7] = 2  # the NaN is the row's argmax, as in np.argmax
    got = ops.count_correct(dev(logits, dtype), labels)
    assert cuda_common.is_device_array(got) and got.shape == (1,)
    want = layers.count_correct(logits, labels)
    assert host(got)[0] == want and want > 0
    assert host(ops.count_correct(dev(logits, dtype), cuda.to_device(labels)))[0] == want
    assert host(ops.count_correct(dev(logits[:0], dtype), labels[:0]))[0] == 0


@pytest.mark.parametrize("dtype", DTYPES)
def test_adamw_update_matches_the_specification_over_three_steps(dtype):
    """New param, m and v; no input written. Steps 1-3 exercise the bias corrections."""
    p, m, v = rng_normal(32, 4, 9), np.zeros((4, 9)), np.zeros((4, 9))
    dp, dm, dv = dev(p, dtype), dev(m, dtype), dev(v, dtype)
    for step in (1, 2, 3):
        g = rng_normal(33 + step, 4, 9)
        hp = AdamWStep(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.05, step=step)
        dg = dev(g, dtype)
        before = [host(a) for a in (dp, dm, dv)]
        new = ops.adamw_update(dp, dg, dm, dv, hp)
        p, m, v = adamw_update(p, g, m, v, hp)
        np.testing.assert_array_equal(host(dg), g.astype(dtype), "adamw wrote into grad")
        for old, a in zip(before, (dp, dm, dv)):
            np.testing.assert_array_equal(host(a), old, "adamw wrote into its input")
        dp, dm, dv = new
    for got, want, name in ((dp, p, "param"), (dm, m, "m"), (dv, v, "v")):
        assert_close(host(got), want, TOL[dtype], f"adamw {name}")
    with pytest.raises(ValueError, match="shape"):
        ops.adamw_update(dp, dev(np.ones(3), dtype), dm, dv, hp)


def test_backend_rejects_host_arrays_with_a_clear_message():
    x = np.ones((2, 3))
    with pytest.raises(ValueError, match="device array"):
        ops.layernorm_forward(x, dev(np.ones(3), np.float64), dev(np.zeros(3), np.float64))

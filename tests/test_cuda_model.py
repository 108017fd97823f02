"""The whole ViT on the `cuda` backend against the `numpy` specification, on the `testing` preset.

Forward logits, attention maps, the loss and every parameter's gradient, then
one AdamW step with gradient clipping active. Runs on a GPU when there is one,
else under the CUDA simulator, with small blocks as in test_cuda_kernels.

Tolerances (relative to the largest entry of each reference array):
- float64: 1e-10. The two backends differ only in the order of their sums.
- float32 on the device against the float64 specification: 1e-4. Two blocks of
  float32 kernels compound their roundings (~1e-7 each) through LayerNorm and
  softmax; the bound leaves room for that and still catches any wrong term.
"""


import numpy as np
import pytest
from tinyvit.kernels import cuda_common, cuda_matmul, cuda_reduce
from tinyvit.kernels.cuda_matmul import Blocking

from tinyvit.config import PRESETS
from tinyvit.model import ViT
from tinyvit.optim import AdamW

CFG = PRESETS["testing"]
SMOOTHING = 0.1


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    monkeypatch.setattr(cuda_common, "ELEMENT_THREADS", 32)
    monkeypatch.setattr(cuda_common, "ROW_THREADS", 4)
    monkeypatch.setattr(cuda_reduce, "COLUMN_CHUNK_ROWS", 4)
    monkeypatch.setattr(cuda_matmul, "BLOCKING", Blocking(bm=8, bn=8, bk=4, tm=2, tn=2))
    monkeypatch.setattr(cuda_matmul, "BATCHED_BLOCKING", Blocking(bm=4, bn=4, bk=4, tm=2, tn=2))


pytestmark = pytest.mark.usefixtures("fast_simulator_barriers")  # tests/conftest.py


def batch(seed=0, size=3):
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((size, CFG.image_size, CFG.image_size, CFG.channels))
    labels = rng.integers(0, CFG.num_classes, size=size)
    return images, labels


def trained_looking_params(seed=1):
    """The initial parameters, perturbed: the zero head and unit norms would hide wrong terms."""
    rng = np.random.default_rng(seed)
    params = ViT(CFG, seed=0, dtype=np.float64).numpy_params()
    return {k: v + 0.1 * rng.standard_normal(v.shape) for k, v in params.items()}


def rel_err(got, want):
    return np.max(np.abs(np.asarray(got, np.float64) - want)) / max(1e-8, np.max(np.abs(want)))


@pytest.fixture(scope="module")
def reference():
    """The numpy model's loss, gradients, logits and attention maps on one batch (float64)."""
    params = trained_looking_params()
    model = ViT(CFG, dtype=np.float64, backend="numpy", params=params)
    images, labels = batch()
    loss, grads, logits = model.loss_and_grads(images, labels, SMOOTHING, return_logits=True)
    _, probs = model.forward(images, return_attention=True)
    return params, loss, grads, logits, probs


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-10), (np.float32, 1e-4)])
def test_cuda_model_matches_numpy_loss_logits_attention_and_every_gradient(reference, dtype, tol):
    params, want_loss, want_grads, want_logits, want_probs = reference
    model = ViT(CFG, dtype=dtype, backend="cuda", params=params)
    images, labels = batch()
    loss, grads, logits = model.loss_and_grads(images, labels, SMOOTHING, return_logits=True)
    logits = model.backend.to_numpy(logits)
    assert isinstance(loss, float)
    assert abs(loss - want_loss) <= tol * abs(want_loss), f"loss {loss} vs numpy {want_loss}"
    assert rel_err(logits, want_logits) < tol, f"logits differ by {rel_err(logits, want_logits):.2e}"
    assert set(grads) == set(want_grads)
    bad = {}
    for name, want in want_grads.items():
        got = model.backend.to_numpy(grads[name])
        assert got.shape == want.shape and got.dtype == dtype, f"{name}: {got.shape} {got.dtype}"
        if rel_err(got, want) >= tol:
            bad[name] = f"{rel_err(got, want):.2e}"
    assert not bad, f"gradients off by more than {tol:.0e}: {bad}"
    if dtype == np.float64:  # the attention maps once; forward is the same code as in loss_and_grads
        _, probs = model.forward(images, return_attention=True)
        assert len(probs) == CFG.depth
        for got, want in zip(probs, want_probs):
            assert rel_err(got, want) < tol, f"attention probs differ by {rel_err(got, want):.2e}"


def test_one_adamw_step_with_clipping_matches_numpy():
    """Gradient norm, clipping (scale_) and the update, on the device, against the NumPy optimiser."""
    params = trained_looking_params(seed=2)
    images, labels = batch(seed=3)
    after = {}
    for backend in ("numpy", "cuda"):
        model = ViT(CFG, dtype=np.float64, backend=backend, params=params)
        opt = AdamW(model, lr=1e-2, weight_decay=0.05, clip_norm=0.5)  # the norm is ~2: clipping acts
        _, grads = model.loss_and_grads(images, labels)
        norm = opt.step(grads)
        after[backend] = (norm, model.numpy_params(), opt.state_dict())
    (norm_np, p_np, s_np), (norm_cu, p_cu, s_cu) = after["numpy"], after["cuda"]
    assert norm_np > 0.5, f"the test needs clipping to act, but the gradient norm is {norm_np}"
    assert abs(norm_cu - norm_np) <= 1e-10 * norm_np, f"gradient norm {norm_cu} vs numpy {norm_np}"
    moved = [name for name in p_cu if not np.allclose(p_cu[name], params[name], rtol=0, atol=1e-6)]
    assert len(moved) == len(params), f"parameters the step left unchanged: {sorted(set(params) - set(moved))}"
    for name in p_np:
        assert rel_err(p_cu[name], p_np[name]) < 1e-10, f"{name} after one step"
        assert rel_err(s_cu[f"m/{name}"], s_np[f"m/{name}"]) < 1e-10, f"first moment of {name}"
        assert rel_err(s_cu[f"v/{name}"], s_np[f"v/{name}"]) < 1e-10, f"second moment of {name}"

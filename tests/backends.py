"""What every backend's tests share: which backends to test, test models, and one error measure.

- BACKENDS: every name in the registry, each a pytest param; a backend that cannot
  load here (jax not installed) is a visible skip with the reason, never a pass.
  A new backend is tested by being registered.
- perturbed_params: a model's parameters moved well away from their initial values.
  At initialisation the head is zero and the norms are identity maps, so
  most gradients vanish and a wrong term could hide; these parameters hide nothing.
- compare_models: a whole model's loss, logits and every gradient on one backend against
  the specification's, in float64 or float32 (the `close` measure).
- close: the one comparison against the float64 specification (gradcheck.rel_error),
  with the error's floor at the scale of the output: rounding scales with the terms
  that were summed, not with an entry that cancelled to near zero (the key part of a
  qkv bias gradient is zero in exact arithmetic and ~1e-17 in float64). float64:
  floor 1e-3 of the largest entry, tolerance 1e-10 (only the order of sums differs).
  float32 against the float64 reference: floor the largest entry, tolerance 1e-4
  (float32 keeps 7 digits; sums over up to ~1e3 terms lose two or three of them).
"""

import numpy as np
import pytest
from gradcheck import rel_error

from tinyvit import ViT
from tinyvit.backend import backend_names, get_backend

FLOAT64_TOL = 1e-10
FLOAT32_TOL = 1e-4


def _param(name):
    try:
        get_backend(name)
    except RuntimeError as e:
        return pytest.param(name, marks=pytest.mark.skip(reason=str(e)))
    return pytest.param(name)


BACKENDS = [_param(name) for name in backend_names()]
FAST_BACKENDS = [p for p in BACKENDS if p.values[0] != "numpy"]  # the versions checked against the specification


def perturbed_params(cfg, seed: int = 1, scale: float = 0.5) -> dict[str, np.ndarray]:
    """float64 parameters of `cfg`: the initial ones plus N(0, scale) noise."""
    rng = np.random.default_rng(seed)
    params = ViT(cfg, seed=0, dtype=np.float64).numpy_params()
    return {k: v + rng.normal(0.0, scale, size=v.shape) for k, v in params.items()}


def batch(cfg, seed: int = 0, size: int = 3):
    """Seeded float64 images (size, S, S, C) and labels."""
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((size, cfg.image_size, cfg.image_size, cfg.channels))
    return images, rng.integers(0, cfg.num_classes, size=size)


def error(got, want, dtype) -> float:
    """rel_error against the float64 reference, with the floor `close` explains."""
    want = np.asarray(want, dtype=np.float64)
    scale = max(float(np.max(np.abs(want), initial=0.0)), 1e-30)
    return rel_error(got, want, floor=scale if dtype == np.float32 else 1e-3 * scale)


def close(got, want, dtype, tol=None) -> bool:
    return error(got, want, dtype) <= (tol or (FLOAT32_TOL if dtype == np.float32 else FLOAT64_TOL))


def compare_models(backend, cfg, dtype=np.float64, size: int = 3, smoothing: float = 0.1) -> None:
    """Assert that a ViT of `cfg` on `backend` gives the specification's loss, logits and every
    gradient (perturbed parameters, one seeded batch of `size` images, label smoothing)."""
    params = perturbed_params(cfg)
    images, labels = batch(cfg, size=size)
    want_loss, want_grads, want_logits = ViT(cfg, dtype=np.float64, params=params).loss_and_grads(
        images, labels, smoothing, return_logits=True)  # fmt: skip
    model = ViT(cfg, dtype=dtype, backend=backend, params=params)
    ops = model.backend
    loss, grads, logits = model.loss_and_grads(images, labels, smoothing, return_logits=True)
    assert close(float(loss), float(want_loss), dtype), f"loss {float(loss)} against {float(want_loss)}"
    assert close(np.asarray(ops.to_numpy(logits), np.float64), want_logits, dtype), "logits off the specification"
    assert list(grads) == list(want_grads), "gradients must come in the parameters' order"
    got = {k: np.asarray(ops.to_numpy(g), np.float64) for k, g in grads.items()}
    bad = {k: f"{error(got[k], w, dtype):.2e}" for k, w in want_grads.items() if not close(got[k], w, dtype)}
    assert not bad, f"gradients off the specification: {bad}"

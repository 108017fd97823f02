"""AdamW with decoupled weight decay, the learning-rate schedule and gradient clipping.

`adamw_update`, `sum_of_squares` and `scale_` are the NumPy specification of
the optimiser ops every backend implements; `AdamW` drives whichever backend's
versions over all of a model's parameters.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np


class AdamWStep(NamedTuple):
    """The scalars of one AdamW step for one parameter."""

    lr: float
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    step: int  # 1-based, for the bias corrections


def adamw_update(param, grad, m, v, hp):
    """One AdamW step, in place on param, m and v (Loshchilov & Hutter, decoupled decay).

    param <- param - lr * wd * param          (decay, independent of the gradient)
    m <- b1 m + (1 - b1) g,  v <- b2 v + (1 - b2) g^2
    param <- param - lr * mhat / (sqrt(vhat) + eps), with mhat, vhat bias-corrected.
    """
    param *= 1.0 - hp.lr * hp.weight_decay
    m *= hp.beta1
    m += (1.0 - hp.beta1) * grad
    v *= hp.beta2
    v += (1.0 - hp.beta2) * grad * grad
    mhat = m / (1.0 - hp.beta1**hp.step)
    vhat = v / (1.0 - hp.beta2**hp.step)
    param -= (hp.lr * mhat / (np.sqrt(vhat) + hp.eps)).astype(param.dtype, copy=False)


def sum_of_squares(arrays):
    """sum over all arrays of sum(a^2), in float64: the square of the global norm."""
    return float(sum(np.dot(a.ravel().astype(np.float64), a.ravel().astype(np.float64)) for a in arrays))


def scale_(arrays, factor):
    """Multiply every array by factor, in place."""
    for a in arrays:
        a *= factor


def no_decay(name: str) -> bool:
    """Biases, norms, the class token and the position embedding are not decayed."""
    return name.endswith(".bias") or ".norm" in name or name.startswith("norm.") or name in ("cls_token", "pos_embed")


def lr_at(step: int, base_lr: float, warmup_steps: int, total_steps: int, min_lr: float = 0.0) -> float:
    """Linear warmup from 0 to base_lr over warmup_steps, then cosine decay to min_lr at total_steps.

    `step` counts from 1 (the first update)."""
    if warmup_steps > 0 and step <= warmup_steps:
        return base_lr * step / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    t = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * t))


class AdamW:
    """AdamW over a model's parameters, with global-norm clipping, on the model's backend.

    The moments live beside the parameters (on the device for `cuda`);
    `state_dict` / `load_state_dict` move them to and from NumPy for checkpoints.
    """

    def __init__(self, model, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05, clip_norm=1.0):
        self.model = model
        self.backend = model.backend
        self.lr, self.betas, self.eps = lr, betas, eps
        self.weight_decay, self.clip_norm = weight_decay, clip_norm
        self.step_count = 0
        self.m = {k: self.backend.zeros_like(p) for k, p in model.params.items()}
        self.v = {k: self.backend.zeros_like(p) for k, p in model.params.items()}

    def clip(self, grads) -> float:
        """Scale grads in place so their global norm is at most clip_norm; returns the norm before."""
        norm = math.sqrt(self.backend.sum_of_squares(list(grads.values())))
        if self.clip_norm and norm > self.clip_norm:
            self.backend.scale_(list(grads.values()), self.clip_norm / (norm + 1e-6))
        return norm

    def step(self, grads, lr=None) -> float:
        """Clip, then update every parameter in place. Returns the gradient norm before clipping.

        A non-finite gradient norm raises FloatingPointError before any parameter or moment changes."""
        norm = self.clip(grads)
        if not math.isfinite(norm):
            raise FloatingPointError(f"gradient norm is {norm}; no parameter was updated")
        self.step_count += 1
        lr = self.lr if lr is None else lr
        b1, b2 = self.betas
        for name, p in self.model.params.items():
            wd = 0.0 if no_decay(name) else self.weight_decay
            hp = AdamWStep(lr, b1, b2, self.eps, wd, self.step_count)
            self.backend.adamw_update(p, grads[name], self.m[name], self.v[name], hp)
        return norm

    def state_dict(self) -> dict:
        out = {"step": np.int64(self.step_count)}
        for k in self.m:
            out[f"m/{k}"] = self.backend.to_numpy(self.m[k])
            out[f"v/{k}"] = self.backend.to_numpy(self.v[k])
        return out

    def load_state_dict(self, state: dict) -> None:
        for k in self.m:
            for moment, store in (("m", self.m), ("v", self.v)):
                arr = np.asarray(state[f"{moment}/{k}"])
                if arr.shape != tuple(store[k].shape):
                    raise ValueError(f"optimizer state {moment}/{k} has shape {arr.shape}, expected {tuple(store[k].shape)}")
                store[k] = self.backend.asarray(arr, self.model.dtype)
        self.step_count = int(state["step"])

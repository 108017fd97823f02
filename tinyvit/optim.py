"""AdamW with decoupled weight decay, SGD with momentum, the learning-rate schedule and gradient clipping.

The optimiser is written as pure functions over dicts of arrays, so that one
training step can be compiled as a whole (the `jax` backend does):

    grads, norm = clip_by_global_norm(ops, grads, clip_norm)
    params, state = adamw_apply(ops, params, grads, state, hp)

`adamw_update`, `sum_of_squares` and `scale` are the NumPy specification of the
per-array ops every backend implements; nothing writes into its inputs. The
gradient norm stays a backend scalar; callers make it a Python float where they
check or print it. `AdamW` drives these functions for a model on a host backend.

SGD with momentum (`sgd_apply`, `SGD`) is what the paper fine-tunes with. It is
written with the backend's `add` and `scale`, which every backend has, so it
needs no kernel of its own.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .layers.xp import accumulator_dtype, namespace


class AdamWStep(NamedTuple):
    """The scalars of one AdamW step for one parameter."""

    lr: float
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    step: int  # 1-based, for the bias corrections


class AdamWHyper(NamedTuple):
    """The settings of AdamW shared by every parameter."""

    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.05


class AdamWState(NamedTuple):
    """Where the optimiser is: the number of steps taken and both moments of every parameter."""

    step: int
    m: dict
    v: dict


def adamw_update(param, grad, m, v, hp):
    """One AdamW step (Loshchilov & Hutter, decoupled decay) -> new (param, m, v).

    param <- param - lr * wd * param          (decay, independent of the gradient)
    m <- b1 m + (1 - b1) g,  v <- b2 v + (1 - b2) g^2
    param <- param - lr * mhat / (sqrt(vhat) + eps), with mhat, vhat bias-corrected.
    """
    xp = namespace(param)
    m = hp.beta1 * m + (1.0 - hp.beta1) * grad
    v = hp.beta2 * v + (1.0 - hp.beta2) * grad * grad
    mhat = m / (1.0 - hp.beta1**hp.step)
    vhat = v / (1.0 - hp.beta2**hp.step)
    new = param * (1.0 - hp.lr * hp.weight_decay) - hp.lr * mhat / (xp.sqrt(vhat) + hp.eps)
    dtype = param.dtype  # a traced step count or rate must not widen float32 state
    return new.astype(dtype, copy=False), m.astype(dtype, copy=False), v.astype(dtype, copy=False)


def sum_of_squares(arrays):
    """sum over all arrays of sum(a^2), accumulated in float64 where there is one: the squared global norm."""
    xp = namespace(*arrays)
    acc = accumulator_dtype(xp)
    return sum(xp.vdot(a.ravel().astype(acc), a.ravel().astype(acc)) for a in arrays)


def scale(arrays, factor):
    """Every array times factor (a Python float or a scalar of the arrays' kind), as new arrays."""
    return [(a * factor).astype(a.dtype, copy=False) for a in arrays]


def no_decay(name: str) -> bool:
    """Biases, norms, the class token and the position embeddings (also relative) are not decayed."""
    return (name.endswith((".bias", ".rel_pos")) or ".norm" in name or name.startswith("norm.")
            or name in ("cls_token", "pos_embed"))  # fmt: skip


def lr_at(step: int, base_lr: float, warmup_steps: int, total_steps: int, min_lr: float = 0.0, hold: int = 0) -> float:
    """Linear warmup from 0 to base_lr over warmup_steps, base_lr held until step `hold` (if it is
    later), then cosine decay to min_lr at total_steps.

    `step` counts from 1 (the first update)."""
    if warmup_steps > 0 and step <= warmup_steps:
        return base_lr * step / warmup_steps
    start = max(warmup_steps, hold)
    decay_steps = max(1, total_steps - start)
    t = min(1.0, max(0.0, step - start) / decay_steps)
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * t))


# -- the whole optimiser, as pure functions over name -> array dicts ------------------------------


def global_norm(ops, grads: dict):
    """sqrt(sum of every gradient's squares), a backend scalar."""
    return namespace(*grads.values()).sqrt(ops.sum_of_squares(list(grads.values())))


def clip_by_global_norm(ops, grads: dict, clip_norm: float):
    """Scale all gradients together so their global norm is at most clip_norm (0: no clipping).

    Returns (grads, norm before clipping). The factor min(1, clip / (norm + 1e-6)) is
    computed without a branch on the norm, so it also runs inside a compiled step."""
    norm = global_norm(ops, grads)
    if not clip_norm:
        return grads, norm
    factor = namespace(norm).minimum(1.0, clip_norm / (norm + 1e-6))
    return dict(zip(grads, ops.scale(list(grads.values()), factor))), norm


def adamw_init(ops, params: dict) -> AdamWState:
    """Step 0 and zero moments beside each parameter (on the device for `cuda`)."""
    return AdamWState(0, {k: ops.zeros_like(p) for k, p in params.items()}, {k: ops.zeros_like(p) for k, p in params.items()})


def adamw_apply(ops, params: dict, grads: dict, state: AdamWState, lr, hp: AdamWHyper):
    """One AdamW step of every parameter -> (new params, new state); the inputs are unchanged."""
    step = state.step + 1
    new_params, m, v = {}, {}, {}
    for name, p in params.items():
        wd = 0.0 if no_decay(name) else hp.weight_decay
        one = AdamWStep(lr, hp.beta1, hp.beta2, hp.eps, wd, step)
        new_params[name], m[name], v[name] = ops.adamw_update(p, grads[name], state.m[name], state.v[name], one)
    return new_params, AdamWState(step, m, v)


class AdamW:
    """AdamW over a model's parameters, with global-norm clipping, on the model's backend.

    Each `step` replaces model.params with the updated arrays. The moments live beside
    the parameters (on the device for `cuda`); `state_dict` / `load_state_dict` move
    them to and from NumPy for checkpoints.
    """

    def __init__(self, model, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05, clip_norm=1.0):
        self.model = model
        self.backend = model.backend
        self.lr, self.clip_norm = lr, clip_norm
        self.hyper = AdamWHyper(betas[0], betas[1], eps, weight_decay)
        self.state = adamw_init(self.backend, model.params)

    @property
    def step_count(self) -> int:
        return int(self.state.step)

    def step(self, grads, lr=None) -> float:
        """Clip, then update every parameter. Returns the gradient norm before clipping, a float.

        A non-finite gradient norm raises FloatingPointError before any parameter or moment changes."""
        grads, norm = clip_by_global_norm(self.backend, grads, self.clip_norm)
        norm = float(norm)
        if not math.isfinite(norm):
            raise FloatingPointError(f"gradient norm is {norm}; no parameter was updated")
        lr = self.lr if lr is None else lr
        self.model.params, self.state = adamw_apply(self.backend, self.model.params, grads, self.state, lr, self.hyper)
        return norm

    def state_dict(self) -> dict:
        out = {"step": np.int64(self.state.step)}
        for k in self.state.m:
            out[f"m/{k}"] = self.backend.to_numpy(self.state.m[k])
            out[f"v/{k}"] = self.backend.to_numpy(self.state.v[k])
        return out

    def load_state_dict(self, state: dict) -> None:
        moments = {"m": dict(self.state.m), "v": dict(self.state.v)}
        for k in self.state.m:
            for moment, store in moments.items():
                arr = np.asarray(state[f"{moment}/{k}"])
                if arr.shape != tuple(store[k].shape):
                    raise ValueError(f"optimizer state {moment}/{k} has shape {arr.shape}, expected {tuple(store[k].shape)}")
                store[k] = self.backend.asarray(arr, self.model.dtype)
        self.state = AdamWState(int(state["step"]), moments["m"], moments["v"])


# -- SGD with momentum: the paper's fine-tuning optimiser ------------------------------------------


class SGDState(NamedTuple):
    """The number of steps taken and the momentum buffer of every parameter."""

    step: int
    momentum: dict


def sgd_init(ops, params: dict) -> SGDState:
    return SGDState(0, {k: ops.zeros_like(p) for k, p in params.items()})


def sgd_apply(ops, params: dict, grads: dict, state: SGDState, lr, momentum: float = 0.9, weight_decay: float = 0.0):
    """One step of SGD with (heavy-ball) momentum -> (new params, new state); the inputs are unchanged.

        g <- g + wd * p           (only with weight_decay, and not on biases, norms, embeddings)
        buf <- momentum * buf + g
        p <- p - lr * buf
    as flax's Momentum optimiser (the official fine-tuning code) and torch.optim.SGD do it."""
    new_params, bufs = {}, {}
    for name, p in params.items():
        g = grads[name]
        if weight_decay and not no_decay(name):
            g = ops.add(g, ops.scale([p], weight_decay)[0])
        buf = ops.add(ops.scale([state.momentum[name]], momentum)[0], g)
        new_params[name] = ops.add(p, ops.scale([buf], -lr)[0])
        bufs[name] = buf
    return new_params, SGDState(state.step + 1, bufs)


class SGD:
    """SGD with momentum over a model's parameters, with global-norm clipping; the interface of AdamW."""

    def __init__(self, model, lr=0.01, momentum=0.9, weight_decay=0.0, clip_norm=1.0):
        self.model = model
        self.backend = model.backend
        self.lr, self.momentum, self.weight_decay, self.clip_norm = lr, momentum, weight_decay, clip_norm
        self.state = sgd_init(self.backend, model.params)

    @property
    def step_count(self) -> int:
        return int(self.state.step)

    def step(self, grads, lr=None) -> float:
        """Clip, then update every parameter. Returns the gradient norm before clipping, a float."""
        grads, norm = clip_by_global_norm(self.backend, grads, self.clip_norm)
        norm = float(norm)
        if not math.isfinite(norm):
            raise FloatingPointError(f"gradient norm is {norm}; no parameter was updated")
        lr = self.lr if lr is None else lr
        self.model.params, self.state = sgd_apply(self.backend, self.model.params, grads, self.state, lr,
                                                  self.momentum, self.weight_decay)  # fmt: skip
        return norm

    def state_dict(self) -> dict:
        out = {"step": np.int64(self.state.step)}
        for k, buf in self.state.momentum.items():
            out[f"momentum/{k}"] = self.backend.to_numpy(buf)
        return out

    def load_state_dict(self, state: dict) -> None:
        bufs = {}
        for k, old in self.state.momentum.items():
            if f"momentum/{k}" not in state:
                raise ValueError(f"optimizer state has no momentum/{k}: not written by SGD")
            arr = np.asarray(state[f"momentum/{k}"])
            if arr.shape != tuple(old.shape):
                raise ValueError(f"optimizer state momentum/{k} has shape {arr.shape}, expected {tuple(old.shape)}")
            bufs[k] = self.backend.asarray(arr, self.model.dtype)
        self.state = SGDState(int(state["step"]), bufs)

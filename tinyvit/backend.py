"""The backend registry: one name -> the functions a model runs on.

`numpy` is the first backend and the specification (tinyvit.layers and the
update rules in tinyvit.optim). `numba` (compiled CPU kernels) and `cuda`
(numba.cuda GPU kernels) live in `tinyvit.kernels` (the repository's `kernels/`
folder) and are loaded only when asked for. The model, the trainer, the tests and the lessons
all ask `get_backend(name)`; nothing picks a kernel any other way.

The contract is functional, so that a backend may compile a whole training
step (the `jax` backend does):
- every layer op follows the forward/backward convention of tinyvit.layers,
  `x_forward(...) -> (out, cache)` and `x_backward(dout, cache) -> grads`, and
  returns fresh arrays;
- the optimiser ops return new arrays instead of writing into their inputs;
- the loss and the squared gradient norm are backend scalars (a NumPy scalar,
  a 0-d JAX array); callers make them Python floats only where they check,
  print or log them.
Arrays are whatever the backend keeps them in (NumPy arrays on the CPU,
device arrays for `cuda`, JAX arrays for `jax`); `asarray` and `to_numpy`
cross that boundary.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
from collections.abc import Callable
from dataclasses import dataclass, fields


@dataclass(frozen=True)
class Backend:
    """The operations a ViT needs, as one backend implements them."""

    name: str
    # -- arrays: host <-> backend, and the residual add
    asarray: Callable  # (np.ndarray, dtype) -> backend array
    to_numpy: Callable  # backend array -> np.ndarray
    zeros_like: Callable  # backend array -> zeros of the same shape and dtype
    add: Callable  # (a, b) -> a + b, a fresh array
    # -- layers, forward -> (out, cache), backward(dout, cache) -> gradients
    patchify_forward: Callable  # (images (B, H, W, C), P) -> ((B, N-1, P*P*C), cache)
    patchify_backward: Callable  # (dpatches, cache) -> dimages; the model never needs it (images carry no gradient)
    linear_forward: Callable
    linear_backward: Callable
    linear_gelu_forward: Callable
    linear_gelu_backward: Callable
    embed_forward: Callable
    embed_backward: Callable
    layernorm_forward: Callable
    layernorm_backward: Callable
    # a residual add and the LayerNorm after it, fused; the cache is LayerNorm's of s = x + h
    add_layernorm_forward: Callable  # (x, h, weight, bias) -> ((s, LayerNorm(s)), cache)
    add_layernorm_backward: Callable  # ((ds, dy), cache) -> (ds + LayerNorm's dx, dweight, dbias)
    attention_forward: Callable
    attention_backward: Callable
    attention_probs: Callable  # attention cache -> probs (B, H, N, N)
    class_token_forward: Callable
    class_token_backward: Callable
    # -- the options of the official checkpoints (ViTConfig.gelu, .classifier, .pre_logits)
    linear_gelu_tanh_forward: Callable  # fc1 with GELU in its tanh form
    linear_gelu_tanh_backward: Callable
    pos_embed_forward: Callable  # (x (B, N, D), pos_embed (N, D)): the embedding without a class token
    pos_embed_backward: Callable
    token_mean_forward: Callable  # (B, N, D) -> (B, D), global average pooling
    token_mean_backward: Callable
    tanh_forward: Callable  # the activation of pre_logits
    tanh_backward: Callable
    attention_bias_forward: Callable  # (qkv, bias (H, N, N), heads) -> (out, cache): scores + bias
    attention_bias_backward: Callable  # (dout, cache) -> (dqkv, dbias)
    rel_pos_bias_forward: Callable  # (table (H, 2K+1, 2K+1), grid, class_token) -> (bias (H, N, N), cache)
    rel_pos_bias_backward: Callable  # (dbias, cache) -> dtable
    cross_entropy_forward: Callable  # (logits, labels, smoothing) -> (loss, a backend scalar; cache)
    cross_entropy_backward: Callable  # (dloss, cache) -> dlogits
    count_correct: Callable  # (logits (B, K), labels (B,)) -> how many argmaxes equal the label, a backend scalar
    # -- the optimiser
    adamw_update: Callable  # (param, grad, m, v, AdamWStep) -> new (param, m, v)
    sum_of_squares: Callable  # list of arrays -> backend scalar, the squared global gradient norm
    scale: Callable  # (list of arrays, factor) -> list of new arrays (gradient clipping)
    # -- optional: set the thread count of this backend's pools
    set_threads: Callable = lambda n: None
    # -- optional: wait for queued device work (for timing); `cuda` waits for the GPU
    synchronize: Callable = lambda: None
    # -- optional: compile a pure function of arrays (the `jax` backend: jax.jit)
    jit: Callable = lambda f: f
    # -- optional: called when a model of this dtype is built (the `jax` backend turns on float64)
    use_dtype: Callable = lambda dtype: None

    def __post_init__(self):
        missing = [f.name for f in fields(self) if getattr(self, f.name) is None]
        if missing:
            raise ValueError(f"backend {self.name!r} lacks the operations {missing}")


# name -> "module:attribute" that holds a Backend, or a callable returning one
_LOADERS: dict[str, str | Callable[[], Backend]] = {
    "numpy": "tinyvit.numpy_backend:BACKEND",
    "numba": "tinyvit.kernels.numba_backend:BACKEND",
    "cuda": "tinyvit.kernels.cuda_backend:BACKEND",
    "jax": "tinyvit.jax_backend:BACKEND",
}
_LOADED: dict[str, Backend] = {}
# Fastest first: the default backend is the first of these that loads and runs here
# (`jax` is chosen by name: it is for scale-out, and the trainer runs it as one compiled step).
PREFERENCE = ("cuda", "numba", "numpy")
# A default must be proven: `cuda` becomes the default on a machine with a GPU once (1) the whole
# CUDA test suite has passed on a real GPU and (2) it trains faster there than `numba` on that
# machine's CPU cores, both recorded in docs/benchmarks.md. (1) holds: the suite, the
# `count_correct` kernel's test included, passed on an NVIDIA H200 on 2026-11-27. (2) does not yet:
# on that machine's 16 cores `numba` trained the recipe's model faster than `cuda` on the GPU.
# Until both hold the default there is `numba`, and `backend_hint` tells the user that
# `--backend cuda` exists.
CUDA_PROVEN = False


def register_backend(name: str, loader: str | Callable[[], Backend]) -> None:
    """Add (or replace) a backend: `loader` is "module:attribute" or a function returning a Backend."""
    _LOADERS[name] = loader
    _LOADED.pop(name, None)


def backend_names() -> list[str]:
    return list(_LOADERS)


@contextlib.contextmanager
def collector_paused():
    """Python's cycle collector off for the block, then back as it was.

    Loading a compiled backend (numba, JAX) makes about 100,000 long-lived objects; while they are
    being made the collector would walk the growing heap again and again (a fifth of a second of
    the numba backend's warm start) and free nothing. Paused, it frees nothing less: the objects
    stay tracked and the next collection after the block sees them."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


def get_backend(name: str | Backend) -> Backend:
    """The Backend called `name` (loaded on first use)."""
    if isinstance(name, Backend):
        return name
    if name not in _LOADERS:
        raise ValueError(f"unknown backend {name!r}; expected one of {backend_names()}")
    if name not in _LOADED:
        loader = _LOADERS[name]
        try:
            with collector_paused():
                if callable(loader):
                    backend = loader()
                else:
                    module, attr = loader.split(":")
                    backend = getattr(importlib.import_module(module), attr)
        except ImportError as e:
            raise RuntimeError(f"backend {name!r} could not be loaded: {e}") from e
        if not isinstance(backend, Backend):
            raise TypeError(f"loader for backend {name!r} gave {type(backend).__name__}, expected Backend")
        _LOADED[name] = backend
    return _LOADED[name]


def is_available(name: str) -> bool:
    """Whether backend `name` loads and can run on this machine (for `cuda`: a real GPU)."""
    if name == "cuda":
        try:
            from numba import cuda

            if _simulating() or not cuda.is_available():
                return False
        except ImportError:
            return False
    try:
        get_backend(name)
    except (RuntimeError, ValueError, TypeError):  # not installed, or not a usable backend
        return False
    return True


def _simulating() -> bool:
    import os

    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") == "1"


def default_backend() -> str:
    """The fastest proven backend that runs here: numba, else numpy (and cuda first, on a machine
    with a GPU, once CUDA_PROVEN)."""
    for name in PREFERENCE:
        if name == "cuda" and not CUDA_PROVEN:
            continue
        if is_available(name):
            return name
    return "numpy"


def default_backend_description() -> str:
    """What default_backend chooses, in words (for --help)."""
    return ("cuda on a machine with an NVIDIA GPU, else " if CUDA_PROVEN else "") + "numba, else numpy"


def backend_hint() -> str | None:
    """One line for a user left on the default backend while a faster one runs here, else None."""
    if not CUDA_PROVEN and is_available("cuda"):
        return ("hint: this machine has an NVIDIA GPU; --backend cuda runs on it (not the default: its kernels "
                "pass their tests on a GPU but are not yet faster than numba on a many-core CPU)")  # fmt: skip
    return None

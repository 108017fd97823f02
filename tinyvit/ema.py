"""An exponential moving average (EMA) of the parameters, the trainer's --ema.

After every optimiser step t (counted from 1)

    ema = d_t ema + (1 - d_t) params,   d_t = min(decay, (1 + t) / (10 + t))

The ramp (1 + t) / (10 + t), TensorFlow's ExponentialMovingAverage with
num_updates, keeps the first steps' average from clinging to the random
initialisation: d_1 = 0.18, d_90 = 0.91, and `decay` itself from t = (10 decay - 1) /
(1 - decay) on (about 9,000 steps for 0.999). The average is evaluated and
checkpointed beside the trained parameters; it never feeds back into training.

`ema_update` is a pure function of arrays: it reads the backend's `scale` and `add`
only, so it runs unchanged on NumPy, Numba, CUDA device arrays and (sharded) JAX
arrays, and returns new arrays rather than writing into the old ones.
"""

from __future__ import annotations


def ema_decay(step: int, decay: float) -> float:
    """d_t of optimiser step `step` (from 1): the ramp, capped at `decay`."""
    return min(decay, (1.0 + step) / (10.0 + step))


def ema_start(ops, params: dict) -> dict:
    """A fresh average: new arrays equal to params (never the same buffers, which a step may reuse)."""
    names = list(params)
    return dict(zip(names, ops.scale([params[k] for k in names], 1.0)))


def ema_update(ops, ema: dict, params: dict, decay: float) -> dict:
    """d ema + (1 - d) params for every parameter, as new arrays; `decay` is d (see ema_decay)."""
    names = list(ema)
    kept = ops.scale([ema[k] for k in names], decay)
    fresh = ops.scale([params[k] for k in names], 1.0 - decay)
    return {k: ops.add(a, b) for k, a, b in zip(names, kept, fresh)}

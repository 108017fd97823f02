"""The AdamW update on the GPU: one thread per parameter element, into fresh arrays.

One variant: the whole update of tinyvit.optim.adamw_update for one element in
one thread (decay, both moments, bias corrections, the step), so param, grad, m
and v are each read once and param, m, v written once, where the NumPy version
makes a pass over memory per line. The bias corrections 1 - beta^step are the
same for every element and are computed once on the host.

The gradient norm and clipping, the other optimiser ops, are
cuda_reduce.sum_of_squares and cuda_elementwise.scale.
"""

import math

from numba import cuda

from . import cuda_common as common


@cuda.jit
def _adamw_kernel(param, grad, m, v, lr, beta1, beta2, eps, decay, bc1, bc2, out_param, out_m, out_v):
    """new param = param * decay - lr * mhat / (sqrt(vhat) + eps); new m, v the updated moments."""
    i = cuda.grid(1)
    if i >= param.size:
        return
    g = grad[i]
    mi = beta1 * m[i] + (1.0 - beta1) * g
    vi = beta2 * v[i] + (1.0 - beta2) * g * g
    out_m[i] = mi
    out_v[i] = vi
    mhat = mi / bc1
    vhat = vi / bc2
    out_param[i] = param[i] * decay - lr * mhat / (math.sqrt(vhat) + eps)


def adamw_update(param, grad, m, v, hp):
    """One AdamW step -> new device arrays (param, m, v) (hp: tinyvit.optim.AdamWStep)."""
    common.check_device("param", param)
    for name, a in (("grad", grad), ("m", m), ("v", v)):
        common.check_device(name, a, dtype=param.dtype)
        common.check_same_shape("param", param, name, a)
    if hp.step < 1:
        raise ValueError(f"AdamW step counts from 1, got {hp.step}")
    bc1, bc2 = 1.0 - hp.beta1**hp.step, 1.0 - hp.beta2**hp.step
    out = tuple(common.empty(param.shape, param.dtype) for _ in range(3))
    blocks, threads = common.element_grid(param.size)
    _adamw_kernel[blocks, threads](
        common.flat(param), common.flat(grad), common.flat(m), common.flat(v),
        float(hp.lr), float(hp.beta1), float(hp.beta2), float(hp.eps),
        1.0 - float(hp.lr) * float(hp.weight_decay), bc1, bc2, *(common.flat(o) for o in out),
    )  # fmt: skip
    return out

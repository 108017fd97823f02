"""Scale-out with JAX: the whole training step as one XLA program over a mesh of devices.

    mesh = data_mesh()                            # every device JAX sees, one axis called "data"
    step = JaxStep(model, mesh, hyper, clip_norm, label_smoothing, shard_params=False)
    result = step(images, labels, lr)             # this process's rows of the global batch

What runs is the code a learner reads: `tinyvit.model.loss_and_grads` (the
hand-written forward and backward of tinyvit.layers) and the optimiser of
tinyvit.optim (global-norm clipping, AdamW), traced once and compiled by XLA
into one program. Nothing here is a second copy of them, and no collective is
written by hand:
- the batch is sharded along the mesh's `data` axis, each device holding B/n rows;
- parameters and AdamW moments are replicated (default), or, with
  shard_params=True, each is split along its largest axis that the device count
  divides (FSDP style: each device stores 1/n of it);
- XLA's sharding propagation sees that a weight gradient sums over the sharded
  rows and inserts the all-reduce (or reduce-scatter, for sharded parameters)
  itself. The mesh axis is `Auto` for that reason: the specification carries no
  sharding annotations, and XLA chooses where the collectives go.
The parameter and moment buffers are donated to the step, so an update
reuses their memory instead of holding two copies.

Multi-host (a TPU pod slice, several GPU hosts, a SLURM job): every process
calls `initialize` first, sees all devices of all processes in the mesh, and
feeds only its own rows of each global batch (`global_batch`); only process 0
writes files. The checkpoint is the same .npz as for every backend.
"""

from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from .errors import UsageError
from .model import ViT, loss_and_grads
from .optim import AdamWHyper, AdamWState, adamw_apply, adamw_init, clip_by_global_norm
from .train import StepResult

DATA = "data"  # the one mesh axis: the batch is split along it


def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None) -> None:
    """Join a multi-process JAX job (jax.distributed.initialize), once, before any other JAX call.

    With coordinator "HOST:PORT", num_processes and process_id given, those are used.
    Without them, JAX detects the job itself on Cloud TPU VMs and under SLURM (srun);
    elsewhere a single process needs no initialisation and this does nothing."""
    if coordinator is not None:
        if num_processes is None or process_id is None:
            raise UsageError("--coordinator needs --num-processes and --process-id as well")
        if not 0 <= process_id < num_processes:
            raise UsageError(f"--process-id must be in [0, {num_processes}), got {process_id}")
        jax.distributed.initialize(coordinator, num_processes, process_id)
    elif _detected_cluster():
        jax.distributed.initialize()


def _detected_cluster() -> bool:
    """A SLURM job step of several tasks, or a Cloud TPU VM of several hosts."""
    slurm = int(os.environ.get("SLURM_NTASKS", os.environ.get("SLURM_NPROCS", "1"))) > 1 and "SLURM_STEP_ID" in os.environ
    tpu_hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    return slurm or len([h for h in tpu_hosts.split(",") if h]) > 1


def data_mesh(num_devices: int | None = None) -> jax.sharding.Mesh:
    """A one-axis mesh ("data") over the first num_devices devices (default: all, of all processes)."""
    available = jax.device_count()
    n = available if num_devices is None else num_devices
    if not 1 <= n <= available:
        raise UsageError(f"--devices must be in [1, {available}] (the devices JAX sees here), got {num_devices}")
    if jax.process_count() > 1 and n != available:
        raise UsageError(f"--devices must be all {available} devices when running {jax.process_count()} processes")
    return jax.make_mesh((n,), (DATA,), axis_types=(AxisType.Auto,), devices=jax.devices()[:n])


def param_spec(shape: tuple[int, ...], n: int, shard: bool) -> P:
    """Replicated, or split along the largest axis that n divides (FSDP style); replicated if none does."""
    if not shard or n == 1:
        return P()
    axes = [a for a in np.argsort(shape)[::-1] if shape[a] % n == 0]
    if not axes:
        return P()
    spec = [None] * len(shape)
    spec[axes[0]] = DATA
    return P(*spec)


def _train_step(cfg, ops, hyper, clip_norm, label_smoothing, params, state, images, labels, lr):
    """forward, hand-written backward, clipping, AdamW: the pure function that XLA compiles.

    A non-finite gradient norm leaves parameters and moments as they were (the
    trainer then stops and names the step)."""
    loss, grads, logits = loss_and_grads(cfg, ops, params, images, labels, label_smoothing)
    grads, norm = clip_by_global_norm(ops, grads, clip_norm)
    new_params, new_state = adamw_apply(ops, params, grads, state, lr, hyper)
    ok = jnp.isfinite(norm) & jnp.isfinite(loss)
    keep = lambda new, old: jnp.where(ok, new, old)
    params = jax.tree.map(keep, new_params, params)
    state = jax.tree.map(keep, new_state, state)
    return params, state, StepResult(loss, norm, ops.count_correct(logits, labels))


class JaxStep:
    """One training step of a `jax` model, compiled once, sharded over a mesh.

    The same interface as the trainer's host step: `step(images, labels, lr)`
    takes this process's rows of the global batch (normalised, (b, H, W, C)) and
    returns a StepResult; `step.model.params` are the current (sharded)
    parameters; `optimizer_state()` / `load_optimizer_state()` move the AdamW
    state to and from the checkpoint's host arrays.
    """

    def __init__(self, model: ViT, mesh, hyper: AdamWHyper, clip_norm: float, label_smoothing: float,
                 shard_params: bool = False):  # fmt: skip
        if model.backend.name != "jax":
            raise ValueError(f"JaxStep needs a model on the jax backend, got {model.backend.name!r}")
        self.model, self.mesh = model, mesh
        n = mesh.devices.size
        self.param_sharding = {
            k: NamedSharding(mesh, param_spec(tuple(p.shape), n, shard_params)) for k, p in model.params.items()
        }
        self.batch_sharding = NamedSharding(mesh, P(DATA))
        replicated = NamedSharding(mesh, P())
        state_sharding = AdamWState(replicated, self.param_sharding, self.param_sharding)
        model.params = {k: self._put(p, self.param_sharding[k]) for k, p in model.params.items()}
        self.state = jax.tree.map(self._put, adamw_init(model.backend, model.params), state_sharding)
        cfg, ops = model.cfg, model.backend

        def step(params, state, images, labels, lr):
            return _train_step(cfg, ops, hyper, clip_norm, label_smoothing, params, state, images, labels, lr)

        self._step = jax.jit(
            step,
            in_shardings=(self.param_sharding, state_sharding, self.batch_sharding, self.batch_sharding, replicated),
            out_shardings=(self.param_sharding, state_sharding, StepResult(replicated, replicated, replicated)),
            donate_argnums=(0, 1),
        )  # fmt: skip

    @staticmethod
    def _put(x, sharding):
        """A host array, or a scalar, or a JAX array -> a global array laid out as `sharding`.

        Every process holds the same full value (parameters, moments), so each
        keeps just the pieces its own devices hold."""
        x = np.asarray(x) if not isinstance(x, jax.Array) else x
        return jax.make_array_from_callback(np.shape(x), sharding, lambda index: np.asarray(x[index]))

    def global_batch(self, local) -> jax.Array:
        """This process's rows -> the global batch array sharded on `data` (all processes call together)."""
        local = np.asarray(local)
        global_shape = (local.shape[0] * jax.process_count(),) + local.shape[1:]
        return jax.make_array_from_process_local_data(self.batch_sharding, local, global_shape)

    def __call__(self, images, labels, lr: float) -> StepResult:
        images = self.model.check_images(images)
        labels = self.model.check_labels(labels, images.shape[0])
        global_rows = images.shape[0] * jax.process_count()
        if global_rows % self.mesh.devices.size:
            raise UsageError(f"the global batch ({global_rows} images) must divide by the {self.mesh.devices.size} "
                             "devices it is split over: choose --batch-size or --devices to match")  # fmt: skip
        x = self.global_batch(images.astype(self.model.dtype, copy=False))
        y = self.global_batch(labels.astype(np.int32))
        lr = jnp.asarray(lr, dtype=self.model.dtype)
        self.model.params, self.state, result = self._step(self.model.params, self.state, x, y, lr)
        if not (math.isfinite(float(result.loss)) and math.isfinite(float(result.grad_norm))):
            raise FloatingPointError(f"loss is {float(result.loss)}, gradient norm {float(result.grad_norm)}; "
                                     "no parameter was updated")  # fmt: skip
        return result

    # -- host copies, for checkpoints -------------------------------------------------------

    def host_params(self) -> dict[str, np.ndarray]:
        """Every parameter gathered to the host (all processes call together)."""
        return self.model.numpy_params()

    def optimizer_state(self) -> dict:
        """The AdamW state in the checkpoint's format (AdamW.state_dict's)."""
        to_numpy = self.model.backend.to_numpy
        out = {"step": np.int64(to_numpy(self.state.step))}
        for k in self.state.m:
            out[f"m/{k}"] = to_numpy(self.state.m[k])
            out[f"v/{k}"] = to_numpy(self.state.v[k])
        return out

    def load_optimizer_state(self, state: dict) -> None:
        """Restore AdamW's step and moments from a checkpoint's host arrays (any backend wrote them)."""
        m, v = {}, {}
        for k, p in self.model.params.items():
            for name, store in (("m", m), ("v", v)):
                arr = np.asarray(state[f"{name}/{k}"])
                if arr.shape != tuple(p.shape):
                    raise ValueError(f"optimizer state {name}/{k} has shape {arr.shape}, expected {tuple(p.shape)}")
                store[k] = self._put(arr.astype(self.model.dtype), self.param_sharding[k])
        step = self._put(np.asarray(int(state["step"]), dtype=np.int32), NamedSharding(self.mesh, P()))
        self.state = AdamWState(step, m, v)


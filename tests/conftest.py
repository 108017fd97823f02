"""Shared test set-up: hypothesis profiles and the CUDA simulator switch.

- HYPOTHESIS_PROFILE=ci (what .ci/run uses) is derandomised, so a red run can be
  reproduced exactly; "dev" draws fresh examples each run.
- numba.cuda reads NUMBA_ENABLE_CUDASIM when it is first imported, so it is set
  here, before any test imports numba: on a machine without an NVIDIA GPU the
  CUDA kernels run under the simulator; with a GPU the same tests run on it.
- small_cuda_blocks: tiny launch sizes for every CUDA test, so that tiny arrays
  still span several blocks, with ragged last blocks.
"""

import os
import sys
from pathlib import Path

if "NUMBA_ENABLE_CUDASIM" not in os.environ and not Path("/dev/nvidia0").exists():
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
# JAX reads XLA_FLAGS when its CPU backend starts: 8 simulated CPU devices for the
# scale-out tests (a machine with accelerators keeps them as they are).
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", derandomize=True, deadline=None, max_examples=25, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)  # fmt: skip
settings.register_profile("dev", deadline=None, max_examples=25, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.fixture(scope="module")
def fast_simulator_barriers():
    """The CUDA simulator's threads poll each other at barriers; a short GIL switch interval
    makes a simulated kernel 5-10x faster. The CUDA test modules use it; it changes nothing on a GPU."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)
    yield
    sys.setswitchinterval(old)


@pytest.fixture
def small_cuda_blocks(monkeypatch):
    """Small launch sizes, so tiny arrays still span several blocks with ragged last blocks."""
    from tinyvit.kernels import cuda_common, cuda_matmul, cuda_reduce
    from tinyvit.kernels.cuda_matmul import Blocking

    monkeypatch.setattr(cuda_common, "ELEMENT_THREADS", 16)
    monkeypatch.setattr(cuda_common, "ROW_THREADS", 4)
    monkeypatch.setattr(cuda_reduce, "COLUMN_CHUNK_ROWS", 3)
    monkeypatch.setattr(cuda_reduce, "MAX_REDUCE_BLOCKS", 2)
    monkeypatch.setattr(cuda_matmul, "TILE", 4)
    monkeypatch.setattr(cuda_matmul, "BLOCKING", Blocking(bm=8, bn=4, bk=4, tm=2, tn=2))
    monkeypatch.setattr(cuda_matmul, "BATCHED_BLOCKING", Blocking(bm=4, bn=4, bk=2, tm=2, tn=2))

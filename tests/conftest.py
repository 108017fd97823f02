"""Shared test set-up: hypothesis profiles and the CUDA simulator switch.

- HYPOTHESIS_PROFILE=ci (what .ci/run uses) is derandomised, so a red run can be
  reproduced exactly; "dev" draws fresh examples each run.
- numba.cuda reads NUMBA_ENABLE_CUDASIM when it is first imported, so it is set
  here, before any test imports numba: on a machine without an NVIDIA GPU the
  CUDA kernels run under the simulator; with a GPU the same tests run on it.
"""

import os
import sys
from pathlib import Path

if "NUMBA_ENABLE_CUDASIM" not in os.environ and not Path("/dev/nvidia0").exists():
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"

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

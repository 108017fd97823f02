"""tinyvit keeps freed activation memory for reuse (tinyvit/memory.py): a step's fresh arrays
land on pages the process already has, not on new pages the OS must fault in and zero."""

import os
import subprocess
import sys

import pytest

from tinyvit import memory

# Allocates and writes 40 arrays of 4 MiB (a step's activations), frees them, five times over, and
# prints the page faults of one such cycle once the first has run.
CYCLES = """
import resource, sys
if sys.argv[1] == "tinyvit":
    import tinyvit
import numpy as np
def cycle():
    arrays = [np.ones(1 << 20, np.float32) for _ in range(40)]
    del arrays
cycle()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    cycle()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
"""


def faults_per_cycle(importing: str, **env) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")} | env
    out = subprocess.run([sys.executable, "-c", CYCLES, importing], capture_output=True, text=True, env=env, check=True)
    return float(out.stdout)


needs_glibc = pytest.mark.skipif(memory._mallopt() is None, reason="no glibc mallopt here (macOS, musl)")


@needs_glibc
def test_freed_memory_is_reused_after_importing_tinyvit():
    glibc = faults_per_cycle("numpy")
    kept = faults_per_cycle("tinyvit")
    # 160 MiB written per cycle: glibc's defaults fault most of it in again every cycle
    assert glibc > 5000, f"glibc's defaults faulted only {glibc:.0f} pages per cycle: this test cannot tell"
    assert kept < glibc / 20, f"with tinyvit imported: {kept:.0f} page faults per cycle against glibc's {glibc:.0f}"


@needs_glibc
def test_the_user_can_keep_glibc_defaults():
    opted_out = faults_per_cycle("tinyvit", TINYVIT_KEEP_FREED_MEMORY="0")
    users_own = faults_per_cycle("tinyvit", MALLOC_TRIM_THRESHOLD_="131072")
    assert opted_out > 5000 and users_own > 5000, (opted_out, users_own)


def test_keep_freed_memory_respects_the_opt_outs(monkeypatch):
    monkeypatch.setenv("TINYVIT_KEEP_FREED_MEMORY", "0")
    assert memory.keep_freed_memory() is False
    monkeypatch.delenv("TINYVIT_KEEP_FREED_MEMORY")
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert memory.keep_freed_memory() is False

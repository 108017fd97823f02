"""tinyvit keeps freed activation memory for reuse (tinyvit/memory.py): a step's fresh arrays
land on pages the process already has, not on new pages the OS must fault in and zero."""

import os
import subprocess
import sys

import pytest

from tinyvit import memory

# Allocates and writes `count` arrays of `mib` MiB (a step's activations), frees them, five times
# over, and prints the page faults of one such cycle once the first has run.
CYCLES = """
import resource, sys
if sys.argv[1] == "tinyvit":
    import tinyvit
import numpy as np
count, mib = int(sys.argv[2]), int(sys.argv[3])
def cycle():
    arrays = [np.ones(mib << 18, np.float32) for _ in range(count)]
    del arrays
cycle()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    cycle()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
"""


def faults_per_cycle(importing: str, count: int = 40, mib: int = 4, **env) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")} | env
    args = [sys.executable, "-c", CYCLES, importing, str(count), str(mib)]
    out = subprocess.run(args, capture_output=True, text=True, env=env, check=True)
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
def test_blocks_above_glibcs_mmap_cap_are_reused_too():
    # 48 MiB is above the 32 MiB that M_MMAP_THRESHOLD may be raised to: such blocks are each mapped
    # afresh unless M_MMAP_MAX is 0 (cifar-small's fc1 output at batch 256 is 49 MiB)
    glibc = faults_per_cycle("numpy", count=4, mib=48)
    kept = faults_per_cycle("tinyvit", count=4, mib=48)
    # (the kernel may fault such a mapping in by larger folios than 4 KiB: fewer faults, same zeroing;
    # with 2 MiB pages a cycle of 192 MiB is only ~100 faults, too few to tell the two apart)
    if glibc <= 1000:
        pytest.skip(f"glibc's defaults faulted only {glibc:.0f} times per cycle here: faults cannot tell")
    assert kept < glibc / 20, f"with tinyvit imported: {kept:.0f} page faults per cycle against glibc's {glibc:.0f}"


@needs_glibc
def test_the_user_can_keep_glibc_defaults():
    opted_out = faults_per_cycle("tinyvit", TINYVIT_KEEP_FREED_MEMORY="0")
    users_own = faults_per_cycle("tinyvit", MALLOC_TRIM_THRESHOLD_="131072")
    users_mmap = faults_per_cycle("tinyvit", count=4, mib=48, MALLOC_MMAP_MAX_="65536")
    assert opted_out > 5000 and users_own > 5000 and users_mmap > 1000, (opted_out, users_own, users_mmap)


def test_keep_freed_memory_respects_the_opt_outs(monkeypatch):
    monkeypatch.setenv("TINYVIT_KEEP_FREED_MEMORY", "0")
    assert memory.keep_freed_memory() is False
    monkeypatch.delenv("TINYVIT_KEEP_FREED_MEMORY")
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert memory.keep_freed_memory() is False
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    monkeypatch.setenv("MALLOC_MMAP_MAX_", "65536")
    assert memory.keep_freed_memory() is False

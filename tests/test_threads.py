"""The thread-pool set-up holds whatever was imported before tinyvit (tinyvit/threads.py).

Each check runs in a fresh process that imports NumPy and numba first, as users'
programs and notebooks do, and only then tinyvit: idle OpenBLAS threads must
sleep (no CPU time used while the process waits after a product), and numba's
pool must be the OpenMP layer (where numba has one), whose idle workers spin only
briefly (GOMP_SPINCOUNT) before they sleep.
"""

import os
import subprocess
import sys

CHILD = """
import time
import numpy as np
import numba
import tinyvit
from tinyvit.kernels import numba_embed

a = np.ones((600, 600), np.float32)
idle = []
for _ in range(3):
    a @ a  # wakes the OpenBLAS pool (2 threads)
    t = time.process_time()
    time.sleep(0.3)
    idle.append(time.process_time() - t)  # CPU time of every thread of this process while it waits
numba_idle = []
for _ in range(3):
    numba_embed.add(a, a)  # a parallel loop (the first starts numba's pool)
    t = time.process_time()
    time.sleep(0.3)
    numba_idle.append(time.process_time() - t)
try:
    import numba.np.ufunc.omppool  # noqa: F401
    has_omp = True
except ImportError:
    has_omp = False
print(max(idle), max(numba_idle), numba.threading_layer(), has_omp)
"""


def run_child():
    chosen = ("OPENBLAS_THREAD_TIMEOUT", "NUMBA_THREADING_LAYER", "NUMBA_THREADING_LAYER_PRIORITY", "GOMP_SPINCOUNT",
              "OMP_WAIT_POLICY")
    env = {k: v for k, v in os.environ.items() if k not in chosen}
    env["OPENBLAS_NUM_THREADS"] = "2"
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, env=env, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    idle, numba_idle, layer, has_omp = out.stdout.split()
    return float(idle), float(numba_idle), layer, has_omp == "True"


def test_pools_sleep_when_numpy_and_numba_are_imported_before_tinyvit():
    idle, numba_idle, layer, has_omp = run_child()
    # a spinning OpenBLAS thread burns ~0.1 s of CPU after each product; a sleeping one none
    assert idle < 0.03, f"OpenBLAS threads used {idle:.3f} s of CPU while idle: they spin"
    expected = "omp" if has_omp else "workqueue"
    assert layer == expected, f"numba runs the {layer!r} threading layer, expected {expected!r}"
    # GOMP_SPINCOUNT=100000: a few ms of spinning after each loop, then sleep (unbounded: 0.3 s per worker)
    assert numba_idle < 0.03, f"numba's idle workers used {numba_idle:.3f} s of CPU in 0.3 s: they spin on"


def test_set_threads_leaves_scipys_own_blas_one_thread():
    """numba's np.dot (inside the attention kernels' parallel loops) calls SciPy's BLAS: one thread."""
    import numba  # noqa: F401  (set_threads sets SciPy's BLAS when numba is loaded)
    import pytest
    import scipy
    from threadpoolctl import threadpool_info

    from tinyvit.threads import POOL_BLAS_PATHS, set_threads

    set_threads(2)
    scipy_dir = os.path.dirname(os.path.abspath(scipy.__file__))
    pools = {os.path.abspath(p["filepath"]): p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"}
    own = {f: n for f, n in pools.items() if f.startswith((scipy_dir + os.sep, scipy_dir + ".libs" + os.sep))}
    others = {f: n for f, n in pools.items() if f not in own and os.path.realpath(f) not in POOL_BLAS_PATHS}
    try:
        if not own:
            pytest.skip("SciPy has no BLAS of its own here (it shares NumPy's), so there is nothing to set")
        assert all(n == 1 for n in own.values()), f"SciPy's own BLAS: {own}"
        assert all(n == 2 for n in others.values()), f"the other BLAS pools should have 2 threads: {others}"
    finally:
        set_threads(None)

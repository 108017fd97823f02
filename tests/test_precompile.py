"""The helper process that compiles the step's kernels on an empty cache (kernels/precompile.py).

One cold compile in all (about 30 s on 2 cores): the helper fills an empty cache, and then a
training step in a fresh process finds every kernel it calls there and compiles none."""

import os
import subprocess
import sys

import numba.core.registry
import pytest
from tinyvit.kernels import precompile


def test_every_listed_kernel_exists_and_its_types_read_back_as_written():
    lines = precompile.read_list()
    assert len(lines) > 20
    for line in lines:
        dispatcher, sig = precompile.parse_line(line)
        assert isinstance(dispatcher, numba.core.registry.CPUDispatcher), line
        assert line.endswith(": " + "; ".join(precompile.type_text(t) for t in sig)), line


@pytest.mark.parametrize("text", ["Array(float32, 2, 'C')", "Array(float64, 3, 'A', readonly=True)", "int64",
                                  "float64", "boolean", "none", "UniTuple(int64, 2)"])  # fmt: skip
def test_a_type_text_rebuilds_its_type(text):
    from numba.core import types

    t = eval(text, vars(types))
    assert precompile.type_text(t) == text


def test_the_helper_fills_an_empty_cache_with_every_kernel_a_step_compiles(tmp_path):
    cache = str(tmp_path)
    env = dict(os.environ, NUMBA_CACHE_DIR=cache)
    env.pop("TINYVIT_PRECOMPILE", None)

    def says(code, **extra):
        return subprocess.run([sys.executable, "-c", code], env={**env, **extra}, capture_output=True, text=True,
                              check=True).stdout.strip()  # fmt: skip

    cold = "from tinyvit.kernels import precompile as p; print(p.cold(p.read_list()))"
    starts = "import tinyvit.kernels.numba_backend; from tinyvit.kernels import precompile as p; print(p._helper is not None)"
    assert says(cold) == "True"
    assert says(starts) == "True"  # the backend starts the helper on a cold cache (and stops it on exit)
    assert says(starts, TINYVIT_PRECOMPILE="0") == "False"
    subprocess.run([sys.executable, "-m", "tinyvit.kernels.precompile"], env=env, check=True)
    assert says(cold) == "False"
    assert says(starts) == "False"  # a warm cache: no helper
    missing = precompile.recorded(cache)  # what a step still had to compile itself
    assert missing == [], f"kernels/precompile.txt is out of date: python -m tinyvit.kernels.precompile --record ({missing})"

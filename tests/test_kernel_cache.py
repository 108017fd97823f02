"""A cached kernel is compiled again when a helper it calls from another file changes (kernels/cache.py).

numba stamps each cached function with a hash of its own file only: a kernel in caller.py that
calls a compiled helper from helper.py keeps the helper's old code in its cache entry after
helper.py changes. With the folder stamped as a whole, the edit reaches the kernel.
"""

import os
import subprocess
import sys
import textwrap

from tinyvit.kernels import cache

RUN = """
import sys
folder = sys.argv[1]
sys.path.insert(0, folder)
from tinyvit.kernels.cache import stamp_whole_folder
stamp_whole_folder(folder)
import caller
print(caller.kernel(), caller.kernel.stats.cache_hits.get(caller.kernel.signatures[0], 0))
"""

CALLER = """
from numba import njit
from helper import helper

@njit(cache=True)
def kernel():
    return helper() + 1
"""


def run(folder) -> tuple[int, int]:
    """(the kernel's result, 1 if it came from the cache else 0) in a fresh process, the folder stamped."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(folder / "numba_cache"))
    out = subprocess.run([sys.executable, "-c", RUN, str(folder)], capture_output=True, text=True, env=env, check=True)
    value, hits = out.stdout.split()
    return int(value), int(hits)


def write_helper(folder, value: int):
    (folder / "helper.py").write_text(textwrap.dedent(f"""
        from numba import njit

        @njit
        def helper():
            return {value}
    """))


def test_an_edit_to_a_helpers_file_recompiles_the_kernels_that_call_it(tmp_path):
    (tmp_path / "caller.py").write_text(CALLER)
    write_helper(tmp_path, 1)
    assert run(tmp_path) == (2, 0)  # compiled, then cached
    assert run(tmp_path) == (2, 1)  # loaded from the cache: the stamp is stable
    write_helper(tmp_path, 41)  # only the helper's file changes (numba alone would load (2, 1) here)
    assert run(tmp_path) == (42, 0), "the cached kernel kept the helper's old code"


def test_the_folder_digest_follows_every_file(tmp_path):
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "b.py").write_text("y = 2\n")
    (tmp_path / "notes.txt").write_text("not code\n")
    first = cache.folder_digest(str(tmp_path))
    (tmp_path / "notes.txt").write_text("still not code\n")
    assert cache.folder_digest(str(tmp_path)) == first  # only .py files count
    (tmp_path / "b.py").write_text("y = 3\n")
    assert cache.folder_digest(str(tmp_path)) != first


def test_tinyvits_kernels_use_the_folder_stamp():
    from tinyvit.kernels import numba_matmul

    locator = numba_matmul.gemm._cache._impl._locator  # numba's cache internals: the test pins them
    assert isinstance(locator, cache._FolderStampLocator)
    assert locator.folder == os.path.dirname(os.path.abspath(cache.__file__))
    # what numba reads from its own locators besides the methods (its warning that a function cannot
    # be cached names locator._py_file) comes from the one wrapped
    assert os.path.samefile(locator._py_file, numba_matmul.__file__)
    assert locator._lineno == numba_matmul.gemm.py_func.__code__.co_firstlineno

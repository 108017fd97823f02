"""numba's on-disk cache for tinyvit's kernels, made stale by a change to any kernel file.

numba caches each `cache=True` function's machine code beside its source file and reuses it
while that one file is unchanged (its stamp is a hash of the file). But a kernel's machine code
holds the code of the compiled helpers it calls from other files too: attention's softmax holds
numba_exp's exp, every product holds numba_matmul's `gemm`. Edit only the helper's file and
the cached kernels that use it stay as they were, silently: the edit seems to do nothing (a
learner changing `exp32` sees no change), or an update that touches only the helper's file
runs the old code next to the new.

So the kernels of this folder take one stamp for the whole folder: the hash of every `.py`
file in it. Any edit here recompiles every tinyvit kernel on its next call (a cold start,
kernels/precompile.py), and nothing else changes: the cache stays where numba puts it
(`__pycache__` beside the file, or NUMBA_CACHE_DIR), under the same names.

`stamp_whole_folder(folder)` puts a locator for `folder`'s files at the front of the list
numba asks; kernels/__init__.py calls it for this folder before any kernel module is imported
(a function's cache is set up when its module is). A user's own NUMBA_CACHE_LOCATOR_CLASSES
takes precedence, as numba documents.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

from numba.core import caching


def folder_digest(folder: str) -> bytes:
    """sha256 over the names and contents of the folder's .py files, in name order."""
    digest = hashlib.sha256()
    for path in sorted(Path(folder).glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.digest()


@functools.cache
def _digest_once(folder: str) -> bytes:
    # once per process: its modules are imported once, so their stamps are taken once anyway
    return folder_digest(folder)


class _FolderStampLocator(caching._CacheLocator):
    """numba's own locator for the function (same place, same names), with the folder's stamp."""

    folder: str = ""  # set on the subclass that stamp_whole_folder makes for one folder

    def __init__(self, inner):
        self._inner = inner

    def __getattr__(self, name):  # what else numba reads from its locator (_py_file, _lineno): the inner one's
        return getattr(self._inner, name)

    def ensure_cache_path(self):
        self._inner.ensure_cache_path()

    def get_cache_path(self):
        return self._inner.get_cache_path()

    def get_source_stamp(self):
        # numba reads it once per function, when the function's module is imported
        return self._inner.get_source_stamp(), _digest_once(self.folder)

    def get_disambiguator(self):
        return self._inner.get_disambiguator()

    @classmethod
    def from_function(cls, py_func, py_file):
        if os.path.dirname(os.path.abspath(py_file)) != cls.folder:
            return None
        for other in caching.CacheImpl._locator_classes:
            if issubclass(other, _FolderStampLocator):
                continue
            inner = other.from_function(py_func, py_file)
            if inner is not None:
                return cls(inner)
        return None


def stamp_whole_folder(folder: str) -> None:
    """Cache the numba functions defined in `folder`'s files under one stamp for the whole folder."""
    folder = os.path.abspath(folder)
    classes = caching.CacheImpl._locator_classes
    if any(getattr(c, "folder", None) == folder for c in classes):
        return
    locator = type("FolderStampLocator", (_FolderStampLocator,), {"folder": folder})
    classes.insert(0, locator)

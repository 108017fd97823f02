"""Reading named arrays from checkpoint files, one array at a time, without pickle.

Two containers hold the checkpoints tinyvit reads:
    .npz           a zip of .npy files (NumPy; the official ViT checkpoints and tinyvit's own)
    .safetensors   8 bytes of little-endian header length, a JSON header naming each
                   tensor's dtype, shape and byte range, then the raw bytes (timm on model hubs)

A TensorFile lists every array's shape from the headers alone, so a loader can
check every name and shape before it reads any data, and then reads the arrays
one by one: a large checkpoint never sits in memory twice. Nothing here can run
code from a file: an object (pickled) array inside an .npz is refused.

This is not a general reader: only the dtypes a checkpoint of floats needs.
"""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

import numpy as np

from .errors import UsageError

NPZ, SAFETENSORS = "npz", "safetensors"

# safetensors dtype name -> NumPy dtype (bfloat16 is widened by hand, NumPy has none)
_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16,
              "I64": np.int64, "I32": np.int32, "U8": np.uint8}  # fmt: skip


class CheckpointError(UsageError):
    """A checkpoint file that cannot be read as what it claims to be; the message says why."""


def sniff(path) -> str:
    """NPZ or SAFETENSORS, from the file's first bytes (not its name)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    with open(path, "rb") as f:
        head = f.read(9)
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return NPZ
    if len(head) == 9 and head[8:9] == b"{":
        n = struct.unpack("<Q", head[:8])[0]
        if 2 <= n <= path.stat().st_size - 8:
            return SAFETENSORS
        raise CheckpointError(f"{path}: a safetensors header of {n} bytes, but the file has "
                              f"{path.stat().st_size} bytes: truncated or not a safetensors file")  # fmt: skip
    raise CheckpointError(f"{path} is neither an .npz (zip) nor a .safetensors file "
                          f"(it starts with {head[:8]!r})")  # fmt: skip


class TensorFile:
    """Named arrays of one file: .shapes (name -> shape, from the headers), .read(name).

    Use as a context manager; read(name) returns a fresh array.
    """

    def __init__(self, path):
        self.path = Path(path)
        self.kind = sniff(self.path)
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.dtypes: dict[str, np.dtype] = {}
        self.metadata: dict[str, str] = {}
        if self.kind == NPZ:
            self._open_npz()
        else:
            self._open_safetensors()

    # -- .npz ----------------------------------------------------------------------------------

    def _open_npz(self):
        try:
            self._zip = zipfile.ZipFile(self.path)
            names = [n for n in self._zip.namelist() if n.endswith(".npy")]
            for member in names:
                with self._zip.open(member) as f:
                    major, _ = np.lib.format.read_magic(f)
                    read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
                    shape, _, dtype = read_header(f)
                self._check_dtype(member[:-4], dtype)
                self.shapes[member[:-4]] = tuple(shape)
                self.dtypes[member[:-4]] = dtype
        except CheckpointError:
            self.close()
            raise
        except Exception as e:  # BadZipFile, a truncated member, a malformed .npy header
            self.close()
            raise CheckpointError(f"{self.path} is not a readable .npz file (truncated or damaged?): {e}") from e

    def _check_dtype(self, name, dtype):
        if dtype.hasobject:
            raise CheckpointError(f"{self.path}: array {name!r} holds Python objects (a pickle); "
                                  "tinyvit never unpickles a checkpoint")  # fmt: skip
        if dtype.kind not in "fiub" and not (dtype.kind == "U" and self.kind == NPZ):
            raise CheckpointError(f"{self.path}: array {name!r} has dtype {dtype}, expected floats")

    # -- .safetensors --------------------------------------------------------------------------

    def _open_safetensors(self):
        size = self.path.stat().st_size
        with open(self.path, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            raw = f.read(n)
        try:
            header = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{self.path}: the safetensors header is not JSON (truncated?): {e}") from e
        if not isinstance(header, dict):
            raise CheckpointError(f"{self.path}: the safetensors header is not a JSON object")
        self.metadata = header.pop("__metadata__", None) or {}
        self._offsets, self._data_start, end = {}, 8 + n, 0
        for name, info in header.items():
            try:
                dtype, shape, (lo, hi) = info["dtype"], tuple(int(s) for s in info["shape"]), info["data_offsets"]
            except (KeyError, TypeError, ValueError) as e:
                raise CheckpointError(f"{self.path}: malformed safetensors entry {name!r}: {info!r}") from e
            if dtype not in _ST_DTYPES:
                raise CheckpointError(f"{self.path}: tensor {name!r} has dtype {dtype}, expected one of {sorted(_ST_DTYPES)}")
            itemsize = np.dtype(_ST_DTYPES[dtype]).itemsize
            if hi - lo != itemsize * int(np.prod(shape, dtype=np.int64)) or lo < 0:
                raise CheckpointError(f"{self.path}: tensor {name!r} spans bytes {lo}..{hi}, "
                                      f"which does not fit its shape {shape} of {dtype}")  # fmt: skip
            self.shapes[name] = shape
            self.dtypes[name] = np.dtype(np.float32) if dtype == "BF16" else np.dtype(_ST_DTYPES[dtype])
            self._offsets[name] = (dtype, lo, hi)
            end = max(end, hi)
        if self._data_start + end > size:
            raise CheckpointError(f"{self.path} is truncated: its header describes {self._data_start + end} bytes, "
                                  f"the file has {size}")  # fmt: skip

    # -- reading -------------------------------------------------------------------------------

    def read(self, name) -> np.ndarray:
        """The array called `name`, read now (a fresh array)."""
        if name not in self.shapes:
            raise KeyError(name)
        try:
            if self.kind == NPZ:
                with self._zip.open(name + ".npy") as f:
                    return np.lib.format.read_array(f, allow_pickle=False)
            dtype, lo, hi = self._offsets[name]
            with open(self.path, "rb") as f:
                f.seek(self._data_start + lo)
                buf = f.read(hi - lo)
            if len(buf) != hi - lo:
                raise CheckpointError(f"{self.path} is truncated inside tensor {name!r}")
            a = np.frombuffer(buf, dtype=np.dtype(_ST_DTYPES[dtype]).newbyteorder("<"))
            if dtype == "BF16":  # bfloat16 is the top half of a float32
                a = (a.astype(np.uint32) << 16).view(np.float32)
            return a.reshape(self.shapes[name]).copy()
        except CheckpointError:
            raise
        except Exception as e:  # a damaged zip member (CRC, zlib), a short read
            raise CheckpointError(f"{self.path}: cannot read array {name!r} (truncated or damaged?): {e}") from e

    def close(self):
        z = getattr(self, "_zip", None)
        if z is not None:
            z.close()
            self._zip = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

"""CIFAR-10 from the official "python version" files (Krizhevsky 2009).

Layout, in data_dir:
    cifar-10-batches-py/      data_batch_1 .. data_batch_5, test_batch, batches.meta
    cifar-10-python.tar.gz    the same folder packed; extracted on first use

When neither is there and download=True, the archive is fetched from URL and
checked against the official MD5. An archive placed by hand is not checked
against that MD5 (local copies may be rebuilt and differ), only for being a
readable tar holding the expected files. Archive and folder appear under
their final names only when complete: the download goes to a temporary file,
the extraction to a temporary folder, and each is renamed into place.

The batch files are Python 2 pickles. Unpickling can call any importable
function, so they are read with an Unpickler that resolves only the few
globals the format uses (numpy's array and dtype reconstruction) and refuses
every other one before it can be called. Each batch is a dict with
"data": uint8 (N, 3072), every row a 32x32 image stored as three planes
(R, G, B) of 1024 pixels, and "labels": N ints in [0, 10).
"""

from __future__ import annotations

import io
import os
import pickle
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path

import numpy as np

from ..errors import UsageError, check_labels
from .base import Dataset, resize_images
from .download import download_to_temp

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
MD5 = "c58f30108f718f92721af3b95e74349a"
FOLDER = "cifar-10-batches-py"
ARCHIVE = "cifar-10-python.tar.gz"
TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_FILES = ["test_batch"]
META_FILE = "batches.meta"
MEMBERS = TRAIN_FILES + TEST_FILES + [META_FILE]
NUM_CLASSES = 10
SIDE = 32

# The globals a CIFAR-10 pickle may name, and what they resolve to. NumPy 1.x
# wrote numpy.core.multiarray, NumPy 2 writes numpy._core.multiarray; both
# mean the same function, taken here from ndarray's own pickling so that no
# deprecated module is imported.
_RECONSTRUCT = np.empty(0).__reduce__()[0]


def _latin1_bytes(text: str, encoding: str) -> bytes:
    """What Python 3 writes for a bytes object at pickle protocol 0-2: _codecs.encode(text, "latin1")."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UsageError(f"refusing _codecs.encode with {type(text).__name__} and encoding {encoding!r}")
    return text.encode("latin1")


SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_bytes,  # only in files written by Python 3 with protocol <= 2
}


class RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler that only builds NumPy arrays and plain containers.

    Python's pickle runs code by looking up a global (any importable callable)
    and calling it; every lookup passes through find_class, so refusing there
    stops a hostile file before anything runs.
    """

    def __init__(self, file, source: str):
        super().__init__(file, encoding="latin1")  # Python 2 str -> str; NumPy's raw bytes come through latin1
        self.source = source

    def find_class(self, module, name):
        try:
            return SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise UsageError(
                f"refusing to unpickle {module}.{name} from {self.source}: a CIFAR-10 batch may only "
                f"reference {', '.join(sorted(f'{m}.{n}' for m, n in SAFE_GLOBALS))}"
            ) from None


def safe_unpickle(data: bytes, source: str):
    """Unpickle bytes with RestrictedUnpickler; any failure is a UsageError naming `source`."""
    try:
        return RestrictedUnpickler(io.BytesIO(data), source).load()
    except ValueError as e:
        if str(e).startswith("refusing to unpickle"):  # find_class's refusal already names the file
            raise
        raise UsageError(f"{source} is not a readable CIFAR-10 pickle: {e}") from e
    except Exception as e:
        raise UsageError(f"{source} is not a readable CIFAR-10 pickle: {type(e).__name__}: {e}") from e


def _str_keys(obj, source: str) -> dict:
    """A pickled dict with its keys as str (Python 3 writers give bytes keys, Python 2 ones str)."""
    if not isinstance(obj, dict):
        raise UsageError(f"{source}: expected a dict, got {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def parse_batch(obj, source: str) -> tuple[np.ndarray, np.ndarray]:
    """A batch dict -> images uint8 (N, 32, 32, 3) and labels int64 (N,), with the format checked."""
    batch = _str_keys(obj, source)
    missing = [k for k in ("data", "labels") if k not in batch]
    if missing:
        raise UsageError(f"{source}: expected keys 'data' and 'labels', missing {missing}; found {sorted(batch)}")
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * SIDE**2:
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise UsageError(f"{source}: 'data' must be uint8 of shape (N, {3 * SIDE**2}), got {desc}")
    try:
        labels = np.asarray(batch["labels"])
    except Exception as e:
        raise UsageError(f"{source}: 'labels' is not a list of integers: {e}") from e
    try:
        labels = check_labels(labels, NUM_CLASSES, len(data), name="'labels' (one per row of 'data')")
    except ValueError as e:
        raise UsageError(f"{source}: {e}") from e
    images = data.reshape(-1, 3, SIDE, SIDE).transpose(0, 2, 3, 1)  # channel planes -> (N, 32, 32, 3)
    return np.ascontiguousarray(images), labels


def parse_meta(obj, source: str) -> list[str]:
    """batches.meta -> the 10 class names."""
    meta = _str_keys(obj, source)
    names = meta.get("label_names")
    if not isinstance(names, list) or len(names) != NUM_CLASSES or \
            not all(isinstance(n, (str, bytes)) for n in names):
        raise UsageError(f"{source}: expected 'label_names', a list of {NUM_CLASSES} strings, got {names!r:.200}")
    return [n.decode("latin1") if isinstance(n, bytes) else n for n in names]


def load_batches_dir(root, image_size: int = SIDE) -> Dataset:
    """Read cifar-10-batches-py/ into a Dataset (resized when image_size is not 32)."""
    root = Path(root)
    missing = [m for m in MEMBERS if not (root / m).is_file()]
    if missing:
        raise UsageError(f"{root}: not a complete CIFAR-10 folder, missing {missing} (expected {MEMBERS})")

    def read(name):
        return safe_unpickle((root / name).read_bytes(), name)

    class_names = parse_meta(read(META_FILE), META_FILE)
    splits = []
    for files in (TRAIN_FILES, TEST_FILES):
        parts = [parse_batch(read(name), name) for name in files]
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        splits += [resize_images(images, image_size), labels]
    return Dataset("cifar10", *splits, class_names)


def extract_archive(archive, data_dir) -> Path:
    """Unpack the expected members of a CIFAR-10 archive into data_dir/cifar-10-batches-py.

    Only the seven known files are read out of the tar (by name, as bytes), so
    a member with a path like ../../x or a link is never written anywhere.
    They go to a temporary folder that is renamed into place when all are out.
    """
    archive, data_dir = Path(archive), Path(data_dir)
    final = data_dir / FOLDER
    tmp = Path(tempfile.mkdtemp(prefix=f".{FOLDER}.", suffix=".part", dir=data_dir))
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                members = {m.name.removeprefix("./"): m for m in tar.getmembers() if m.isfile()}
                missing = [m for m in MEMBERS if f"{FOLDER}/{m}" not in members]
                if missing:
                    raise UsageError(
                        f"{archive}: not a CIFAR-10 archive, missing {[f'{FOLDER}/{m}' for m in missing]}"
                    )
                for m in MEMBERS:
                    with tar.extractfile(members[f"{FOLDER}/{m}"]) as src, open(tmp / m, "wb") as dst:
                        shutil.copyfileobj(src, dst)
        except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
            raise UsageError(f"{archive}: not a readable .tar.gz archive ({type(e).__name__}: {e})") from e
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():  # another process finishing first is fine; anything else is not
                raise
            shutil.rmtree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def find_or_fetch(data_dir, download: bool = True, progress: bool = True, url: str = URL, md5: str = MD5) -> Path:
    """The path of data_dir/cifar-10-batches-py, extracting or downloading the archive if needed."""
    data_dir = Path(data_dir)
    folder, archive = data_dir / FOLDER, data_dir / ARCHIVE
    if folder.is_dir():
        return folder
    if archive.is_file():
        return extract_archive(archive, data_dir)  # placed by hand: no official-MD5 check
    if not download:
        raise UsageError(
            f"CIFAR-10 not found in {data_dir}: expected {FOLDER}/ or {ARCHIVE}; "
            f"allow the download or place the official archive there"
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = download_to_temp(url, data_dir, md5, progress=progress)
    try:
        extract_archive(tmp, data_dir)
        os.replace(tmp, archive)  # kept, so a deleted folder can be re-extracted without the network
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return folder


def load_cifar10(data_dir, image_size: int = SIDE, download: bool = True, progress: bool = True,
                 url: str = URL, md5: str = MD5) -> Dataset:
    """CIFAR-10: 50000 training and 10000 test images, 10 classes."""
    return load_batches_dir(find_or_fetch(data_dir, download, progress, url, md5), image_size)

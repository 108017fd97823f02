"""CIFAR-10 loading: the batch format, its checks, and the refusal to run code from a pickle.

The tests write tiny CIFAR-style files themselves (20 rows per batch), so they
need no download; one test reads the real images from ../shared/data when it
is there and skips with a reason when it is not.
"""

import os
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from tinyvit.data import load_dataset
from tinyvit.data.cifar10 import ARCHIVE, FOLDER, MEMBERS, load_cifar10

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def write_fake_cifar(data_dir, rows=20, seed=0, bytes_keys=True, protocol=4, patch=None):
    """Write cifar-10-batches-py/ with `rows` random images per batch; return {file: (data, labels)}.

    patch: {file name: dict that replaces that file's batch dict} to plant a fault.
    """
    rng = np.random.default_rng(seed)
    root = Path(data_dir) / FOLDER
    root.mkdir(parents=True)
    key = (lambda k: k.encode()) if bytes_keys else (lambda k: k)
    written = {}
    for name in MEMBERS:
        if name == "batches.meta":
            obj = {key("label_names"): [key(c) for c in CLASSES], key("num_vis"): 3072}
        else:
            data = rng.integers(0, 256, (rows, 3072), dtype=np.uint8)
            labels = rng.integers(0, 10, rows).tolist()
            written[name] = (data, labels)
            obj = {key("data"): data, key("labels"): labels, key("batch_label"): key(name)}
        obj = (patch or {}).get(name, obj)
        with open(root / name, "wb") as f:
            pickle.dump(obj, f, protocol=protocol)
    return written


def pack(data_dir):
    """Pack data_dir/cifar-10-batches-py into data_dir/cifar-10-python.tar.gz and remove the folder."""
    data_dir = Path(data_dir)
    with tarfile.open(data_dir / ARCHIVE, "w:gz") as tar:
        tar.add(data_dir / FOLDER, arcname=FOLDER)
    for f in (data_dir / FOLDER).iterdir():
        f.unlink()
    (data_dir / FOLDER).rmdir()


@pytest.mark.parametrize("bytes_keys", [True, False], ids=["bytes-keys", "str-keys"])
@pytest.mark.parametrize("protocol", [2, 4])
def test_fake_batches_load_with_pixels_in_channel_planes(tmp_path, bytes_keys, protocol):
    """Rows of 3072 = three 32x32 planes (R, G, B) become (N, 32, 32, 3): pixel (y, x, c) is row[c*1024 + y*32 + x].

    Keys may come back as bytes (written by Python 3) or str; pickle protocol 2
    (bytes through _codecs.encode) and 4 both load."""
    written = write_fake_cifar(tmp_path, bytes_keys=bytes_keys, protocol=protocol)
    ds = load_dataset("cifar10", data_dir=tmp_path, download=False)
    assert ds.name == "cifar10"
    assert ds.class_names == CLASSES
    assert ds.train_images.shape == (100, 32, 32, 3) and ds.train_images.dtype == np.uint8
    assert ds.test_images.shape == (20, 32, 32, 3)
    assert ds.train_labels.dtype == np.int64 and ds.train_images.flags.c_contiguous
    data, labels = written["data_batch_2"]
    image = ds.train_images[20 + 7]  # row 7 of the second batch
    for y, x, c in [(0, 0, 0), (3, 17, 1), (31, 5, 2), (12, 31, 0)]:
        assert image[y, x, c] == data[7, c * 1024 + y * 32 + x]
    np.testing.assert_array_equal(ds.train_labels[20:40], labels)
    np.testing.assert_array_equal(ds.test_labels, written["test_batch"][1])


def test_archive_placed_by_hand_is_extracted_without_the_official_md5(tmp_path):
    """A local cifar-10-python.tar.gz (whose MD5 is not the official one) is unpacked once and then read from the folder."""
    written = write_fake_cifar(tmp_path)
    pack(tmp_path)
    ds = load_cifar10(tmp_path, download=False)
    assert (tmp_path / FOLDER).is_dir() and sorted(p.name for p in (tmp_path / FOLDER).iterdir()) == sorted(MEMBERS)
    np.testing.assert_array_equal(ds.test_labels, written["test_batch"][1])
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary folder left


def test_image_size_resizes_every_image(tmp_path):
    """image_size=16 gives (N, 16, 16, 3); an image of one flat colour keeps that colour after resizing."""
    flat = np.repeat(np.array([[200], [10], [90]], np.uint8), 1024, axis=1).reshape(1, 3072)
    write_fake_cifar(tmp_path, patch={"test_batch": {"data": np.repeat(flat, 4, axis=0), "labels": [1, 2, 3, 4]}})
    ds = load_dataset("cifar10", data_dir=tmp_path, image_size=16, download=False)
    assert ds.train_images.shape == (100, 16, 16, 3) and ds.test_images.shape == (4, 16, 16, 3)
    assert np.all(ds.test_images == np.array([200, 10, 90], np.uint8))


@pytest.mark.parametrize(
    "batch, message",
    [
        ({"pixels": np.zeros((20, 3072), np.uint8), "labels": [0] * 20}, "missing ['data']"),
        ({"data": np.zeros((20, 3071), np.uint8), "labels": [0] * 20}, "(N, 3072), got uint8 (20, 3071)"),
        ({"data": np.zeros((20, 3072), np.float32), "labels": [0] * 20}, "got float32"),
        ({"data": np.zeros((20, 3072), np.uint8), "labels": [0] * 19}, "'labels' (one per row of 'data') must have shape (20,), got (19,)"),
        ({"data": np.zeros((20, 3072), np.uint8), "labels": [0] * 19 + [10]}, "labels' (one per row of 'data') must be in [0, 10), got values from 0 to 10"),
        ({"data": np.zeros((20, 3072), np.uint8), "labels": [-1] + [0] * 19}, "from -1 to 0"),
        ([1, 2, 3], "expected a dict, got list"),
    ],
    ids=["wrong-key", "wrong-width", "wrong-dtype", "label-count", "label-too-big", "label-negative", "not-a-dict"],
)
def test_malformed_batch_is_a_clear_error_naming_the_file(tmp_path, batch, message):
    """Each fault in a batch file gives a ValueError that names data_batch_3 and what was expected."""
    write_fake_cifar(tmp_path, patch={"data_batch_3": batch})
    with pytest.raises(ValueError, match="data_batch_3") as err:
        load_dataset("cifar10", data_dir=tmp_path, download=False)
    assert message in str(err.value)


def test_bad_meta_and_missing_files_are_clear_errors(tmp_path):
    """batches.meta without 10 label names, or a folder lacking a file, is a ValueError naming it."""
    write_fake_cifar(tmp_path, patch={"batches.meta": {"label_names": ["cat", "dog"]}})
    with pytest.raises(ValueError, match="batches.meta: expected 'label_names', a list of 10 strings"):
        load_dataset("cifar10", data_dir=tmp_path, download=False)
    (tmp_path / FOLDER / "data_batch_4").unlink()
    with pytest.raises(ValueError, match=r"missing \['data_batch_4'\]"):
        load_dataset("cifar10", data_dir=tmp_path, download=False)


def test_nothing_there_and_no_download_says_what_was_looked_for(tmp_path):
    with pytest.raises(ValueError, match=f"CIFAR-10 not found in {tmp_path}: expected {FOLDER}/ or {ARCHIVE}"):
        load_dataset("cifar10", data_dir=tmp_path, download=False)


class RunsCommand:
    """Pickles as a call to os.system: unpickling it with plain pickle.load would run the command."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class CallsEval:
    """Pickles as a call to builtins.eval."""

    def __init__(self, source):
        self.source = source

    def __reduce__(self):
        return (eval, (self.source,))


@pytest.mark.parametrize("payload", ["system", "eval"])
def test_pickle_that_would_run_code_is_refused_before_it_runs(tmp_path, payload):
    """A batch whose pickle calls os.system or eval is refused by name, and the code never runs.

    The planted code would create a marker file; the marker must not exist afterwards."""
    marker = tmp_path / "pwned"
    evil = RunsCommand(f"touch {marker}") if payload == "system" else CallsEval(f"open({str(marker)!r}, 'w')")
    write_fake_cifar(tmp_path, patch={"data_batch_1": {"data": evil, "labels": [0]}})
    assert pickle.loads(pickle.dumps(RunsCommand("true"))) == 0  # the trick is real: plain pickle runs it
    name = f"{os.system.__module__}.system" if payload == "system" else "builtins.eval"
    with pytest.raises(ValueError, match=f"refusing to unpickle {name} from data_batch_1"):
        load_dataset("cifar10", data_dir=tmp_path, download=False)
    assert not marker.exists()


class Opaque:
    """A plain class: unpickling it imports this module and builds an instance, which a data file never needs."""

    def __init__(self):
        self.value = 1


def test_pickled_custom_class_is_refused(tmp_path):
    """Any global outside numpy's array reconstruction is refused, here a class from this test module."""
    write_fake_cifar(tmp_path, patch={"test_batch": {"data": Opaque(), "labels": []}})
    with pytest.raises(ValueError, match=f"refusing to unpickle {Opaque.__module__}.Opaque from test_batch"):
        load_dataset("cifar10", data_dir=tmp_path, download=False)


@pytest.mark.skipif(not (SHARED_DATA / "make_cifar10.py").is_file(),
                    reason=f"real CIFAR-10 images not found at {SHARED_DATA} (../shared/data beside the repository)")
def test_real_cifar10_layout_loads_50000_train_and_10000_test_balanced(tmp_path):
    """The official layout built from the real images: 50000 / 10000 images, 5000 / 1000 per class,
    class names from batches.meta, and channel means near the published CIFAR-10 values."""
    subprocess.run([sys.executable, str(SHARED_DATA / "make_cifar10.py"), str(tmp_path)], check=True,
                   capture_output=True)  # fmt: skip
    ds = load_dataset("cifar10", data_dir=tmp_path, download=False)
    assert ds.train_images.shape == (50000, 32, 32, 3) and ds.test_images.shape == (10000, 32, 32, 3)
    assert ds.class_names == CLASSES
    np.testing.assert_array_equal(np.bincount(ds.train_labels, minlength=10), [5000] * 10)
    np.testing.assert_array_equal(np.bincount(ds.test_labels, minlength=10), [1000] * 10)
    # the usual CIFAR-10 statistics are (0.4914, 0.4822, 0.4465) and (0.2470, 0.2435, 0.2616); JPEG moves them a little
    np.testing.assert_allclose(ds.mean, [0.4914, 0.4822, 0.4465], atol=0.01)
    np.testing.assert_allclose(ds.std, [0.2470, 0.2435, 0.2616], atol=0.01)
    assert ds.train_images.std() > 40  # real pictures, not a constant

"""Downloading CIFAR-10: served from a loopback HTTP server, with every way it can go wrong.

The rule under test: a download or extraction that fails leaves nothing that
looks complete (no cifar-10-batches-py/, no cifar-10-python.tar.gz, no
temporary files), so the next run starts clean instead of reading half a file.
"""

import hashlib
import http.server
import io
import pickle
import tarfile
import threading

import numpy as np
import pytest

from tinyvit.data.cifar10 import ARCHIVE, FOLDER, MEMBERS, load_cifar10


def fake_archive(rows=4, seed=0) -> bytes:
    """A small but well-formed cifar-10-python.tar.gz, built in memory: `rows` images per batch."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in MEMBERS:
            if name == "batches.meta":
                obj = {b"label_names": [f"class{k}".encode() for k in range(10)]}
            else:
                obj = {b"data": rng.integers(0, 256, (rows, 3072), dtype=np.uint8), b"labels": list(range(rows))}
            blob = pickle.dumps(obj, protocol=4)
            info = tarfile.TarInfo(f"{FOLDER}/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return buf.getvalue()


GOOD = fake_archive()


class Handler(http.server.BaseHTTPRequestHandler):
    """/good: the archive; /half: the first half of it, complete as a response; /cut: announces the
    whole archive but the connection closes after half of it; anything else: 404."""

    def do_GET(self):
        body = {"/good": GOOD, "/half": GOOD[: len(GOOD) // 2], "/cut": GOOD}.get(self.path)
        if body is None:
            self.send_error(404, "no such file")
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2] if self.path == "/cut" else body)
        self.close_connection = True

    def log_message(self, *args):  # keep the test output quiet
        pass


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def test_good_download_is_checked_extracted_and_loaded(tmp_path, server, capsys):
    """With the matching MD5 the archive is kept under its final name, unpacked, and loaded; a progress bar goes to stderr."""
    ds = load_cifar10(tmp_path / "data", url=f"{server}/good", md5=md5(GOOD), progress=True)
    assert ds.train_images.shape == (20, 32, 32, 3) and ds.class_names[3] == "class3"
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == sorted([ARCHIVE, FOLDER])
    assert (tmp_path / "data" / ARCHIVE).read_bytes() == GOOD
    err = capsys.readouterr().err
    assert "good" in err and "100%" in err


def test_progress_false_is_silent(tmp_path, server, capsys):
    load_cifar10(tmp_path, url=f"{server}/good", md5=md5(GOOD), progress=False)
    assert capsys.readouterr().err == ""


def test_second_load_needs_no_network(tmp_path, server):
    """Once the folder is there, a url that would fail is never asked."""
    load_cifar10(tmp_path, url=f"{server}/good", md5=md5(GOOD), progress=False)
    ds = load_cifar10(tmp_path, url=f"{server}/missing", md5=md5(GOOD), progress=False)
    assert len(ds.test_labels) == 4


def test_wrong_checksum_names_both_md5s_and_leaves_nothing(tmp_path, server):
    expected = "0" * 32
    with pytest.raises(ValueError, match=f"expected MD5 {expected}, found {md5(GOOD)}"):
        load_cifar10(tmp_path, url=f"{server}/good", md5=expected, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_connection_cut_short_leaves_nothing(tmp_path, server):
    """The server announces the full length but sends half: an error, and no file remains."""
    with pytest.raises(ValueError, match=f"could not download {server}/cut"):
        load_cifar10(tmp_path, url=f"{server}/cut", md5=md5(GOOD), progress=False)
    assert list(tmp_path.iterdir()) == []


def test_truncated_archive_with_its_own_md5_fails_extraction_and_leaves_nothing(tmp_path, server):
    """Half an archive that passes the checksum (the MD5 given is the half's) cannot be unpacked:
    an error naming the archive, and neither the folder nor the archive is left."""
    half = GOOD[: len(GOOD) // 2]
    with pytest.raises(ValueError, match="not a readable .tar.gz archive"):
        load_cifar10(tmp_path, url=f"{server}/half", md5=md5(half), progress=False)
    assert list(tmp_path.iterdir()) == []


def test_http_error_is_a_clear_error(tmp_path, server):
    with pytest.raises(ValueError, match=f"could not download {server}/missing: HTTPError: HTTP Error 404"):
        load_cifar10(tmp_path, url=f"{server}/missing", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_corrupt_local_archive_is_a_clear_error_and_is_left_alone(tmp_path):
    """A hand-placed archive that is not a tar.gz: a ValueError naming it; the user's file stays, no folder appears."""
    archive = tmp_path / ARCHIVE
    archive.write_bytes(b"this is not a gzip file" * 100)
    with pytest.raises(ValueError, match=f"{archive}: not a readable .tar.gz archive"):
        load_cifar10(tmp_path, download=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [ARCHIVE]


def test_local_archive_missing_members_is_a_clear_error(tmp_path):
    archive = tmp_path / ARCHIVE
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo(f"{FOLDER}/data_batch_1")
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(ValueError, match=r"not a CIFAR-10 archive, missing \['cifar-10-batches-py/data_batch_2'"):
        load_cifar10(tmp_path, download=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [ARCHIVE]


def test_archive_members_with_escaping_paths_are_never_written(tmp_path):
    """Only the seven known files are read out of the tar, so a member named ../escaped.txt lands nowhere."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with tarfile.open(fileobj=io.BytesIO(GOOD), mode="r:gz") as src, tarfile.open(data_dir / ARCHIVE, "w:gz") as tar:
        for m in src.getmembers():
            tar.addfile(m, src.extractfile(m))
        evil = tarfile.TarInfo(f"{FOLDER}/../../escaped.txt")
        evil.size = 3
        tar.addfile(evil, io.BytesIO(b"bad"))
    ds = load_cifar10(data_dir, download=False)
    assert len(ds.train_labels) == 20
    assert not (tmp_path / "escaped.txt").exists() and not (data_dir / "escaped.txt").exists()
    assert sorted(p.name for p in (data_dir / FOLDER).iterdir()) == sorted(MEMBERS)

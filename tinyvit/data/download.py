"""Fetching a file over HTTP(S) so that a failure never leaves something that looks finished.

The bytes go to a temporary file in the destination's directory while their
MD5 is computed; only a complete download with the expected checksum is
renamed to its final name (a rename within one directory is atomic). A
broken connection, a short body or a wrong checksum removes the temporary file
and raises a UsageError (tinyvit.errors) that says what went wrong.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm import tqdm

from ..errors import UsageError

CHUNK = 1 << 16


def download_to_temp(url: str, directory, md5: str | None, progress: bool = True, timeout: float = 60.0) -> Path:
    """Download url into a new temporary file in `directory`; return its path.

    md5 is the expected hex digest (None skips the check). The caller renames
    the file into place or removes it. On any failure the temporary file is
    removed and a UsageError names the url and the cause.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".download.", suffix=".part", dir=directory)
    tmp = Path(tmp)
    h = hashlib.md5()
    try:
        with os.fdopen(fd, "wb") as f:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    length = response.headers.get("Content-Length")
                    total = int(length) if length and length.isdigit() else None
                    received = 0
                    with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
                              desc=Path(urllib.parse.urlsplit(url).path).name or url, disable=not progress) as bar:
                        while block := response.read(CHUNK):
                            f.write(block)
                            h.update(block)
                            received += len(block)
                            bar.update(len(block))
            except (OSError, ValueError, http.client.HTTPException) as e:  # URLError, HTTPError, timeouts, IncompleteRead
                raise UsageError(f"could not download {url}: {type(e).__name__}: {e}") from e
            if total is not None and received != total:
                raise UsageError(f"could not download {url}: got {received} bytes, the server announced {total}")
            f.flush()
            os.fsync(f.fileno())
        if md5 is not None and h.hexdigest() != md5.lower():
            raise UsageError(
                f"checksum mismatch for {url}: expected MD5 {md5.lower()}, found {h.hexdigest()} "
                f"({received} bytes); the download was deleted"
            )
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp

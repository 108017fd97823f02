"""The built wheel installs tinyvit and nothing else at the top level.

`kernels/` sits at the repository top but must install as `tinyvit.kernels`:
PyPI has a popular `kernels` package, and installing both would let one shadow
the other.
"""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_installs_only_the_tinyvit_package(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(tmp_path), str(ROOT)], check=True)  # fmt: skip
    (wheel,) = tmp_path.glob("tinyvit-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert top == {"tinyvit"}, f"the wheel installs top-level names {sorted(top)}, expected only tinyvit"
    assert "tinyvit/kernels/numba_backend.py" in names and "tinyvit/kernels/cuda_backend.py" in names
    assert "tinyvit/kernels/precompile.txt" in names
    assert "tinyvit/layers/attention.py" in names and "tinyvit/data/cifar10.py" in names

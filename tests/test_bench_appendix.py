"""benchmarks/bench_appendix.py --quick: it runs, with and without PyTorch, and reports real measurements.

Speed is not asserted (benchmarks measure it); these tests check that every configuration was
measured in its own process and that the table, the JSON and the plot carry those figures.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_appendix.py"


def run_quick(tmp_path: Path, *extra: str, hide_torch: bool = False) -> tuple[str, dict, str]:
    """Run the script with --quick; return its stdout, the JSON report and the table file's text."""
    env = dict(os.environ)
    if hide_torch:  # a `torch` that fails to import, first on the path of the script and of its children
        stub = tmp_path / "no_torch" / "torch"
        stub.mkdir(parents=True)
        (stub / "__init__.py").write_text('raise ImportError("torch is hidden for this test")\n')
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(stub.parent), env.get("PYTHONPATH")]))
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--table", str(tmp_path / "t.md"), "--json",
         str(tmp_path / "r.json"), "--plot", str(tmp_path / "p.png"), *extra],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert out.returncode == 0, f"bench_appendix.py --quick failed:\n{out.stdout}\n{out.stderr}"
    assert " failed: " not in out.stdout, f"a measuring process failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout, json.loads((tmp_path / "r.json").read_text()), (tmp_path / "t.md").read_text()


def check_measurement(m: dict, repeats: int) -> None:
    assert len(m["times_s"]) == repeats and all(t > 0 for t in m["times_s"]), m
    assert m["images_per_s"] > 0
    assert m["after_imports_mib"] > 10, m  # Python with NumPy and tinyvit loaded is tens of MiB
    # the high-water mark may have been set while importing, before the model: then nothing is added
    assert m["peak_mib"] >= m["after_imports_mib"] and m["peak_added_mib"] >= 0, m
    assert m["peak_added_mib"] == pytest.approx(m["peak_mib"] - m["after_imports_mib"])


def check_table_row(table: str, row: dict) -> list[str]:
    """The table's cells for `row` (found by its px and tokens), with tinyvit's figures as in the JSON."""
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()[2:]]
    cells = next(c for c in rows if c[1] == str(row["px"]) and c[2] == str(row["tokens"]))
    assert cells[0] == "testing" and cells[3] == str(row["batch"])
    assert float(cells[5]) == pytest.approx(row["tinyvit"]["images_per_s"], abs=0.01)
    assert cells[8] == f"{row['tinyvit']['peak_added_mib']:.0f} / {row['tinyvit']['peak_mib']:.0f}"
    return cells


def test_quick_without_torch_measures_tinyvit_and_says_torch_is_skipped(tmp_path):
    stdout, report, table = run_quick(tmp_path, hide_torch=True)
    assert "PyTorch: not installed" in stdout and "skipped" in stdout
    assert report["torch"] is None and report["repeats"] == 1 and report["threads"] == 2
    assert [(r["model"], r["px"], r["tokens"]) for r in report["rows"]] == [("testing", 8, 5), ("testing", 16, 17)]
    for row in report["rows"]:
        assert row["torch"] is None and row["batch"] == 8 and row["gflops_per_image"] > 0
        check_measurement(row["tinyvit"], repeats=1)
        cells = check_table_row(table, row)
        assert cells[6] == "-" and cells[7] == "-" and cells[9] == "-"
    assert report["rows"][1]["gflops_per_image"] > report["rows"][0]["gflops_per_image"]  # 17 tokens against 5
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="PyTorch not installed (optional comparison)")
def test_quick_with_torch_measures_both_frameworks(tmp_path):
    _, report, table = run_quick(tmp_path, "--sizes", "8")
    assert report["torch"] and len(report["rows"]) == 1
    row = report["rows"][0]
    for fw in ("tinyvit", "torch"):
        check_measurement(row[fw], repeats=1)
    cells = check_table_row(table, row)
    assert float(cells[6]) == pytest.approx(row["torch"]["images_per_s"], abs=0.01)
    ratio = row["tinyvit"]["images_per_s"] / row["torch"]["images_per_s"]
    assert cells[7] == f"{ratio:.2f}x"

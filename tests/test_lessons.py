"""Every notebook in lessons/ runs top to bottom in quick mode (TINYVIT_QUICK=1) without an error.

Each notebook checks its own claims with assertions, so an error here is a
broken lesson: a changed API, or a claim that stopped being true. Quick mode
shrinks the models and the training runs; all notebooks together take a few
minutes on two cores. The committed notebooks hold the outputs of a full run;
the test runs copies and never writes them back. A second test checks those
committed outputs: no errors, and at least one figure in each notebook.
"""

import json
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="nbformat is in the test extra")
nbclient = pytest.importorskip("nbclient", reason="nbclient is in the test extra")
pytest.importorskip("matplotlib", reason="matplotlib is in the test extra")

LESSONS = Path(__file__).resolve().parent.parent / "lessons"
NOTEBOOKS = sorted(LESSONS.glob("*.ipynb"))


def test_the_lessons_are_there():
    assert len(NOTEBOOKS) >= 7, (
        f"expected the lesson notebooks in {LESSONS}, found {[p.name for p in NOTEBOOKS]}"
    )


@pytest.fixture(scope="module")
def this_python_kernel(tmp_path_factory):
    """A kernelspec that runs this interpreter (the one with tinyvit installed), whatever `python` is on PATH."""
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / "tinyvit-test"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "tinyvit test", "language": "python"})
    )
    return str(root)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_quick_mode(path, monkeypatch, this_python_kernel):
    monkeypatch.setenv("TINYVIT_QUICK", "1")  # the kernel inherits the environment
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("JUPYTER_PATH", this_python_kernel)
    monkeypatch.delenv(
        "NUMBA_ENABLE_CUDASIM", raising=False
    )  # each notebook decides, as a reader's would
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=600,
        kernel_name="tinyvit-test",
        resources={"metadata": {"path": str(LESSONS)}},
    )
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as e:
        pytest.fail(f"{path.name} failed in quick mode:\n{e}")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_notebook_has_outputs_figures_and_no_errors(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    outputs = [o for c in code for o in c.get("outputs", [])]
    assert all(c.get("execution_count") for c in code), (
        f"{path.name}: committed with cells that were not run"
    )
    errors = [o for o in outputs if o.output_type == "error"]
    assert not errors, (
        f"{path.name}: committed with an error: {errors[0].get('ename')}: {errors[0].get('evalue')}"
    )
    assert any("image/png" in o.get("data", {}) for o in outputs), (
        f"{path.name}: no figure in the outputs"
    )

"""The default backend is a proven one: with a GPU present, `cuda` is chosen only once
tinyvit.backend.CUDA_PROVEN says its suite has passed on a real GPU; until then `numba`, with a
one-line hint that `--backend cuda` exists."""

import pytest

from tinyvit import backend
from tinyvit.train import build_parser, main


@pytest.fixture
def gpu_machine(monkeypatch):
    """As if an NVIDIA GPU were present and every backend loaded."""
    monkeypatch.setattr(backend, "is_available", lambda name: name in ("cuda", "numba", "numpy"))


@pytest.mark.parametrize("proven, default", [(False, "numba"), (True, "cuda")])
def test_cuda_is_the_default_on_a_gpu_only_once_proven(gpu_machine, monkeypatch, proven, default):
    monkeypatch.setattr(backend, "CUDA_PROVEN", proven)
    assert backend.default_backend() == default
    assert (backend.backend_hint() is None) == proven
    assert backend.default_backend_description().startswith("cuda") == proven


def test_without_a_gpu_there_is_no_hint_and_numba_is_the_default(monkeypatch):
    monkeypatch.setattr(backend, "is_available", lambda name: name in ("numba", "numpy"))
    assert backend.default_backend() == "numba" and backend.backend_hint() is None


def test_the_trainer_prints_the_hint_once_when_left_on_the_default(gpu_machine, tmp_path, capsys):
    small = ["--data", "shapes:32", "--preset", "testing", "--image-size", "16", "--batch-size", "16", "--threads", "1",
             "--no-progress", "--epochs", "1", "--max-steps", "0"]  # fmt: skip
    assert "default: numba, else numpy" in " ".join(build_parser().format_help().split())
    main([*small, "--out", str(tmp_path / "default")])
    err = capsys.readouterr().err
    assert err.count("--backend cuda runs on it") == 1 and "backend numba" in err
    main([*small, "--out", str(tmp_path / "chosen"), "--backend", "numpy"])
    assert "--backend cuda" not in capsys.readouterr().err

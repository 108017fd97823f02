"""tinyvit.visualize: every figure draws from a real model's numbers, and the command writes the PNGs."""

import builtins

import numpy as np
import pytest
from PIL import Image

from tinyvit import ViT, get_preset
from tinyvit import visualize as vis
from tinyvit.analysis import mean_attention_distance
from tinyvit.checkpoint import save_checkpoint

plt = pytest.importorskip(
    "matplotlib.pyplot", reason="matplotlib is in the test and lessons extras"
)
CFG = get_preset("testing")


def _model_and_probs():
    model = ViT(CFG, seed=0, dtype=np.float64)
    images = np.random.default_rng(0).integers(
        0, 256, size=(3, 8, 8, 3), dtype=np.uint8
    )
    _, probs = model.forward(images / 255.0, return_attention=True)
    return model, images, probs


def _titles(fig):
    return (
        [fig._suptitle.get_text()]
        if fig._suptitle
        else [ax.get_title() for ax in fig.axes]
    )


def test_every_figure_draws_with_a_title_that_names_what_it_shows():
    model, images, probs = _model_and_probs()
    params = model.numpy_params()
    figures = {
        "patch": vis.patches_figure(images[0], CFG.patch_size),
        "figure 6": vis.attention_figure(images, probs, CFG.grid_size, ["a", "b", "c"]),
        "figure 7, right": vis.attention_distance_figure(
            mean_attention_distance(probs, CFG.grid_size, CFG.patch_size),
            CFG.image_size,
        ),
        "figure 7, centre": vis.pos_embed_similarity_figure(params["pos_embed"]),
        "figure 7, left": vis.embedding_filters_figure(
            params["patch_embed.weight"], CFG.patch_size, CFG.channels
        ),
    }
    for expected, fig in figures.items():
        assert any(expected in t for t in _titles(fig)), (
            f"{expected!r} not in the titles {_titles(fig)}"
        )
        plt.close(fig)
    distance = vis.attention_distance_figure(np.ones((2, 2)), 8)
    assert distance.axes[0].get_ylabel() == "mean attention distance (pixels)"
    plt.close(distance)


def test_the_command_writes_five_pngs_for_a_checkpoint(tmp_path):
    model = ViT(CFG, seed=0)
    state = {
        "mean": [0.5, 0.5, 0.5],
        "std": [0.25, 0.25, 0.25],
        "class_names": ["x", "y", "z"],
    }
    ckpt = save_checkpoint(tmp_path / "ck.npz", model.numpy_params(), CFG, state)
    image = tmp_path / "in.png"
    Image.fromarray(
        np.random.default_rng(0).integers(0, 256, size=(20, 20, 3), dtype=np.uint8)
    ).save(image)
    assert (
        vis.main(
            [
                "--checkpoint",
                str(ckpt),
                "--image",
                str(image),
                str(image),
                "--out",
                str(tmp_path / "f"),
            ]
        )
        == 0
    )
    written = sorted(p.name for p in (tmp_path / "f").iterdir())
    expected = ["attention.png", "attention_distance.png", "embedding_filters.png", "patches.png",
                "pos_embed_similarity.png"]  # fmt: skip
    assert written == expected
    for name in written:
        with Image.open(tmp_path / "f" / name) as png:
            assert png.format == "PNG" and png.size[0] > 200


def test_the_command_reports_a_missing_checkpoint(tmp_path, capsys):
    assert (
        vis.main(
            [
                "--checkpoint",
                str(tmp_path / "no.npz"),
                "--image",
                "x.png",
                "--out",
                str(tmp_path),
            ]
        )
        == 2
    )
    assert "does not exist" in capsys.readouterr().err


def test_without_matplotlib_the_error_says_how_to_install_it(monkeypatch):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(ImportError, match=r"pip install -e '\.\[lessons\]'"):
        vis.pyplot()

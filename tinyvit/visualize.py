"""The lessons' figures as functions, and a command that writes them for a trained model.

    python -m tinyvit.visualize --checkpoint runs/cifar10/checkpoint.npz --image cat.jpg dog.png --out figures/

writes five PNGs into the output folder, each a figure of Dosovitskiy et al.
(ICLR 2021) drawn from the checkpoint's own model (any checkpoint
tinyvit.load_pretrained reads, with a class token):

    patches.png          the first image cut into patches, as the model reads it (figure 1, left)
    attention.png        the class token's attention in the last block, and attention rollout (figure 6)
    attention_distance.png  mean attention distance per head and block (figure 7, right)
    pos_embed_similarity.png  cosine similarity of the position embeddings (figure 7, centre)
    embedding_filters.png  principal components of the patch-embedding filters (figure 7, left)

Each `*_figure` function returns a matplotlib Figure, so a notebook shows it
and a script saves it. The numbers come from tinyvit.analysis; this module only
draws. matplotlib is optional: `pip install -e '.[lessons]'` brings it.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

from .analysis import (
    attention_rollout,
    class_attention_maps,
    filter_components,
    mean_attention_distance,
    pos_embed_similarity,
)
from .errors import UsageError
from .layers import patchify

INSTALL_HINT = "pip install -e '.[lessons]'"


def pyplot():
    """matplotlib.pyplot, or an ImportError that says how to install it."""
    try:
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError(
            f"tinyvit.visualize draws with matplotlib, which is not installed: {INSTALL_HINT}"
        ) from e
    return plt


def patches_figure(image: np.ndarray, patch_size: int):
    """An (H, W, C) uint8 image with its patch grid, and the patches in the order patchify reads them."""
    plt = pyplot()
    H, W, _ = image.shape
    patches = patchify(image[None].astype(np.float64), patch_size)[0]  # (N-1, P*P*C)
    grid = H // patch_size
    fig = plt.figure(figsize=(10, 3.6))
    ax = fig.add_axes([0.04, 0.12, 0.3, 0.76])
    ax.imshow(image, extent=(0, W, H, 0))
    for t in range(patch_size, H, patch_size):
        ax.axhline(t, color="white", lw=0.8)
        ax.axvline(t, color="white", lw=0.8)
    ax.set_xlabel("column (pixels)")
    ax.set_ylabel("row (pixels)")
    ax.set_title(f"{grid}x{grid} patches of {patch_size}x{patch_size} pixels")
    # the sequence: one small image per token, row-major, wrapped onto `grid` rows
    seq = fig.add_axes([0.42, 0.12, 0.56, 0.76])
    pad = 1
    canvas = np.ones(
        (grid * (patch_size + pad), 2 * grid * (patch_size + pad), image.shape[2])
    )
    for i, p in enumerate(patches):
        r, c = divmod(i, 2 * grid)
        y, x = r * (patch_size + pad), c * (patch_size + pad)
        canvas[y : y + patch_size, x : x + patch_size] = (
            p.reshape(patch_size, patch_size, -1) / 255.0
        )
    seq.imshow(
        canvas[: (len(patches) + 2 * grid - 1) // (2 * grid) * (patch_size + pad)]
    )
    seq.set_axis_off()
    seq.set_title(
        f"the sequence of {len(patches)} patch tokens, read row by row (figure 1)"
    )
    return fig


def attention_figure(images: np.ndarray, all_probs, grid: int, titles=None):
    """Per image: the image, the class token's last-block attention (heads averaged), and attention rollout.

    images (B, H, W, C) uint8; all_probs: every block's probs (B, H, N, N)."""
    plt = pyplot()
    last = class_attention_maps(all_probs[-1], grid).mean(axis=1)  # (B, grid, grid)
    rollout = attention_rollout(all_probs)[:, 0, 1:].reshape(
        -1, grid, grid
    )  # class token's row over patches
    B, side = len(images), images.shape[1]
    fig, axes = plt.subplots(3, B, figsize=(1.7 * B + 1.2, 5.6), squeeze=False)
    rows = [("image", None), ("last block", last), ("rollout", rollout)]
    for r, (label, maps) in enumerate(rows):
        for i in range(B):
            ax = axes[r, i]
            ax.imshow(images[i])
            if maps is not None:
                shown = ax.imshow(maps[i] / maps[i].max(), cmap="inferno", alpha=0.65, vmin=0, vmax=1,
                                  extent=(0, side, side, 0), interpolation="bilinear")  # fmt: skip
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0 and titles is not None:
                ax.set_title(titles[i], fontsize=9)
        axes[r, 0].set_ylabel(label)
    fig.colorbar(shown, ax=axes.ravel().tolist(), shrink=0.6, label="attention / its maximum")
    fig.suptitle("where the class token looks (figure 6: attention rollout)")
    return fig


def attention_distance_figure(mad: np.ndarray, image_size: int):
    """mad (depth, heads) in pixels, one dot per head at each block, as the paper's figure 7 (right)."""
    plt = pyplot()
    depth, heads = mad.shape
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for h in range(heads):
        ax.scatter(np.arange(1, depth + 1), mad[:, h], s=22, label=f"head {h + 1}")
    ax.set_xlabel("network depth (block)")
    ax.set_ylabel("mean attention distance (pixels)")
    ax.set_xticks(np.arange(1, depth + 1))
    ax.set_ylim(0, image_size * 0.75)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("how far each head looks (figure 7, right)")
    fig.tight_layout()
    return fig


def pos_embed_similarity_figure(pos_embed: np.ndarray):
    """pos_embed (N, D): for each patch position, its embedding's cosine similarity with every other's."""
    plt = pyplot()
    sim = pos_embed_similarity(pos_embed)  # (g, g, g, g)
    g = sim.shape[0]
    fig, axes = plt.subplots(g, g, figsize=(6.4, 6), squeeze=False)
    for r in range(g):
        for c in range(g):
            shown = axes[r, c].imshow(sim[r, c], cmap="viridis", vmin=-1, vmax=1)
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
        axes[r, 0].set_ylabel(str(r + 1), rotation=0, labelpad=8, fontsize=8)
    for c in range(g):
        axes[-1, c].set_xlabel(str(c + 1), fontsize=8)
    fig.supxlabel("input patch column")
    fig.supylabel("input patch row")
    fig.colorbar(shown, ax=axes.ravel().tolist(), shrink=0.7, label="cosine similarity")
    fig.suptitle("position-embedding similarity (figure 7, centre)")
    return fig


def embedding_filters_figure(
    weight: np.ndarray, patch_size: int, channels: int, k: int = 28
):
    """patch_embed.weight (P*P*C, D): its first k principal components as small RGB images."""
    plt = pyplot()
    comps, explained = filter_components(weight, patch_size, channels, k)
    cols = 7
    rows = -(-len(comps) // cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(1.3 * cols, 1.45 * rows + 0.6), squeeze=False
    )
    for ax in axes.ravel():
        ax.set_axis_off()
    for i, (comp, frac) in enumerate(zip(comps, explained)):
        ax = axes.ravel()[i]
        shown = (comp + 1.0) / 2.0  # [-1, 1] -> [0, 1]; grey is zero
        ax.imshow(
            shown if channels == 3 else shown[..., 0],
            cmap=None if channels == 3 else "gray",
            vmin=0,
            vmax=1,
        )
        ax.set_title(f"{i + 1}: {frac:.0%}", fontsize=8)
    fig.suptitle(f"principal components of the {weight.shape[1]} patch-embedding filters, "
                 "with the share of variance each explains (figure 7, left)", fontsize=10)  # fmt: skip
    fig.tight_layout()
    return fig


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tinyvit.visualize",
        description="Draw the paper's figures 1, 6 and 7 for a trained checkpoint, as PNG files.",
    )
    parser.add_argument(
        "--checkpoint", required=True, help="a checkpoint: tinyvit.train's, official (.npz) or timm (.safetensors)"
    )
    parser.add_argument(
        "--image",
        required=True,
        nargs="+",
        metavar="IMAGE",
        help="image files (any format Pillow reads)",
    )
    parser.add_argument(
        "--out", required=True, help="folder for the PNG files (created if missing)"
    )
    parser.add_argument(
        "--backend",
        default="numpy",
        help="backend that runs the model (default: numpy)",
    )
    args = parser.parse_args(argv)

    os.environ.setdefault("MPLBACKEND", "Agg")  # files only, no window
    from .data import normalize
    from .predict import class_names_for, load_image
    from .pretrained import load_pretrained

    try:
        plt = pyplot()
        model = load_pretrained(args.checkpoint, backend=args.backend)
        cfg = model.cfg
        if not cfg.has_class_token:
            raise UsageError(f"{args.checkpoint} pools its tokens (classifier='gap'): these figures read the class token")
        images = np.stack([load_image(f, cfg.image_size) for f in args.image])
        names = class_names_for(args.checkpoint, cfg.num_classes)
    except (ImportError, UsageError) as e:  # a missing package or bad input; anything else is a bug
        print(f"error: {e}", file=sys.stderr)
        return 2
    mean, std = (np.asarray(v, np.float32) for v in model.normalization)
    logits, probs = model.forward(normalize(images, mean, std, dtype=model.dtype), return_attention=True)
    params = model.numpy_params()

    figures = {
        "patches.png": patches_figure(images[0], cfg.patch_size),
        "attention.png": attention_figure(
            images, probs, cfg.grid_size, [names[k] for k in logits.argmax(axis=1)]
        ),
        "attention_distance.png": attention_distance_figure(
            mean_attention_distance(probs, cfg.grid_size, cfg.patch_size),
            cfg.image_size,
        ),
        "pos_embed_similarity.png": pos_embed_similarity_figure(params["pos_embed"]),
        "embedding_filters.png": embedding_filters_figure(
            params["patch_embed.weight"], cfg.patch_size, cfg.channels
        ),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, fig in figures.items():
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        print(out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())

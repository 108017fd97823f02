"""Pretrained ViTs: load the official and timm checkpoints and tinyvit's own; write the official layout.

    model = tinyvit.load_pretrained("ViT-B_16.npz")                   # google-research/vision_transformer
    model = tinyvit.load_pretrained("model.safetensors")              # timm, as on model hubs
    model = tinyvit.load_pretrained("runs/c10/checkpoint.npz")        # tinyvit.train
    model = tinyvit.load_pretrained("ViT-B_16.npz", num_classes=10, image_size=384)  # for fine-tuning
    tinyvit.save_official(model, "mine.npz")

The format is read from the file's contents, and the model's shape from the
arrays' shapes (patch size, width, depth, heads, MLP width, classes, grid).
Every layout is a table of Entry rows: one tinyvit parameter, the file's arrays
it comes from, and the two rearrangements between them. Loading checks every
name and shape against that table before reading any data; then the arrays are
read one at a time as the model takes them. An error leaves nothing behind.

What each layout computes, and so what the model is built with:
    official  GELU in its tanh form (flax's default), class token or global
              average pooling ("gap"), an optional pre_logits dense + tanh; inputs in [-1, 1]
    timm      exact (erf) GELU, class token, no pre_logits; mean and std from the
              config.json beside the file when there is one
    tinyvit   whatever its config says; the mean and std it was trained with

This module does not download anything (see docs/pretrained.md for where the files live).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .checkpoint import savez_atomic
from .config import ViTConfig
from .errors import UsageError
from .model import Normalization, ViT, param_shapes
from .posembed import pos_embed_table
from .resolution import resize_pos_embed
from .tensorfile import NPZ, CheckpointError, TensorFile

OFFICIAL, TIMM, TINYVIT = "official", "timm", "tinyvit"


# The official models read pixels scaled to [-1, 1]: (x - 0.5) / 0.5.
UNIT_RANGE = Normalization((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))

# A block's modules, as the released files number them and as today's flax does.
BLOCK_MODULES = {
    "legacy": ("LayerNorm_0", "MultiHeadDotProductAttention_1", "LayerNorm_2", "MlpBlock_3"),
    "linen": ("LayerNorm_0", "MultiHeadDotProductAttention_0", "LayerNorm_1", "MlpBlock_0"),
}
# timm's checkpoints do not say how many heads; these are the widths of the named ViTs.
HEADS_BY_WIDTH = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16, 1408: 16, 1664: 16}


@dataclass(frozen=True)
class Entry:
    """One tinyvit parameter and the file arrays it is made of."""

    name: str  # the tinyvit parameter
    keys: tuple[str, ...]  # the file's arrays, in the order to_tinyvit takes them
    shapes: tuple[tuple[int, ...], ...]  # their shapes in the file
    to_tinyvit: Callable  # (*file arrays) -> the tinyvit array
    to_file: Callable  # tinyvit array -> tuple of file arrays


def _same(name, key, shape):
    return Entry(name, (key,), (shape,), lambda a: a, lambda a: (a,))


def _reshaped(name, key, file_shape, own_shape):
    return Entry(name, (key,), (file_shape,), lambda a: a.reshape(own_shape), lambda a: (a.reshape(file_shape),))


def _transposed(name, key, file_shape):
    """A PyTorch linear weight (out, in) <-> tinyvit's (in, out)."""
    return Entry(name, (key,), (file_shape,), lambda a: a.T, lambda a: (a.T,))


def _three(name, keys, part_shape):
    """q, k, v of the official attention, side by side in tinyvit's qkv (columns [q | k | v]).

    Each part's last two axes (H, Dh) merge into one of width D, head-major as tinyvit's heads are."""

    def join(q, k, v):
        return np.concatenate([a.reshape(a.shape[:-2] + (-1,)) for a in (q, k, v)], axis=-1)

    def split(a):
        return tuple(part.reshape(part_shape) for part in np.split(a, 3, axis=-1))

    return Entry(name, keys, (part_shape,) * 3, join, split)


# -- the official layout ---------------------------------------------------------------------------


def official_layout(cfg: ViTConfig, numbering: str = "legacy") -> list[Entry]:
    """google-research/vision_transformer's names and shapes for a model of `cfg`."""
    D, H, Dh, M, K = cfg.dim, cfg.heads, cfg.head_dim, cfg.mlp_dim, cfg.num_classes
    P, C, N = cfg.patch_size, cfg.channels, cfg.num_tokens
    ln1, attn, ln2, mlp = BLOCK_MODULES[numbering]
    E = [_reshaped("patch_embed.weight", "embedding/kernel", (P, P, C, D), (P * P * C, D)),
         _same("patch_embed.bias", "embedding/bias", (D,))]  # fmt: skip
    if cfg.has_class_token:
        E.append(_reshaped("cls_token", "cls", (1, 1, D), (D,)))
    E.append(_reshaped("pos_embed", "Transformer/posembed_input/pos_embedding", (1, N, D), (N, D)))
    for i in range(cfg.depth):
        b, f = f"blocks.{i}.", f"Transformer/encoderblock_{i}/"
        a = f + attn + "/"
        E += [
            _same(b + "norm1.weight", f + ln1 + "/scale", (D,)),
            _same(b + "norm1.bias", f + ln1 + "/bias", (D,)),
            _three(b + "attn.qkv.weight", (a + "query/kernel", a + "key/kernel", a + "value/kernel"), (D, H, Dh)),
            _three(b + "attn.qkv.bias", (a + "query/bias", a + "key/bias", a + "value/bias"), (H, Dh)),
            _reshaped(b + "attn.proj.weight", a + "out/kernel", (H, Dh, D), (D, D)),
            _same(b + "attn.proj.bias", a + "out/bias", (D,)),
            _same(b + "norm2.weight", f + ln2 + "/scale", (D,)),
            _same(b + "norm2.bias", f + ln2 + "/bias", (D,)),
            _same(b + "mlp.fc1.weight", f + mlp + "/Dense_0/kernel", (D, M)),
            _same(b + "mlp.fc1.bias", f + mlp + "/Dense_0/bias", (M,)),
            _same(b + "mlp.fc2.weight", f + mlp + "/Dense_1/kernel", (M, D)),
            _same(b + "mlp.fc2.bias", f + mlp + "/Dense_1/bias", (D,)),
        ]
    E += [_same("norm.weight", "Transformer/encoder_norm/scale", (D,)),
          _same("norm.bias", "Transformer/encoder_norm/bias", (D,))]  # fmt: skip
    R = D
    if cfg.pre_logits is not None:
        R = cfg.pre_logits
        E += [_same("pre_logits.weight", "pre_logits/kernel", (D, R)), _same("pre_logits.bias", "pre_logits/bias", (R,))]
    E += [_same("head.weight", "head/kernel", (R, K)), _same("head.bias", "head/bias", (K,))]
    return E


def _official_config(shapes: dict, path) -> tuple[ViTConfig, str]:
    """The ViTConfig and block numbering of an official file, read from its shapes."""

    def need(key):
        if key not in shapes:
            raise CheckpointError(f"{path}: official layout, but no {key!r} (needed to read the model's shape)")
        return shapes[key]

    P, P2, C, D = _rank(need("embedding/kernel"), 4, "embedding/kernel", path)
    if P != P2:
        raise CheckpointError(f"{path}: patches of {P}x{P2} pixels; tinyvit's patches are square")
    blocks = {int(m.group(1)) for k in shapes if (m := re.match(r"Transformer/encoderblock_(\d+)/", k))}
    depth = max(blocks) + 1 if blocks else 0
    if depth == 0:
        raise CheckpointError(f"{path}: official layout, but no Transformer/encoderblock_* arrays")
    b0 = "Transformer/encoderblock_0/"
    numbering = next((n for n, mods in BLOCK_MODULES.items() if b0 + mods[1] + "/query/kernel" in shapes), None)
    if numbering is None:
        raise CheckpointError(f"{path}: no {b0}MultiHeadDotProductAttention_1/query/kernel (released numbering) "
                              "nor ..._0/query/kernel (today's flax numbering)")  # fmt: skip
    _, H, _ = _rank(shapes[b0 + BLOCK_MODULES[numbering][1] + "/query/kernel"], 3, "query/kernel", path)
    _, M = _rank(need(b0 + BLOCK_MODULES[numbering][3] + "/Dense_0/kernel"), 2, "Dense_0/kernel", path)
    classifier = "token" if "cls" in shapes else "gap"
    n = _rank(need("Transformer/posembed_input/pos_embedding"), 3, "pos_embedding", path)[1] - (classifier == "token")
    grid = _square_side(n, path)
    pre = shapes["pre_logits/kernel"][-1] if "pre_logits/kernel" in shapes else None
    K = shapes["head/kernel"][-1] if "head/kernel" in shapes else 1  # no head: one is attached on loading
    cfg = _config(path, image_size=grid * P, patch_size=P, channels=C, dim=D, depth=depth, heads=H, mlp_dim=M,
                  num_classes=K, gelu="tanh", classifier=classifier, pre_logits=pre)  # fmt: skip
    return cfg, numbering


# -- the timm layout -------------------------------------------------------------------------------


def timm_layout(cfg: ViTConfig) -> list[Entry]:
    """timm's VisionTransformer state-dict names and shapes for a model of `cfg`."""
    D, M, K, P, C, N = cfg.dim, cfg.mlp_dim, cfg.num_classes, cfg.patch_size, cfg.channels, cfg.num_tokens
    conv = (D, C, P, P)  # PyTorch's (out, in, kh, kw)
    E = [
        Entry("patch_embed.weight", ("patch_embed.proj.weight",), (conv,),
              lambda w: w.transpose(2, 3, 1, 0).reshape(P * P * C, D),
              lambda w: (w.reshape(P, P, C, D).transpose(3, 2, 0, 1),)),
        _same("patch_embed.bias", "patch_embed.proj.bias", (D,)),
        _reshaped("cls_token", "cls_token", (1, 1, D), (D,)),
        _reshaped("pos_embed", "pos_embed", (1, N, D), (N, D)),
    ]  # fmt: skip
    for i in range(cfg.depth):
        b = f"blocks.{i}."
        E += [
            _same(b + "norm1.weight", b + "norm1.weight", (D,)),
            _same(b + "norm1.bias", b + "norm1.bias", (D,)),
            _transposed(b + "attn.qkv.weight", b + "attn.qkv.weight", (3 * D, D)),
            _same(b + "attn.qkv.bias", b + "attn.qkv.bias", (3 * D,)),
            _transposed(b + "attn.proj.weight", b + "attn.proj.weight", (D, D)),
            _same(b + "attn.proj.bias", b + "attn.proj.bias", (D,)),
            _same(b + "norm2.weight", b + "norm2.weight", (D,)),
            _same(b + "norm2.bias", b + "norm2.bias", (D,)),
            _transposed(b + "mlp.fc1.weight", b + "mlp.fc1.weight", (M, D)),
            _same(b + "mlp.fc1.bias", b + "mlp.fc1.bias", (M,)),
            _transposed(b + "mlp.fc2.weight", b + "mlp.fc2.weight", (D, M)),
            _same(b + "mlp.fc2.bias", b + "mlp.fc2.bias", (D,)),
        ]
    E += [_same("norm.weight", "norm.weight", (D,)), _same("norm.bias", "norm.bias", (D,)),
          _transposed("head.weight", "head.weight", (K, D)), _same("head.bias", "head.bias", (K,))]  # fmt: skip
    return E


def _timm_config(shapes: dict, path, heads) -> ViTConfig:
    def need(key):
        if key not in shapes:
            raise CheckpointError(f"{path}: timm layout, but no {key!r} (needed to read the model's shape)")
        return shapes[key]

    D, C, P, P2 = _rank(need("patch_embed.proj.weight"), 4, "patch_embed.proj.weight", path)
    if P != P2:
        raise CheckpointError(f"{path}: patches of {P}x{P2} pixels; tinyvit's patches are square")
    if "cls_token" not in shapes:
        raise CheckpointError(f"{path}: a timm model without a class token (its own pooling and fc_norm) "
                              "is not a layout tinyvit reads; expected 'cls_token'")  # fmt: skip
    depth = 1 + max((int(m.group(1)) for k in shapes if (m := re.match(r"blocks\.(\d+)\.", k))), default=-1)
    if depth == 0:
        raise CheckpointError(f"{path}: timm layout, but no blocks.* arrays")
    M, _ = _rank(need("blocks.0.mlp.fc1.weight"), 2, "blocks.0.mlp.fc1.weight", path)
    grid = _square_side(_rank(need("pos_embed"), 3, "pos_embed", path)[1] - 1, path)
    K = shapes["head.weight"][0] if "head.weight" in shapes else 1  # no head: one is attached on loading
    if heads is None:
        heads = _heads_from_config_json(path)
    if heads is None:
        heads = HEADS_BY_WIDTH.get(D)
    if heads is None:
        raise CheckpointError(f"{path}: a timm checkpoint does not say how many heads its width {D} has; "
                              "pass heads=H (or --heads H)")  # fmt: skip
    return _config(path, image_size=grid * P, patch_size=P, channels=C, dim=D, depth=depth, heads=heads,
                   mlp_dim=M, num_classes=K, gelu="erf", classifier="token", pre_logits=None)  # fmt: skip


def _config_json(path) -> dict:
    """The config.json a model hub keeps beside a timm checkpoint, or {}."""
    f = Path(path).with_name("config.json")
    if not f.is_file():
        return {}
    try:
        d = json.loads(f.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{f} (beside {path}) is not readable JSON: {e}") from e
    return d if isinstance(d, dict) else {}


def _heads_from_config_json(path):
    d = _config_json(path)
    for where in (d, d.get("model_args") or {}):
        if isinstance(where, dict) and isinstance(where.get("num_heads"), int):
            return where["num_heads"]
    return None


def _timm_normalization(path) -> Normalization:
    d = _config_json(path)
    cfg = d.get("pretrained_cfg") if isinstance(d.get("pretrained_cfg"), dict) else d
    mean, std = cfg.get("mean"), cfg.get("std")
    if mean is None or std is None:
        return UNIT_RANGE  # the ViT weights timm ported from the official ones
    return Normalization(tuple(float(v) for v in mean), tuple(float(v) for v in std))


# -- tinyvit's own layout --------------------------------------------------------------------------


def tinyvit_layout(cfg: ViTConfig) -> list[Entry]:
    return [_same(name, "param/" + name, shape) for name, shape in param_shapes(cfg).items()]


# -- shared helpers --------------------------------------------------------------------------------


def _rank(shape, rank, name, path):
    if len(shape) != rank:
        raise CheckpointError(f"{path}: {name} has shape {shape}, expected rank {rank}")
    return shape


def _square_side(n, path) -> int:
    g = round(max(n, 0) ** 0.5)
    if g < 1 or g * g != n:
        raise CheckpointError(f"{path}: the position embedding has {n} grid rows, expected a square number")
    return g


def _config(path, **fields) -> ViTConfig:
    try:
        return ViTConfig(**{k: (v if v is None or isinstance(v, str) else int(v)) for k, v in fields.items()})
    except ValueError as e:
        raise CheckpointError(f"{path}: its shapes make no valid ViT: {e}") from e


def _names(keys, limit=12) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


@dataclass
class Source:
    """What a checkpoint file holds: its format, the model, and how its arrays map onto tinyvit's."""

    format: str
    cfg: ViTConfig
    layout: list[Entry]
    prefix: str  # joined before every key of the layout
    ignored: frozenset  # keys that are not parameters (config, optimiser state)
    normalization: Normalization | None
    headless: bool = False  # the file has no classifier head (a backbone): loading needs num_classes

    def without_head(self) -> Source:
        """The same source, expecting no head arrays in the file."""
        self.layout = [e for e in self.layout if not e.name.startswith("head.")]
        self.headless = True
        return self


def identify(tf: TensorFile, heads=None) -> Source:
    """Recognise the layout of an open TensorFile and read the model's shape from it."""
    shapes, path = tf.shapes, tf.path
    if tf.kind == NPZ and "config" in shapes and "state" in shapes:
        try:
            cfg = ViTConfig.from_dict(json.loads(str(tf.read("config"))))
            state = json.loads(str(tf.read("state")))
        except (json.JSONDecodeError, TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: a tinyvit checkpoint with a malformed config or state: {e}") from e
        norm = Normalization(tuple(state["mean"]), tuple(state["std"])) if "mean" in state and "std" in state else None
        ignored = frozenset(k for k in shapes if k in ("config", "state") or k.startswith(("opt/", "ema/")))
        return Source(TINYVIT, cfg, tinyvit_layout(cfg), "", ignored, norm)
    if tf.kind == NPZ:
        prefix = "opt/target/" if any(k.startswith("opt/target/") for k in shapes) else ""
        if not prefix and "embedding/kernel" not in shapes:
            raise CheckpointError(f"{path}: an .npz that is neither an official ViT checkpoint (no 'embedding/kernel') "
                                  f"nor a tinyvit one (no 'config' and 'state'); it holds {_names(shapes, 6)}")  # fmt: skip
        inner = {k[len(prefix):]: s for k, s in shapes.items() if k.startswith(prefix)}
        cfg, numbering = _official_config(inner, path)
        # an optimiser's checkpoint keeps its own state beside the parameters under opt/
        ignored = frozenset(k for k in shapes if prefix and not k.startswith(prefix))
        src = Source(OFFICIAL, cfg, official_layout(cfg, numbering), prefix, ignored, UNIT_RANGE)
        return src.without_head() if not {"head/kernel", "head/bias"} & set(inner) else src
    cfg = _timm_config(shapes, path, heads)
    src = Source(TIMM, cfg, timm_layout(cfg), "", frozenset(), _timm_normalization(path))
    return src.without_head() if not {"head.weight", "head.bias"} & set(shapes) else src


def check_arrays(tf: TensorFile, src: Source) -> None:
    """Raise CheckpointError naming every missing, unexpected and misshapen array (all of them at once)."""
    expected = {}
    for e in src.layout:
        for key, shape in zip(e.keys, e.shapes):
            expected[src.prefix + key] = shape
    found = {k: s for k, s in tf.shapes.items() if k not in src.ignored}
    missing = set(expected) - set(found)
    extra = set(found) - set(expected)
    misshapen = [f"{k} expected {expected[k]}, found {found[k]}" for k in sorted(set(expected) & set(found))
                 if tuple(found[k]) != tuple(expected[k])]  # fmt: skip
    not_float = [f"{k} ({tf.dtypes[k]})" for k in sorted(set(expected) & set(found)) if tf.dtypes[k].kind != "f"]
    problems = []
    if missing:
        problems.append(f"missing {_names(missing)}")
    if extra:
        problems.append(f"unexpected {_names(extra)}")
    if misshapen:
        problems.append("misshapen " + "; ".join(misshapen[:12]) + (f" and {len(misshapen) - 12} more" if len(misshapen) > 12 else ""))
    if not_float:
        problems.append("not floating point " + ", ".join(not_float[:12]))
    if problems:
        c = src.cfg
        raise CheckpointError(f"{tf.path} ({src.format} layout, read as patch {c.patch_size}, width {c.dim}, depth {c.depth}, "
                              f"heads {c.heads}, MLP {c.mlp_dim}, {c.num_classes} classes): " + "; ".join(problems))  # fmt: skip


class _LazyParams(Mapping):
    """tinyvit parameters that are read from the file when asked for, one at a time."""

    def __init__(self, tf: TensorFile, src: Source, made: dict):
        self.tf, self.src, self.made = tf, src, made  # made: name -> array built without the file
        self.entries = {e.name: e for e in src.layout}

    def __getitem__(self, name):
        if name in self.made:
            return self.made[name]
        e = self.entries[name]
        return np.ascontiguousarray(e.to_tinyvit(*(self.tf.read(self.src.prefix + k) for k in e.keys)))

    def __iter__(self):
        return iter(list(self.made) + [n for n in self.entries if n not in self.made])

    def __len__(self):
        return len(set(self.made) | set(self.entries))


def read_config(path, heads=None) -> ViTConfig:
    """The ViTConfig of a checkpoint file, read from its headers alone (no array is loaded)."""
    with TensorFile(path) as tf:
        return identify(tf, heads).cfg


def load_pretrained(path, *, num_classes=None, image_size=None, backend=None, dtype=np.float32, heads=None,
                    normalization=None) -> ViT:
    """A ViT built from a checkpoint file alone: official (.npz), timm (.safetensors) or tinyvit (.npz).

    num_classes    another class count: a new zero head, and pre_logits dropped (as the official
                   fine-tuning code does); None keeps the file's head
    image_size     another resolution: the position embedding is interpolated on its 2-D grid
                   (bilinear, corners aligned, the class token's row kept apart)
    backend        a backend name (default: the fastest available); dtype float32 or float64
    heads          timm files do not record the head count; this overrides the guess by width
    normalization  (mean, std) to use instead of the file's (model.normalization)

    Raises CheckpointError (a UsageError, so a ValueError) naming what the file lacks or holds in excess.
    """
    from .backend import default_backend

    with TensorFile(path) as tf:
        src = identify(tf, heads)
        check_arrays(tf, src)
        cfg, made = src.cfg, {}
        if num_classes is not None and (num_classes != cfg.num_classes or src.headless):
            if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
                raise UsageError(f"num_classes must be a positive integer, got {num_classes!r}")
            cfg = cfg.replace(num_classes=int(num_classes), pre_logits=None)
            made["head.weight"] = np.zeros((cfg.dim, cfg.num_classes), np.float32)
            made["head.bias"] = np.zeros(cfg.num_classes, np.float32)
        elif src.headless:
            raise CheckpointError(f"{path} has no classifier head: pass num_classes=K to attach a new one")
        if image_size is not None and image_size != cfg.image_size:
            if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 1 \
                    or image_size % cfg.patch_size:  # fmt: skip
                raise UsageError(f"image_size must be a positive multiple of the patch size {cfg.patch_size}, "
                                 f"got {image_size!r}")  # fmt: skip
            cfg = cfg.replace(image_size=int(image_size))
            if "pos_embed" in param_shapes(cfg):  # a learned table; a fixed one ("sincos2d") is made at any size
                old = _LazyParams(tf, src, {})["pos_embed"]
                made["pos_embed"] = resize_pos_embed(old, cfg.grid_size, has_class_token=cfg.has_class_token)
                del old
        src.layout = [e for e in src.layout if e.name in param_shapes(cfg)]
        norm = normalization if normalization is not None else (src.normalization or UNIT_RANGE)
        try:
            return ViT(cfg, dtype=dtype, backend=backend or default_backend(), params=_LazyParams(tf, src, made),
                       normalization=norm)  # fmt: skip
        except CheckpointError:
            raise
        except ValueError as e:  # values the checks of names and shapes cannot see: NaN, infinity
            raise CheckpointError(f"{path} does not hold a usable model: {e}") from e


def save_official(model: ViT, path, numbering: str = "legacy") -> Path:
    """Write `model` in google-research/vision_transformer's layout (.npz), atomically.

    numbering "legacy" writes the released files' module names (LayerNorm_0,
    MultiHeadDotProductAttention_1, LayerNorm_2, MlpBlock_3); "linen" today's flax names.
    The official code computes GELU in its tanh form: a model with gelu="erf" is
    written all the same, and its logits there differ slightly from tinyvit's. A fixed
    position embedding (pos_embed "sincos2d" or "none") is written as the table it adds,
    so the file loads as a model with a learned one and the same logits.
    """
    if numbering not in BLOCK_MODULES:
        raise ValueError(f"numbering must be one of {sorted(BLOCK_MODULES)}, got {numbering!r}")
    if model.cfg.rel_pos_bias:
        raise ValueError("the official layout has no relative position bias: a model with rel_pos_bias "
                         "cannot be written in it (save a tinyvit checkpoint instead)")  # fmt: skip
    params = model.numpy_params()
    if "pos_embed" not in params:  # a fixed table is written as the learned one it equals
        params["pos_embed"] = pos_embed_table(model.cfg, params).astype(model.dtype)
    arrays = {}
    for e in official_layout(model.cfg, numbering):
        for key, a in zip(e.keys, e.to_file(params[e.name])):
            arrays[key] = np.ascontiguousarray(a)
    return savez_atomic(path, **arrays)

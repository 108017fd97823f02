"""Checkpoint files in other projects' layouts, made from random numbers, and the logits they define.

A helper module for tests/test_pretrained.py, not a test file. It knows the
layouts from their definitions (not from tinyvit.pretrained), and computes a
ViT's logits straight from a file's arrays with einsums: a second, independent
implementation that shares no code with tinyvit's layers.

    official_arrays(spec, rng)   name -> array, google-research/vision_transformer's
                                 names and shapes (today's flax numbering)
    legacy_names(arrays)         the same, renamed as the released files number modules
    official_logits(arrays, spec, images)
    timm_arrays(spec, rng), timm_logits(arrays, spec, images), write_safetensors(path, arrays)
"""

from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass

import numpy as np
from scipy.special import erf


@dataclass(frozen=True)
class Spec:
    image: int = 8
    patch: int = 4
    channels: int = 3
    width: int = 8
    depth: int = 2
    heads: int = 2
    mlp: int = 12
    classes: int = 5
    classifier: str = "token"  # or "gap"
    representation: int | None = None  # the pre_logits width

    @property
    def tokens(self):
        return (self.image // self.patch) ** 2 + (self.classifier == "token")


def official_arrays(s: Spec, rng) -> dict[str, np.ndarray]:
    """Random parameters under the names and shapes a flax (linen) VisionTransformer has."""
    D, H, M, P, C = s.width, s.heads, s.mlp, s.patch, s.channels
    shapes = {"embedding/kernel": (P, P, C, D), "embedding/bias": (D,),
              "Transformer/posembed_input/pos_embedding": (1, s.tokens, D),
              "Transformer/encoder_norm/scale": (D,), "Transformer/encoder_norm/bias": (D,)}  # fmt: skip
    if s.classifier == "token":
        shapes["cls"] = (1, 1, D)
    for i in range(s.depth):
        b = f"Transformer/encoderblock_{i}/"
        for ln in ("LayerNorm_0", "LayerNorm_1"):
            shapes[f"{b}{ln}/scale"] = shapes[f"{b}{ln}/bias"] = (D,)
        for t in ("query", "key", "value"):
            shapes[f"{b}MultiHeadDotProductAttention_0/{t}/kernel"] = (D, H, D // H)
            shapes[f"{b}MultiHeadDotProductAttention_0/{t}/bias"] = (H, D // H)
        shapes[f"{b}MultiHeadDotProductAttention_0/out/kernel"] = (H, D // H, D)
        shapes[f"{b}MultiHeadDotProductAttention_0/out/bias"] = (D,)
        shapes[f"{b}MlpBlock_0/Dense_0/kernel"], shapes[f"{b}MlpBlock_0/Dense_0/bias"] = (D, M), (M,)
        shapes[f"{b}MlpBlock_0/Dense_1/kernel"], shapes[f"{b}MlpBlock_0/Dense_1/bias"] = (M, D), (D,)
    R = D
    if s.representation:
        R = s.representation
        shapes["pre_logits/kernel"], shapes["pre_logits/bias"] = (D, R), (R,)
    shapes["head/kernel"], shapes["head/bias"] = (R, s.classes), (s.classes,)
    out = {}
    for k, shape in shapes.items():
        scale = 1.0 / math.sqrt(shape[0]) if k.endswith("kernel") and len(shape) > 1 else 0.5
        a = rng.normal(0.0, scale, size=shape)
        if k.endswith("scale"):
            a = 1.0 + 0.2 * a
        out[k] = a
    return out


LINEN_TO_LEGACY = {"MultiHeadDotProductAttention_0": "MultiHeadDotProductAttention_1",
                   "LayerNorm_1": "LayerNorm_2", "MlpBlock_0": "MlpBlock_3"}  # fmt: skip


def legacy_names(arrays: dict) -> dict:
    """Rename a block's modules as the released checkpoints number them (one counter per block)."""

    def rename(k):
        return re.sub(r"(encoderblock_\d+/)(\w+?_\d)(?=/)", lambda m: m.group(1) + LINEN_TO_LEGACY.get(m.group(2), m.group(2)), k)

    return {rename(k): v for k, v in arrays.items()}


def _layernorm(x, scale, bias, eps=1e-6):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * scale + bias


def gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def gelu_erf(x):
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def _softmax(z):
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def official_logits(a: dict, s: Spec, images) -> np.ndarray:
    """Logits of the official ViT for (B, H, W, C) images, from its arrays (linen names), in float64."""
    P, g = s.patch, s.image // s.patch
    B = images.shape[0]
    # the patch convolution as one einsum over each (P, P, C) window
    win = images.reshape(B, g, P, g, P, s.channels)
    x = np.einsum("bipjqc,pqcd->bijd", win, a["embedding/kernel"]).reshape(B, g * g, -1) + a["embedding/bias"]
    if s.classifier == "token":
        x = np.concatenate([np.broadcast_to(a["cls"], (B, 1, s.width)), x], axis=1)
    x = x + a["Transformer/posembed_input/pos_embedding"]
    for i in range(s.depth):
        b = f"Transformer/encoderblock_{i}/"
        at = b + "MultiHeadDotProductAttention_0/"
        h = _layernorm(x, a[b + "LayerNorm_0/scale"], a[b + "LayerNorm_0/bias"])
        q, k, v = (np.einsum("bnd,dhe->bnhe", h, a[at + t + "/kernel"]) + a[at + t + "/bias"] for t in ("query", "key", "value"))
        w = _softmax(np.einsum("bnhe,bmhe->bhnm", q, k) / math.sqrt(q.shape[-1]))
        o = np.einsum("bhnm,bmhe->bnhe", w, v)
        x = x + np.einsum("bnhe,hed->bnd", o, a[at + "out/kernel"]) + a[at + "out/bias"]
        h = _layernorm(x, a[b + "LayerNorm_1/scale"], a[b + "LayerNorm_1/bias"])
        h = gelu_tanh(h @ a[b + "MlpBlock_0/Dense_0/kernel"] + a[b + "MlpBlock_0/Dense_0/bias"])
        x = x + h @ a[b + "MlpBlock_0/Dense_1/kernel"] + a[b + "MlpBlock_0/Dense_1/bias"]
    x = _layernorm(x, a["Transformer/encoder_norm/scale"], a["Transformer/encoder_norm/bias"])
    x = x[:, 0] if s.classifier == "token" else x.mean(axis=1)
    if s.representation:
        x = np.tanh(x @ a["pre_logits/kernel"] + a["pre_logits/bias"])
    return x @ a["head/kernel"] + a["head/bias"]


def timm_arrays(s: Spec, rng) -> dict[str, np.ndarray]:
    """Random parameters under timm's VisionTransformer state-dict names (PyTorch shapes)."""
    D, M, P, C = s.width, s.mlp, s.patch, s.channels
    shapes = {"cls_token": (1, 1, D), "pos_embed": (1, s.tokens, D),
              "patch_embed.proj.weight": (D, C, P, P), "patch_embed.proj.bias": (D,),
              "norm.weight": (D,), "norm.bias": (D,), "head.weight": (s.classes, D), "head.bias": (s.classes,)}  # fmt: skip
    for i in range(s.depth):
        b = f"blocks.{i}."
        shapes.update({b + "norm1.weight": (D,), b + "norm1.bias": (D,), b + "norm2.weight": (D,), b + "norm2.bias": (D,),
                       b + "attn.qkv.weight": (3 * D, D), b + "attn.qkv.bias": (3 * D,),
                       b + "attn.proj.weight": (D, D), b + "attn.proj.bias": (D,),
                       b + "mlp.fc1.weight": (M, D), b + "mlp.fc1.bias": (M,),
                       b + "mlp.fc2.weight": (D, M), b + "mlp.fc2.bias": (D,)})  # fmt: skip
    out = {}
    for k, shape in shapes.items():
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 4
        a = rng.normal(0.0, 1.0 / math.sqrt(fan_in), size=shape)
        out[k] = 1.0 + 0.2 * a if re.search(r"norm\d?\.weight$", k) else a
    return out


def timm_logits(a: dict, s: Spec, images) -> np.ndarray:
    """Logits of timm's ViT from its state dict, images (B, H, W, C), in float64."""
    B, D, H = images.shape[0], s.width, s.heads
    chw = images.transpose(0, 3, 1, 2)  # PyTorch's (B, C, H, W)
    P, g = s.patch, s.image // s.patch
    win = chw.reshape(B, s.channels, g, P, g, P)
    x = np.einsum("bcipjq,dcpq->bijd", win, a["patch_embed.proj.weight"]).reshape(B, g * g, D) + a["patch_embed.proj.bias"]
    x = np.concatenate([np.broadcast_to(a["cls_token"], (B, 1, D)), x], axis=1) + a["pos_embed"]
    N = x.shape[1]
    for i in range(s.depth):
        b = f"blocks.{i}."
        h = _layernorm(x, a[b + "norm1.weight"], a[b + "norm1.bias"])
        qkv = (h @ a[b + "attn.qkv.weight"].T + a[b + "attn.qkv.bias"]).reshape(B, N, 3, H, D // H)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # (B, N, H, Dh)
        w = _softmax(np.einsum("bnhe,bmhe->bhnm", q, k) * (D // H) ** -0.5)
        o = np.einsum("bhnm,bmhe->bnhe", w, v).reshape(B, N, D)
        x = x + o @ a[b + "attn.proj.weight"].T + a[b + "attn.proj.bias"]
        h = _layernorm(x, a[b + "norm2.weight"], a[b + "norm2.bias"])
        h = gelu_erf(h @ a[b + "mlp.fc1.weight"].T + a[b + "mlp.fc1.bias"])
        x = x + h @ a[b + "mlp.fc2.weight"].T + a[b + "mlp.fc2.bias"]
    x = _layernorm(x, a["norm.weight"], a["norm.bias"])[:, 0]
    return x @ a["head.weight"].T + a["head.bias"]


def write_safetensors(path, arrays: dict, dtype="F64", metadata=None) -> None:
    """The safetensors container, from its definition: u64 header length, JSON header, raw bytes."""
    np_dtype = {"F64": "<f8", "F32": "<f4", "F16": "<f2"}[dtype]
    header, blobs, offset = {}, [], 0
    for k, v in arrays.items():
        raw = np.ascontiguousarray(v, dtype=np_dtype).tobytes()
        header[k] = {"dtype": dtype, "shape": list(v.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    if metadata:
        header["__metadata__"] = metadata
    text = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))

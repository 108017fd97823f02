"""ViTConfig: the one description of a model's shape, and the named presets.

Every other piece (the model, the trainer's flags, checkpoints, the lessons)
reads a model's shape from here. The paper's presets are Table 1 of
Dosovitskiy et al., "An Image is Worth 16x16 Words" (ICLR 2021).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

GELU_FORMS = ("erf", "tanh")
CLASSIFIERS = ("token", "gap")
POS_EMBEDS = ("learned", "sincos2d", "none")
_OPTIONS = ("gelu", "classifier", "pre_logits", "pos_embed", "rel_pos_bias")  # checked on their own, not as positive integers


@dataclass(frozen=True)
class ViTConfig:
    """The shape of a Vision Transformer.

    image_size  square input side in pixels (H = W)
    patch_size  P, side of a square patch; must divide image_size
    channels    C, colour channels of the input
    dim         D, the token width
    depth       number of transformer blocks
    heads       H, attention heads; must divide dim (Dh = D // H)
    mlp_dim     M, hidden width of each block's MLP
    num_classes K, outputs of the classifier head
    gelu        "erf": the exact GELU x Phi(x) (the paper, timm); "tanh": its tanh
                approximation, flax's default and so the official checkpoints'
    classifier  "token": the head reads the class token; "gap": no class token, the
                head reads the mean of all tokens after the final LayerNorm
    pre_logits  None, or the width of a dense + tanh layer before the head (the
                official ImageNet-21k checkpoints have one of width D)
    pos_embed   "learned": a trained (N, D) table (the paper); "sincos2d": a fixed table of
                sines and cosines of each patch's row and column (big_vision's), not a
                parameter, needs D divisible by 4; "none": no position information at all
    rel_pos_bias K: a learned bias per head added to the attention scores for each row and
                column offset between two patches, offsets clipped to [-K, K] (a table of
                (2K+1)^2 numbers per head and block, the same at every resolution); 0: none
    """

    image_size: int = 32
    patch_size: int = 4
    channels: int = 3
    dim: int = 192
    depth: int = 6
    heads: int = 3
    mlp_dim: int = 768
    num_classes: int = 10
    gelu: str = "erf"
    classifier: str = "token"
    pre_logits: int | None = None
    pos_embed: str = "learned"
    rel_pos_bias: int = 0

    def __post_init__(self):
        for field in dataclasses.fields(self):
            if field.name in _OPTIONS:
                continue
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ViTConfig.{field.name} must be a positive integer, got {value!r}")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"patch_size {self.patch_size} must divide image_size {self.image_size} "
                f"(remainder {self.image_size % self.patch_size})"
            )
        if self.dim % self.heads:
            raise ValueError(f"heads {self.heads} must divide dim {self.dim} (remainder {self.dim % self.heads})")
        if self.gelu not in GELU_FORMS:
            raise ValueError(f"ViTConfig.gelu must be one of {GELU_FORMS}, got {self.gelu!r}")
        if self.classifier not in CLASSIFIERS:
            raise ValueError(f"ViTConfig.classifier must be one of {CLASSIFIERS}, got {self.classifier!r}")
        if self.pos_embed not in POS_EMBEDS:
            raise ValueError(f"ViTConfig.pos_embed must be one of {POS_EMBEDS}, got {self.pos_embed!r}")
        if self.pos_embed == "sincos2d" and (self.dim % 4 or self.dim < 8):
            raise ValueError(f"pos_embed 'sincos2d' needs dim divisible by 4 and at least 8, got dim {self.dim}")
        k = self.rel_pos_bias
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError(f"ViTConfig.rel_pos_bias must be an integer >= 0 (0: none), got {k!r}")
        p = self.pre_logits
        if p is not None and (isinstance(p, bool) or not isinstance(p, int) or p < 1):
            raise ValueError(f"ViTConfig.pre_logits must be None or a positive integer, got {p!r}")

    @property
    def grid_size(self) -> int:
        """Patches along one side of the image."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        """N - 1: patch tokens, without the class token."""
        return self.grid_size**2

    @property
    def has_class_token(self) -> bool:
        """Whether a class token is prepended ("token" classifier) or not ("gap")."""
        return self.classifier == "token"

    @property
    def num_tokens(self) -> int:
        """N: patch tokens plus the class token (no class token with "gap")."""
        return self.num_patches + int(self.has_class_token)

    @property
    def head_dim(self) -> int:
        """Dh = D / H."""
        return self.dim // self.heads

    @property
    def patch_dim(self) -> int:
        """P*P*C, the length of one flattened patch."""
        return self.patch_size**2 * self.channels

    def forward_flops(self, batch: int = 1) -> int:
        """Matrix-product FLOPs of a forward pass over `batch` images (training is about three times that).

        Each block: the qkv, proj, fc1 and fc2 products on every token, then q k^T and probs v over all
        heads; around them the patch embedding and the head."""
        R, N, D, M = batch * self.num_tokens, self.num_tokens, self.dim, self.mlp_dim
        block = 2 * R * D * (3 * D + D + 2 * M) + 2 * 2 * batch * N * N * D
        return self.depth * block + 2 * batch * self.num_patches * self.patch_dim * D + 2 * batch * D * self.num_classes

    def replace(self, **changes) -> ViTConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ViTConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown ViTConfig fields {sorted(unknown)}; expected some of {sorted(names)}")
        return cls(**{k: v if k in _OPTIONS or v is None else int(v) for k, v in d.items()})


PRESETS: dict[str, ViTConfig] = {
    # Tiny enough for float64 finite differences over every parameter; tests and lessons share it.
    "testing": ViTConfig(image_size=8, patch_size=4, channels=3, dim=8, depth=2, heads=2, mlp_dim=16, num_classes=3),
    # CIFAR-sized (32 px): the benchmark model and smaller ones for a CPU budget.
    "cifar-small": ViTConfig(image_size=32, patch_size=4, dim=192, depth=6, heads=3, mlp_dim=768, num_classes=10),
    "cifar-narrow": ViTConfig(image_size=32, patch_size=4, dim=128, depth=6, heads=4, mlp_dim=256, num_classes=10),
    "cifar-fast": ViTConfig(image_size=32, patch_size=4, dim=128, depth=4, heads=4, mlp_dim=384, num_classes=10),
    # The paper's Table 1, at 224 px with 1000 classes.
    "vit-b16": ViTConfig(image_size=224, patch_size=16, dim=768, depth=12, heads=12, mlp_dim=3072, num_classes=1000),
    "vit-l16": ViTConfig(image_size=224, patch_size=16, dim=1024, depth=24, heads=16, mlp_dim=4096, num_classes=1000),
    "vit-h14": ViTConfig(image_size=224, patch_size=14, dim=1280, depth=32, heads=16, mlp_dim=5120, num_classes=1000),
}


def get_preset(name: str, **overrides) -> ViTConfig:
    """The preset called `name`, with any fields overridden."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}")
    cfg = PRESETS[name]
    return cfg.replace(**overrides) if overrides else cfg

"""The Vision Transformer: parameters, the forward pass and its hand-written backward.

    images (B, H, W, C)
      -> patchify -> patch_embed           (B, N-1, D)
      -> prepend cls_token, add pos_embed  (B, N, D)
      -> depth x pre-LN block:
             x = x + proj(attention(qkv(norm1(x))))
             x = x + fc2(gelu(fc1(norm2(x))))
      -> class token row -> norm -> head   (B, K)

The final LayerNorm is applied to the class token only: LayerNorm works row by
row, so this gives the same logits and gradients as normalising every token and
then reading row 0, without the wasted work.

Options of the official checkpoints (ViTConfig): `gelu="tanh"` computes fc1's GELU
in its tanh form; `classifier="gap"` has no class token (pos_embed covers the
patches alone) and pools by the mean over all tokens after the final LayerNorm;
`pre_logits=R` puts a dense layer of width R and a tanh before the head.
`pos_embed="sincos2d"` adds a fixed 2-D sine-cosine table instead of a learned one,
`pos_embed="none"` adds nothing (tinyvit.posembed). `rel_pos_bias=K` adds a learned
bias per head to the attention scores, by the patches' row and column offset (layers/rel_pos.py).

The forward and backward passes are pure functions of the parameters
(`forward`, `backward`, `loss_and_grads` below): they run on one backend from
tinyvit.backend and never call a kernel themselves, so the same code drives the
NumPy specification, the Numba CPU kernels, the CUDA kernels, and, traced and
compiled by XLA, the JAX backend. `ViT` holds a model's parameters and checks
its inputs around them.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .backend import get_backend
from .config import ViTConfig
from .errors import check_labels
from .posembed import fixed_table


def param_shapes(cfg: ViTConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter's name and shape, in forward order."""
    D, M, K = cfg.dim, cfg.mlp_dim, cfg.num_classes
    shapes = {"patch_embed.weight": (cfg.patch_dim, D), "patch_embed.bias": (D,)}
    if cfg.has_class_token:
        shapes["cls_token"] = (D,)
    if cfg.pos_embed == "learned":  # the fixed kinds are not parameters (tinyvit.posembed)
        shapes["pos_embed"] = (cfg.num_tokens, D)
    for i in range(cfg.depth):
        b = f"blocks.{i}."
        shapes.update({
            b + "norm1.weight": (D,), b + "norm1.bias": (D,),
            b + "attn.qkv.weight": (D, 3 * D), b + "attn.qkv.bias": (3 * D,),
            **({b + "attn.rel_pos": (cfg.heads, 2 * cfg.rel_pos_bias + 1, 2 * cfg.rel_pos_bias + 1)}
               if cfg.rel_pos_bias else {}),
            b + "attn.proj.weight": (D, D), b + "attn.proj.bias": (D,),
            b + "norm2.weight": (D,), b + "norm2.bias": (D,),
            b + "mlp.fc1.weight": (D, M), b + "mlp.fc1.bias": (M,),
            b + "mlp.fc2.weight": (M, D), b + "mlp.fc2.bias": (D,),
        })  # fmt: skip
    shapes.update({"norm.weight": (D,), "norm.bias": (D,)})
    R = D
    if cfg.pre_logits is not None:
        R = cfg.pre_logits
        shapes.update({"pre_logits.weight": (D, R), "pre_logits.bias": (R,)})
    shapes.update({"head.weight": (R, K), "head.bias": (K,)})
    return shapes


def count_params(cfg: ViTConfig) -> int:
    return sum(math.prod(s) for s in param_shapes(cfg).values())


ATTENTION_INITS = ("xavier", "mimetic")
# Mimetic initialisation (Trockman and Kolter, "Mimetic Initialization of Self-Attention
# Layers", ICML 2023): W_q W_k^T = ALPHA_QK Z1 + BETA_QK I and W_v W_proj = ALPHA_VO Z2 - BETA_VO I,
# Z1, Z2 with N(0, 1/D) entries; the values are the paper's for its small vision transformers.
MIMETIC = {"alpha_qk": 0.7, "beta_qk": 0.7, "alpha_vo": 0.4, "beta_vo": 0.4}


def init_params(cfg: ViTConfig, seed: int = 0, dtype=np.float32, attention: str = "xavier") -> dict[str, np.ndarray]:
    """Initialise as google-research/vision_transformer (the paper's code) does.

    - patch_embed: LeCun normal (std 1/sqrt(fan_in)), Flax's default for the patch convolution;
    - cls_token zeros; pos_embed normal with std 0.02;
    - qkv and proj: Xavier uniform; q, k and v are separate (D, D) maps in the reference,
      so each third of qkv gets the Xavier bound of a (D, D) matrix; biases zero;
    - MLP: Xavier uniform, biases normal with std 1e-6;
    - LayerNorms: weight 1, bias 0;
    - pre_logits (when there is one): LeCun normal, bias zero, flax's Dense defaults;
    - head: zeros, so every class starts equally likely and the first loss is log K;
    - relative position bias tables (rel_pos_bias): zeros, so attention starts as without them.
    Xavier keeps activations and gradients near unit scale through each block, which
    with pre-LN residuals lets a deep stack train from the start without a warm-up trick.

    attention="mimetic" replaces the qkv and proj weights by mimetic_attention_weights
    (the rest is drawn exactly as with "xavier").
    """
    if attention not in ATTENTION_INITS:
        raise ValueError(f"attention init must be one of {ATTENTION_INITS}, got {attention!r}")
    rng = np.random.default_rng(seed)

    def xavier(fan_in, fan_out, shape):
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-bound, bound, size=shape)

    D, M = cfg.dim, cfg.mlp_dim
    params = {}
    for name, shape in param_shapes(cfg).items():
        if name == "patch_embed.weight":
            value = rng.normal(0.0, 1.0 / math.sqrt(cfg.patch_dim), size=shape)
        elif name == "pre_logits.weight":
            value = rng.normal(0.0, 1.0 / math.sqrt(D), size=shape)
        elif name == "pos_embed":
            value = rng.normal(0.0, 0.02, size=shape)
        elif name.endswith(("attn.qkv.weight", "attn.proj.weight")):
            value = xavier(D, D, shape)
        elif name.endswith("mlp.fc1.weight"):
            value = xavier(D, M, shape)
        elif name.endswith("mlp.fc2.weight"):
            value = xavier(M, D, shape)
        elif name.endswith(("mlp.fc1.bias", "mlp.fc2.bias")):
            value = rng.normal(0.0, 1e-6, size=shape)
        elif name.endswith(("norm1.weight", "norm2.weight")) or name == "norm.weight":
            value = np.ones(shape)
        else:  # the other biases, cls_token, head
            value = np.zeros(shape)
        params[name] = value.astype(dtype)
    if attention == "mimetic":
        mimetic = np.random.default_rng([seed, 1])  # its own stream: the other parameters stay as with xavier
        for i in range(cfg.depth):
            b = f"blocks.{i}.attn."
            wq, wk, wv, wproj = mimetic_attention_weights(cfg.dim, mimetic)
            params[b + "qkv.weight"] = np.concatenate([wq, wk, wv], axis=1).astype(dtype)  # (D, 3D): [q | k | v]
            params[b + "proj.weight"] = wproj.astype(dtype)
    return params


def _factor(product: np.ndarray, perm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two (D, D) matrices L, R with L @ R = product: the SVD U S V^T split as (U sqrt S)(sqrt S V^T).

    The singular directions are shuffled by perm (the same for both factors, so the product
    stays) so that each head, which owns D/H consecutive columns of L, gets a mix of them
    rather than the largest or the smallest."""
    u, s, vt = np.linalg.svd(product)
    root = np.sqrt(s)
    return (u * root)[:, perm], (root[:, None] * vt)[perm]


def mimetic_attention_weights(D: int, rng) -> tuple[np.ndarray, ...]:
    """W_q, W_k, W_v, W_proj, each (D, D), float64, for tokens as rows (q = x W_q):

        W_q W_k^T = alpha_qk Z1 + beta_qk I   every token's query points at its own key
                                              (summed over heads), as in trained attention
        W_v W_proj = alpha_vo Z2 - beta_vo I  the value-output map is near minus the identity

    with Z1, Z2 drawn N(0, 1/D) (MIMETIC holds the alphas and betas)."""
    m, eye = MIMETIC, np.eye(D)
    z1, z2 = rng.normal(0.0, 1.0 / math.sqrt(D), size=(2, D, D))
    wq, wk_t = _factor(m["alpha_qk"] * z1 + m["beta_qk"] * eye, rng.permutation(D))
    wv, wproj = _factor(m["alpha_vo"] * z2 - m["beta_vo"] * eye, rng.permutation(D))
    return wq, wk_t.T, wv, wproj


class BlockCache(NamedTuple):
    """What one block's backward needs: the cache of each of its layers, in forward order."""

    norm1: tuple
    qkv: tuple
    attn: tuple
    proj: tuple
    norm2: tuple
    fc1: tuple
    fc2: tuple
    rel_pos: tuple | None = None  # the relative position bias's cache, without one None


class ModelCache(NamedTuple):
    """What the whole model's backward needs."""

    patchify: tuple
    patch_embed: tuple
    embed: tuple
    blocks: list  # one BlockCache per block
    pool: tuple  # the class token's row, or the mean over tokens ("gap")
    norm: tuple
    pre_logits: tuple | None  # (dense cache, tanh cache), or None without pre_logits
    head: tuple


def forward(cfg: ViTConfig, ops, params: dict, images, keep_cache: bool = True):
    """images (B, H, W, C) -> logits (B, K) and the ModelCache backward needs.

    keep_cache=False (inference) returns (logits, None) and keeps no block's cache, so
    each block's activations are freed as the next block runs: the peak memory is
    one block's, not the whole network's."""
    p = params
    x, c_patchify = ops.patchify_forward(images, cfg.patch_size)  # (B, N-1, P*P*C)
    x, c_patch = ops.linear_forward(x, p["patch_embed.weight"], p["patch_embed.bias"])  # (B, N-1, D)
    pos = p["pos_embed"] if cfg.pos_embed == "learned" else _fixed_pos_embed(cfg, ops, p["patch_embed.weight"])
    if cfg.has_class_token:
        x, c_embed = ops.embed_forward(x, p["cls_token"], pos)  # (B, N, D)
    elif pos is not None:
        x, c_embed = ops.pos_embed_forward(x, pos)  # (B, N, D), N = patches only
    else:  # "gap" with no position embedding: the patch tokens are the tokens
        c_embed = None
    fc1_forward = ops.linear_gelu_tanh_forward if cfg.gelu == "tanh" else ops.linear_gelu_forward
    # Each residual add runs fused with the LayerNorm after it (add_layernorm_forward: the new
    # residual stream x and its normalised h in one pass): norm2 after the attention branch, the
    # next block's norm1 (or the final norm) after the MLP. Only block 0's norm1 has no add before it.
    h, c_n1 = ops.layernorm_forward(x, p["blocks.0.norm1.weight"], p["blocks.0.norm1.bias"])
    blocks = []
    for i in range(cfg.depth):
        b = f"blocks.{i}."
        h, c_qkv = ops.linear_forward(h, p[b + "attn.qkv.weight"], p[b + "attn.qkv.bias"])  # (B, N, 3D)
        c_rel = None
        if cfg.rel_pos_bias:
            bias, c_rel = ops.rel_pos_bias_forward(p[b + "attn.rel_pos"], cfg.grid_size, cfg.has_class_token)
            h, c_attn = ops.attention_bias_forward(h, bias, cfg.heads)  # (B, N, D); bias (H, N, N)
        else:
            h, c_attn = ops.attention_forward(h, cfg.heads)  # (B, N, D)
        h, c_proj = ops.linear_forward(h, p[b + "attn.proj.weight"], p[b + "attn.proj.bias"])
        (x, h), c_n2 = ops.add_layernorm_forward(x, h, p[b + "norm2.weight"], p[b + "norm2.bias"])
        h, c_fc1 = fc1_forward(h, p[b + "mlp.fc1.weight"], p[b + "mlp.fc1.bias"])  # (B, N, M)
        h, c_fc2 = ops.linear_forward(h, p[b + "mlp.fc2.weight"], p[b + "mlp.fc2.bias"])
        if keep_cache:
            blocks.append(BlockCache(c_n1, c_qkv, c_attn, c_proj, c_n2, c_fc1, c_fc2, c_rel))
        if i + 1 < cfg.depth:  # x + h into the next block's norm1
            n = f"blocks.{i + 1}.norm1."
            (x, h), c_n1 = ops.add_layernorm_forward(x, h, p[n + "weight"], p[n + "bias"])
    # the last block's x + h into the final norm; nothing reads that sum but the norm
    if cfg.has_class_token:  # only the class token's row is normalised: add just that row
        x, c_pool = ops.class_token_forward(x)  # (B, D)
        h, _ = ops.class_token_forward(h)
        (_, x), c_norm = ops.add_layernorm_forward(x, h, p["norm.weight"], p["norm.bias"])
    else:  # every token is normalised, then averaged
        (_, x), c_norm = ops.add_layernorm_forward(x, h, p["norm.weight"], p["norm.bias"])  # (B, N, D)
        x, c_pool = ops.token_mean_forward(x)  # (B, D)
    c_pre = None
    if cfg.pre_logits is not None:
        x, c_dense = ops.linear_forward(x, p["pre_logits.weight"], p["pre_logits.bias"])  # (B, R)
        x, c_tanh = ops.tanh_forward(x)
        c_pre = (c_dense, c_tanh)
    logits, c_head = ops.linear_forward(x, p["head.weight"], p["head.bias"])  # (B, K)
    if not keep_cache:
        return logits, None
    return logits, ModelCache(c_patchify, c_patch, c_embed, blocks, c_pool, c_norm, c_pre, c_head)


def backward(cfg: ViTConfig, ops, dlogits, cache: ModelCache) -> dict:
    """dlogits (B, K) -> the gradient of every parameter, in forward order.

    The chain rule, layer by layer in reverse; the gradients reaching the residual
    stream x from both branches of a block are summed here, each inside the
    backward of the LayerNorm the branch starts with (add_layernorm_backward)."""
    grads = {}
    dx, grads["head.weight"], grads["head.bias"] = ops.linear_backward(dlogits, cache.head)
    if cache.pre_logits is not None:
        c_dense, c_tanh = cache.pre_logits
        dx = ops.tanh_backward(dx, c_tanh)
        dx, grads["pre_logits.weight"], grads["pre_logits.bias"] = ops.linear_backward(dx, c_dense)
    # the final norm's input is read by nothing else: a plain LayerNorm backward on its cache
    if cfg.has_class_token:
        dx, grads["norm.weight"], grads["norm.bias"] = ops.layernorm_backward(dx, cache.norm)
        dx = ops.class_token_backward(dx, cache.pool)  # (B, N, D)
    else:
        dx = ops.token_mean_backward(dx, cache.pool)  # (B, N, D)
        dx, grads["norm.weight"], grads["norm.bias"] = ops.layernorm_backward(dx, cache.norm)
    fc1_backward = ops.linear_gelu_tanh_backward if cfg.gelu == "tanh" else ops.linear_gelu_backward
    for i in reversed(range(cfg.depth)):
        b, c = f"blocks.{i}.", cache.blocks[i]
        # x = x + fc2(gelu(fc1(norm2(x)))): the residual passes dx through, and the branch's
        # gradient joins it in norm2's backward
        dh, grads[b + "mlp.fc2.weight"], grads[b + "mlp.fc2.bias"] = ops.linear_backward(dx, c.fc2)
        dh, grads[b + "mlp.fc1.weight"], grads[b + "mlp.fc1.bias"] = fc1_backward(dh, c.fc1)
        dx, grads[b + "norm2.weight"], grads[b + "norm2.bias"] = ops.add_layernorm_backward((dx, dh), c.norm2)
        # x = x + proj(attention(qkv(norm1(x))))
        dh, grads[b + "attn.proj.weight"], grads[b + "attn.proj.bias"] = ops.linear_backward(dx, c.proj)
        if cfg.rel_pos_bias:
            dh, dbias = ops.attention_bias_backward(dh, c.attn)  # (B, N, 3D), (H, N, N)
            grads[b + "attn.rel_pos"] = ops.rel_pos_bias_backward(dbias, c.rel_pos)
        else:
            dh = ops.attention_backward(dh, c.attn)  # (B, N, 3D)
        dh, grads[b + "attn.qkv.weight"], grads[b + "attn.qkv.bias"] = ops.linear_backward(dh, c.qkv)
        dx, grads[b + "norm1.weight"], grads[b + "norm1.bias"] = ops.add_layernorm_backward((dx, dh), c.norm1)
    # a fixed table's gradient is computed by the shared layers and dropped here
    if cfg.has_class_token:
        dx, grads["cls_token"], grads["pos_embed"] = ops.embed_backward(dx, cache.embed)
    elif cache.embed is not None:
        dx, grads["pos_embed"] = ops.pos_embed_backward(dx, cache.embed)
    _, grads["patch_embed.weight"], grads["patch_embed.bias"] = ops.linear_backward(dx, cache.patch_embed)
    return {k: grads[k] for k in param_shapes(cfg)}  # forward order


def _fixed_pos_embed(cfg: ViTConfig, ops, like):
    """The fixed table of cfg.pos_embed as a backend array of like's dtype (N, D); None when
    there is nothing to add (no embedding and no class token to prepend)."""
    if cfg.pos_embed == "none" and not cfg.has_class_token:
        return None
    return ops.asarray(fixed_table(cfg), np.dtype(str(like.dtype)))


def loss_and_grads(cfg: ViTConfig, ops, params: dict, images, labels, label_smoothing: float = 0.0):
    """The pure training function: (params, images, labels) -> (loss, grads, logits).

    Nothing is read from or written to anywhere else, so a backend may compile it
    (`ops.jit`). images are backend arrays of the parameters' dtype, labels (B,)
    integers already checked; loss is a backend scalar, grads a dict like params."""
    logits, cache = forward(cfg, ops, params, images)
    loss, c_loss = ops.cross_entropy_forward(logits, labels, label_smoothing)
    grads = backward(cfg, ops, ops.cross_entropy_backward(1.0, c_loss), cache)
    return loss, grads, logits


def logits_and_attention(cfg: ViTConfig, ops, params: dict, images, return_attention: bool = False):
    """Logits (B, K), and with return_attention every block's attention probabilities (B, H, N, N)."""
    logits, cache = forward(cfg, ops, params, images, keep_cache=return_attention)
    if not return_attention:
        return logits
    return logits, [ops.attention_probs(blk.attn) for blk in cache.blocks]


class Normalization(NamedTuple):
    """What a model expects of its input: (pixel / 255 - mean) / std per channel, in [0, 1] units."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def of(cls, pair) -> Normalization:
        """A checked Normalization from any (mean, std) pair of per-channel sequences."""
        mean, std = (tuple(float(v) for v in np.asarray(a, np.float64).reshape(-1)) for a in pair)
        if len(mean) != len(std) or not all(s > 0 for s in std):
            raise ValueError(f"normalization needs a mean and a positive std per channel, got {mean}, {std}")
        return cls(mean, std)


class ViT:
    """A Vision Transformer with a hand-written backward pass.

    model = ViT(cfg, seed=0, dtype=np.float32, backend="numpy")
    model = ViT(cfg, attention_init="mimetic")    # qkv and proj from mimetic_attention_weights
    model.params                                  # name -> array; an optimiser step replaces the dict
    logits = model.forward(images)                # (B, H, W, C) -> (B, K)
    logits, probs = model.forward(images, return_attention=True)   # probs: per block (B, H, N, N)
    loss, grads = model.loss_and_grads(images, labels)             # grads: same keys and shapes as params
    model.normalization                           # (mean, std) its inputs expect, or None if unknown

    The methods check their inputs, then call the pure functions of this module on
    model.params (compiled once per model where the backend compiles, e.g. `jax`).
    """

    def __init__(self, cfg: ViTConfig, seed: int = 0, dtype=np.float32, backend: str = "numpy", params=None,
                 normalization=None, attention_init: str = "xavier"):  # fmt: skip
        if not isinstance(cfg, ViTConfig):
            raise TypeError(f"cfg must be a ViTConfig, got {type(cfg).__name__}")
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64, got {dtype}")
        self.cfg, self.dtype = cfg, dtype
        self.backend = get_backend(backend)
        self.backend.use_dtype(dtype)
        if params is None:
            fresh = init_params(cfg, seed, dtype, attention_init)
            # each drawn array is dropped once the backend holds its copy: never the model twice over
            self.params = {k: self.backend.asarray(fresh.pop(k), dtype) for k in list(fresh)}
        else:
            self.params = self._checked_params(params)
        self.normalization = None if normalization is None else Normalization.of(normalization)
        ops = self.backend
        self._loss_and_grads = ops.jit(lambda p, x, y, s: loss_and_grads(cfg, ops, p, x, y, s))
        self._logits = ops.jit(lambda p, x: logits_and_attention(cfg, ops, p, x))
        self._logits_attention = ops.jit(lambda p, x: logits_and_attention(cfg, ops, p, x, True))

    # -- parameters -------------------------------------------------------------------------

    def _checked_params(self, params) -> dict:
        """Checked backend copies of `params` (name -> array), made one parameter at a time.

        `params` may be any mapping, also one that reads each array from a file when asked
        (tinyvit.pretrained): a large model is then never held in memory twice over."""
        shapes = param_shapes(self.cfg)
        missing, extra = sorted(set(shapes) - set(params)), sorted(set(params) - set(shapes))
        if missing or extra:
            raise ValueError(f"parameters do not match the config: missing {missing}, unexpected {extra}")
        out = {}
        for k, shape in shapes.items():
            v = np.asarray(params[k])
            if v.shape != shape:
                raise ValueError(f"parameter {k} has shape {v.shape}, expected {shape}")
            if not np.all(np.isfinite(v)):
                raise ValueError(f"parameter {k} has non-finite values")
            out[k] = self.backend.asarray(v, self.dtype)
        return out

    def numpy_params(self) -> dict[str, np.ndarray]:
        """Host copies of the parameters (for checkpoints and comparisons)."""
        return {k: self.backend.to_numpy(v) for k, v in self.params.items()}

    def load_params(self, params) -> None:
        """Replace every parameter with a checked copy of `params` (name -> array)."""
        self.params = self._checked_params(params)

    @property
    def num_params(self) -> int:
        return count_params(self.cfg)

    # -- input checks -----------------------------------------------------------------------

    def check_images(self, images) -> np.ndarray:
        """Raise ValueError unless images is a finite (B, H, W, C) array of this model's size."""
        cfg = self.cfg
        expected = f"(B, {cfg.image_size}, {cfg.image_size}, {cfg.channels})"
        images = np.asarray(images)
        if images.ndim != 4:
            raise ValueError(f"images must have rank 4 {expected}, got shape {images.shape}")
        if images.shape[1:] != (cfg.image_size, cfg.image_size, cfg.channels) or images.shape[0] < 1:
            raise ValueError(f"images must have shape {expected}, got {images.shape}")
        if not np.issubdtype(images.dtype, np.number) or np.iscomplexobj(images):
            raise ValueError(f"images must be real numbers, got dtype {images.dtype}")
        if not np.all(np.isfinite(images)):
            raise ValueError(f"images contain {np.size(images) - np.isfinite(images).sum()} non-finite values")
        return images

    def check_labels(self, labels, batch: int) -> np.ndarray:
        """Raise ValueError unless labels is (B,) integers in [0, K) (tinyvit.errors.check_labels)."""
        return check_labels(labels, self.cfg.num_classes, batch)

    # -- forward and backward ---------------------------------------------------------------

    def forward(self, images, return_attention: bool = False):
        """(B, H, W, C) images -> (B, K) logits as a NumPy array.

        With return_attention=True, also the list of every block's attention
        probabilities, each (B, H, N, N)."""
        x = self.backend.asarray(self.check_images(images), self.dtype)
        if not return_attention:
            return self.backend.to_numpy(self._logits(self.params, x))
        logits, probs = self._logits_attention(self.params, x)
        return self.backend.to_numpy(logits), [self.backend.to_numpy(p) for p in probs]

    __call__ = forward

    def loss_and_grads(self, images, labels, label_smoothing: float = 0.0, return_logits: bool = False):
        """Mean cross-entropy over the batch and the gradient of every parameter.

        Returns (loss, grads), or (loss, grads, logits) with return_logits=True.
        loss is a backend scalar (float(loss) makes it a Python float); grads has the
        same keys and shapes as params and logits is (B, K), both backend arrays (on the
        device for `cuda`: backend.to_numpy copies them to the host)."""
        images = self.check_images(images)
        labels = self.check_labels(labels, images.shape[0])
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        x = self.backend.asarray(images, self.dtype)
        loss, grads, logits = self._loss_and_grads(self.params, x, labels, label_smoothing)
        grads = {k: grads[k] for k in self.params}  # a compiled function may hand the dict back in another order
        if return_logits:
            return loss, grads, logits
        return loss, grads

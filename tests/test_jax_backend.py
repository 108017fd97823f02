"""The `jax` backend's second proof of the gradients: autodiff.

The JAX backend runs the specification's own forward and hand-written backward
(tests/test_conformance.py shows it equals the NumPy backend). Here `jax.grad`
of the forward pass, an independent derivation, must equal the hand-written
backward, layer by layer and for the whole model, in float64. Where the forward
pass is written right, a wrong backward term shows up here even if the NumPy
finite-difference checks were somehow fooled.

Optional reference: with PyTorch installed, the whole model also matches
PyTorch autograd (an independent ViT written from the definition below) to 1e-7.
"""

import numpy as np
import pytest
from backends import batch, error, perturbed_params
from gradcheck import rel_error

jax = pytest.importorskip("jax", reason="the jax backend needs `pip install -e '.[jax]'`")
jnp = jax.numpy

from tinyvit import ViT, get_preset, layers
from tinyvit.model import forward, loss_and_grads

jax.config.update("jax_enable_x64", True)  # float64, as ViT(..., dtype=np.float64) on this backend turns on
CFG = get_preset("testing")
TOL = 1e-10  # float64; the two differ only in the order of sums


def _ops():
    from tinyvit.backend import get_backend

    return get_backend("jax")


def _add_layernorm_backward(dout, cache):
    """dout = (ds, dy), one per output; s = x + h gives x and h the same gradient, which the op returns once."""
    dx, dweight, dbias = layers.add_layernorm_backward(dout, cache)
    return dx, dx, dweight, dbias


# name -> (forward(*inputs) -> (out, cache), backward(dout, cache) -> gradients, the inputs' shapes)
LAYERS = {
    "linear": (layers.linear_forward, layers.linear_backward, [(2, 5, 8), (8, 6), (6,)]),
    "linear_gelu": (layers.linear_gelu_forward, layers.linear_gelu_backward, [(2, 5, 8), (8, 12), (12,)]),
    "layernorm": (layers.layernorm_forward, layers.layernorm_backward, [(2, 5, 8), (8,), (8,)]),
    "embed": (layers.embed_forward, layers.embed_backward, [(2, 4, 8), (8,), (5, 8)]),
    "add_layernorm": (layers.add_layernorm_forward, _add_layernorm_backward, [(2, 5, 8), (2, 5, 8), (8,), (8,)]),
    "attention": (lambda qkv: layers.attention_forward(qkv, 2), lambda d, c: (layers.attention_backward(d, c),),
                  [(2, 5, 24)]),
    "class_token": (layers.class_token_forward, lambda d, c: (layers.class_token_backward(d, c),), [(2, 5, 8)]),
    "patchify": (lambda x: layers.patchify_forward(x, 2), lambda d, c: (layers.patchify_backward(d, c),),
                 [(2, 4, 4, 3)]),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_hand_written_backward_equals_jax_grad_per_layer(name):
    """For a random dout: the vector-Jacobian product by jax.vjp of the forward, against the backward."""
    fwd, bwd, shapes = LAYERS[name]
    rng = np.random.default_rng(sorted(LAYERS).index(name))
    inputs = [jnp.asarray(rng.standard_normal(s)) for s in shapes]
    out, vjp = jax.vjp(lambda *xs: fwd(*xs)[0], *inputs)
    dout = jax.tree_util.tree_map(lambda o: jnp.asarray(rng.standard_normal(o.shape)), out)  # one per output
    want = vjp(dout)
    got = bwd(dout, fwd(*inputs)[1])
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        assert rel_error(g, w) <= TOL, f"{name} gradient {i}: {rel_error(g, w):.2e} against jax.grad"


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_backward_equals_jax_grad(smoothing):
    rng = np.random.default_rng(3)
    logits, labels = jnp.asarray(rng.standard_normal((5, 4))), jnp.asarray([0, 3, 1, 1, 2])
    want = jax.grad(lambda z: layers.cross_entropy_forward(z, labels, smoothing)[0])(logits)
    got = layers.cross_entropy_backward(1.0, layers.cross_entropy_forward(logits, labels, smoothing)[1])
    assert rel_error(got, want) <= TOL


def test_whole_model_backward_equals_jax_grad():
    """jax.grad of the loss through the whole forward pass, against the model's hand-written backward."""
    ops = _ops()
    params = {k: jnp.asarray(v) for k, v in perturbed_params(CFG).items()}
    images, labels = batch(CFG)
    images, labels = jnp.asarray(images), jnp.asarray(labels)

    def loss_of(p):
        logits, _ = forward(CFG, ops, p, images)
        return ops.cross_entropy_forward(logits, labels, 0.1)[0]

    want = jax.grad(loss_of)(params)
    loss, got, _ = loss_and_grads(CFG, ops, params, images, labels, 0.1)
    assert abs(float(loss) - float(loss_of(params))) <= 1e-14
    # error(): relative to each gradient's scale (the key part of the qkv bias gradient is 0 in exact arithmetic)
    bad = {k: f"{error(got[k], want[k], np.float64):.2e}" for k in params if error(got[k], want[k], np.float64) > TOL}
    assert not bad, f"hand-written gradients off jax.grad: {bad}"


def test_float64_model_keeps_float64_and_float32_keeps_float32():
    for dtype in (np.float64, np.float32):
        model = ViT(CFG, dtype=dtype, backend="jax")
        images, labels = batch(CFG)
        loss, grads = model.loss_and_grads(images, labels)
        assert np.asarray(loss).dtype == dtype and all(np.asarray(g).dtype == dtype for g in grads.values())
        assert model.forward(images).dtype == dtype


# -- optional: PyTorch autograd, an independent implementation ------------------------------------


def _torch_vit_loss(torch, cfg, params, images, labels, smoothing):
    """The ViT written from its definition in PyTorch ops (conv patch embedding, explicit heads)."""
    F = torch.nn.functional
    P, D, H = cfg.patch_size, cfg.dim, cfg.heads
    x = torch.as_tensor(images).permute(0, 3, 1, 2)  # (B, C, S, S)
    kernel = params["patch_embed.weight"].reshape(P, P, cfg.channels, D).permute(3, 2, 0, 1)  # (D, C, P, P)
    x = F.conv2d(x, kernel, params["patch_embed.bias"], stride=P).flatten(2).transpose(1, 2)  # (B, N-1, D)
    B = x.shape[0]
    x = torch.cat([params["cls_token"].expand(B, 1, D), x], dim=1) + params["pos_embed"]
    for i in range(cfg.depth):
        b = f"blocks.{i}."
        h = F.layer_norm(x, (D,), params[b + "norm1.weight"], params[b + "norm1.bias"], eps=1e-6)
        q, k, v = (h @ params[b + "attn.qkv.weight"] + params[b + "attn.qkv.bias"]).split(D, dim=-1)
        q, k, v = (t.reshape(B, -1, H, D // H).transpose(1, 2) for t in (q, k, v))
        a = torch.softmax(q @ k.transpose(-1, -2) / (D // H) ** 0.5, dim=-1) @ v
        x = x + a.transpose(1, 2).reshape(B, -1, D) @ params[b + "attn.proj.weight"] + params[b + "attn.proj.bias"]
        h = F.layer_norm(x, (D,), params[b + "norm2.weight"], params[b + "norm2.bias"], eps=1e-6)
        h = F.gelu(h @ params[b + "mlp.fc1.weight"] + params[b + "mlp.fc1.bias"])
        x = x + h @ params[b + "mlp.fc2.weight"] + params[b + "mlp.fc2.bias"]
    x = F.layer_norm(x[:, 0], (D,), params["norm.weight"], params["norm.bias"], eps=1e-6)
    logits = x @ params["head.weight"] + params["head.bias"]
    return F.cross_entropy(logits, torch.as_tensor(labels), label_smoothing=smoothing), logits


def test_jax_float64_model_matches_pytorch_autograd():
    """ViT(cfg, backend="jax", dtype=np.float64): logits, loss and every gradient to 1e-7 of PyTorch's."""
    torch = pytest.importorskip("torch", reason="PyTorch is an optional test reference (pip install torch==2.13.0)")
    params = perturbed_params(CFG)
    images, labels = batch(CFG)
    model = ViT(CFG, dtype=np.float64, backend="jax", params=params)
    loss, grads, logits = model.loss_and_grads(images, labels, 0.1, return_logits=True)
    tp = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    t_loss, t_logits = _torch_vit_loss(torch, CFG, tp, images, labels, 0.1)
    t_loss.backward()
    assert abs(float(loss) - t_loss.item()) <= 1e-7 * abs(t_loss.item())
    assert rel_error(np.asarray(logits), t_logits.detach().numpy()) <= 1e-7
    errors = {k: error(np.asarray(grads[k]), tp[k].grad.numpy(), np.float64) for k in params}
    bad = {k: f"{e:.2e}" for k, e in errors.items() if e > 1e-7}
    assert not bad, f"gradients off PyTorch autograd: {bad}"

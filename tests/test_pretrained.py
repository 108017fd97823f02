"""Loading checkpoints of other layouts, writing the official one, and refusing bad files.

Every file here is made in the test from random numbers (tests/pretrained_files.py),
in each layout the loader reads: the official one under both flax numberings and
with the `opt/target/` prefix, with and without pre_logits, with a class token and
with average pooling; timm's safetensors; tinyvit's own checkpoint. The loaded
model's logits are compared with an independent einsum implementation computed
straight from the file's arrays. In float64 the two agree to rounding (1e-10).
"""

import json
import os
import zipfile

import numpy as np
import pytest
from pretrained_files import (
    Spec,
    legacy_names,
    official_arrays,
    official_logits,
    timm_arrays,
    timm_logits,
    write_safetensors,
)

from tinyvit import ViT, count_params, get_preset
from tinyvit.checkpoint import save_checkpoint
from tinyvit.pretrained import UNIT_RANGE, load_pretrained, save_official
from tinyvit.resolution import resize_pos_embed
from tinyvit.tensorfile import CheckpointError

TOL = 1e-10  # float64 throughout: the two implementations differ only in the order of their sums


def images_for(s: Spec, seed=0, batch=2):
    return np.random.default_rng(seed).normal(size=(batch, s.image, s.image, s.channels))


def rel(a, b):
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def load64(path, **kw):
    return load_pretrained(path, backend="numpy", dtype=np.float64, **kw)


OFFICIAL_CASES = [  # (numbering, prefix, classifier, pre_logits width)
    ("linen", "", "token", None),
    ("legacy", "", "token", None),
    ("legacy", "", "token", 6),
    ("linen", "opt/target/", "token", 6),
    ("legacy", "", "gap", None),
    ("linen", "opt/target/", "gap", 10),
]


def write_official(path, arrays, numbering, prefix=""):
    named = legacy_names(arrays) if numbering == "legacy" else arrays
    extra = {"opt/state/step": np.array(3)} if prefix else {}  # an optimiser checkpoint keeps its state beside
    np.savez(path, **{prefix + k: v for k, v in named.items()}, **extra)


@pytest.mark.parametrize("numbering,prefix,classifier,representation", OFFICIAL_CASES)
def test_official_files_give_the_logits_of_the_definition(tmp_path, numbering, prefix, classifier, representation):
    s = Spec(classifier=classifier, representation=representation)
    arrays = official_arrays(s, np.random.default_rng(1))
    write_official(tmp_path / "vit.npz", arrays, numbering, prefix)
    model = load64(tmp_path / "vit.npz")
    c = model.cfg
    assert (c.patch_size, c.dim, c.depth, c.heads, c.mlp_dim, c.num_classes, c.image_size) == (4, 8, 2, 2, 12, 5, 8)
    assert (c.gelu, c.classifier, c.pre_logits) == ("tanh", classifier, representation)
    assert model.normalization == UNIT_RANGE
    x = images_for(s)
    assert rel(model.forward(x), official_logits(arrays, s, x)) < TOL


def test_a_timm_safetensors_file_gives_the_logits_of_the_definition(tmp_path):
    s = Spec(width=12, heads=3)
    arrays = timm_arrays(s, np.random.default_rng(2))
    write_safetensors(tmp_path / "model.safetensors", arrays)
    (tmp_path / "config.json").write_text(json.dumps({"model_args": {"num_heads": 3},
                                                      "pretrained_cfg": {"mean": [0.4, 0.45, 0.5], "std": [0.2, 0.25, 0.3]}}))  # fmt: skip
    model = load64(tmp_path / "model.safetensors")
    assert (model.cfg.heads, model.cfg.gelu, model.cfg.classifier) == (3, "erf", "token")
    assert model.normalization == ((0.4, 0.45, 0.5), (0.2, 0.25, 0.3))
    x = images_for(s)
    assert rel(model.forward(x), timm_logits(arrays, s, x)) < TOL


def test_timm_half_precision_files_are_widened_exactly(tmp_path):
    s = Spec(width=12, heads=3)
    arrays = {k: v.astype(np.float16) for k, v in timm_arrays(s, np.random.default_rng(3)).items()}
    write_safetensors(tmp_path / "m.safetensors", arrays, dtype="F16")
    model = load64(tmp_path / "m.safetensors", heads=3)
    x = images_for(s)
    wide = {k: v.astype(np.float64) for k, v in arrays.items()}
    assert rel(model.forward(x), timm_logits(wide, s, x)) < TOL


@pytest.mark.parametrize("pos_embed", ["sincos2d", "none"])
def test_a_tinyvit_checkpoint_without_a_learned_table_loads_at_another_size(tmp_path, pos_embed):
    cfg = get_preset("testing").replace(pos_embed=pos_embed)
    model = ViT(cfg, seed=4, dtype=np.float64, backend="numpy")
    save_checkpoint(tmp_path / "c.npz", model.numpy_params(), cfg, {"mean": [0.5] * 3, "std": [0.5] * 3})
    bigger = load64(tmp_path / "c.npz", image_size=16)
    assert bigger.cfg == cfg.replace(image_size=16) and "pos_embed" not in bigger.numpy_params()
    for k, v in model.numpy_params().items():
        np.testing.assert_array_equal(bigger.numpy_params()[k], v)


def test_a_tinyvit_checkpoint_loads_with_its_normalisation(tmp_path):
    cfg = get_preset("testing")
    model = ViT(cfg, seed=4, dtype=np.float64, backend="numpy")
    state = {"mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6], "dtype": "float64"}
    save_checkpoint(tmp_path / "c.npz", model.numpy_params(), cfg, state, {"step": np.int64(1)})
    loaded = load64(tmp_path / "c.npz")
    assert loaded.cfg == cfg and loaded.normalization == ((0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    for k, v in model.numpy_params().items():
        np.testing.assert_array_equal(loaded.numpy_params()[k], v)


@pytest.mark.parametrize("classifier,representation", [("token", None), ("token", 6), ("gap", 6)])
@pytest.mark.parametrize("numbering", ["legacy", "linen"])
def test_save_official_then_load_is_the_identity(tmp_path, classifier, representation, numbering):
    s = Spec(classifier=classifier, representation=representation)
    write_official(tmp_path / "a.npz", official_arrays(s, np.random.default_rng(5)), "linen")
    model = load64(tmp_path / "a.npz")
    save_official(model, tmp_path / "b.npz", numbering=numbering)
    again = load64(tmp_path / "b.npz")
    assert again.cfg == model.cfg
    for k, v in model.numpy_params().items():
        np.testing.assert_array_equal(again.numpy_params()[k], v)
    with np.load(tmp_path / "b.npz", allow_pickle=False) as z:
        names = set(z.files)
    expected_attn = "MultiHeadDotProductAttention_1" if numbering == "legacy" else "MultiHeadDotProductAttention_0"
    assert f"Transformer/encoderblock_1/{expected_attn}/query/kernel" in names
    assert ("cls" in names) == (classifier == "token") and ("pre_logits/kernel" in names) == bool(representation)


def test_save_official_writes_what_the_definition_computes(tmp_path):
    """A tinyvit model (not one loaded from a file) written out gives its own logits in the definition."""
    cfg = get_preset("testing").replace(gelu="tanh", pre_logits=5)
    model = ViT(cfg, seed=6, dtype=np.float64, backend="numpy")
    rng = np.random.default_rng(6)
    model.load_params({k: rng.normal(0, 0.5, v.shape) for k, v in model.numpy_params().items()})
    save_official(model, tmp_path / "m.npz", numbering="linen")
    with np.load(tmp_path / "m.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    s = Spec(image=8, patch=4, width=8, depth=2, heads=2, mlp=16, classes=3, representation=5)
    x = images_for(s)
    assert rel(model.forward(x), official_logits(arrays, s, x)) < TOL


# -- new resolution, new head ------------------------------------------------------------------------


def bilinear_corners_aligned(grid, new):
    """Reference: sample the (g, g, D) grid at i * (g - 1) / (new - 1), the corners on the corners."""
    g = grid.shape[0]
    t = np.arange(new) * (g - 1) / (new - 1)
    lo = np.minimum(np.floor(t).astype(int), g - 2)
    f = t - lo
    rows = grid[lo] * (1 - f)[:, None, None] + grid[lo + 1] * f[:, None, None]
    return rows[:, lo] * (1 - f)[None, :, None] + rows[:, lo + 1] * f[None, :, None]


@pytest.mark.parametrize("has_cls", [True, False])
def test_position_embeddings_are_interpolated_bilinearly_with_corners_aligned(has_cls):
    rng = np.random.default_rng(7)
    g, new, D = 3, 5, 4
    pe = rng.normal(size=(int(has_cls) + g * g, D))
    out = resize_pos_embed(pe, new, has_class_token=has_cls)
    c = int(has_cls)
    assert out.shape == (c + new * new, D)
    np.testing.assert_array_equal(out[:c], pe[:c])  # the class token's row is kept apart, unchanged
    ref = bilinear_corners_aligned(pe[c:].reshape(g, g, D), new).reshape(new * new, D)
    np.testing.assert_allclose(out[c:], ref, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(resize_pos_embed(pe, g, has_class_token=has_cls), pe)  # the same grid: identity


def test_loading_at_the_same_size_and_class_count_changes_nothing(tmp_path):
    s = Spec()
    write_official(tmp_path / "a.npz", official_arrays(s, np.random.default_rng(8)), "legacy")
    a, b = load64(tmp_path / "a.npz"), load64(tmp_path / "a.npz", image_size=8, num_classes=5)
    for k, v in a.numpy_params().items():
        np.testing.assert_array_equal(b.numpy_params()[k], v)


@pytest.mark.parametrize("classifier", ["token", "gap"])
def test_a_new_resolution_and_class_count_give_a_zero_head_without_pre_logits(tmp_path, classifier):
    s = Spec(classifier=classifier, representation=6)
    arrays = official_arrays(s, np.random.default_rng(9))
    write_official(tmp_path / "a.npz", arrays, "legacy")
    model = load64(tmp_path / "a.npz", num_classes=4, image_size=16)
    assert (model.cfg.image_size, model.cfg.num_classes, model.cfg.pre_logits) == (16, 4, None)
    p = model.numpy_params()
    assert not any(k.startswith("pre_logits") for k in p)
    assert p["head.weight"].shape == (8, 4) and not p["head.weight"].any() and not p["head.bias"].any()
    c = int(classifier == "token")
    pe = arrays["Transformer/posembed_input/pos_embedding"][0]
    np.testing.assert_array_equal(p["pos_embed"][:c], pe[:c])
    np.testing.assert_allclose(p["pos_embed"][c:], bilinear_corners_aligned(pe[c:].reshape(2, 2, 8), 4).reshape(16, 8), atol=1e-12)
    # everything below the head is the file's: with the file's head put back, the features give its logits
    feats_model = ViT(model.cfg.replace(num_classes=8), dtype=np.float64, backend="numpy",
                      params={**p, "head.weight": np.eye(8), "head.bias": np.zeros(8)})  # fmt: skip
    ref_arrays = {**arrays, "Transformer/posembed_input/pos_embedding": p["pos_embed"][None]}
    ref_arrays.pop("pre_logits/kernel"), ref_arrays.pop("pre_logits/bias")
    ref_arrays["head/kernel"], ref_arrays["head/bias"] = np.eye(8), np.zeros(8)
    big = Spec(image=16, classifier=classifier, classes=8)
    x = images_for(big)
    assert rel(feats_model.forward(x), official_logits(ref_arrays, big, x)) < TOL


# -- bad files -------------------------------------------------------------------------------------


class _Boom:
    """Unpickling this would write a file: the test checks that it never happens."""

    def __init__(self, flag):
        self.flag = flag

    def __reduce__(self):
        return (open, (self.flag, "w"))


def test_a_pickle_inside_an_npz_is_refused_and_never_run(tmp_path):
    s = Spec()
    arrays = official_arrays(s, np.random.default_rng(10))
    flag = tmp_path / "unpickled"
    arrays["head/bias"] = np.array([_Boom(str(flag))], dtype=object)
    np.savez(tmp_path / "evil.npz", **arrays)
    with pytest.raises(CheckpointError, match="head/bias.*Python objects.*never unpickles"):
        load64(tmp_path / "evil.npz")
    assert not flag.exists()


def official_file(tmp_path, edit):
    arrays = official_arrays(Spec(), np.random.default_rng(11))
    edit(arrays)
    np.savez(tmp_path / "f.npz", **arrays)
    return tmp_path / "f.npz"


def test_missing_extra_and_misshapen_arrays_are_all_named(tmp_path):
    def edit(a):
        del a["Transformer/encoderblock_1/MlpBlock_0/Dense_1/bias"]
        a["Transformer/encoderblock_0/LayerNorm_1/scale"] = np.ones(7)
        a["Transformer/extra_thing"] = np.ones(2)

    with pytest.raises(CheckpointError) as e:
        load64(official_file(tmp_path, edit))
    msg = str(e.value)
    assert "missing Transformer/encoderblock_1/MlpBlock_0/Dense_1/bias" in msg
    assert "unexpected Transformer/extra_thing" in msg
    assert "Transformer/encoderblock_0/LayerNorm_1/scale expected (8,), found (7,)" in msg


def test_a_timm_file_with_options_tinyvit_lacks_names_them(tmp_path):
    s = Spec(width=12, heads=3)
    arrays = timm_arrays(s, np.random.default_rng(12))
    arrays["blocks.0.ls1.gamma"] = np.ones(12)  # layer scale
    write_safetensors(tmp_path / "m.safetensors", arrays)
    with pytest.raises(CheckpointError, match=r"unexpected blocks\.0\.ls1\.gamma"):
        load64(tmp_path / "m.safetensors", heads=3)


@pytest.mark.parametrize("kind", ["npz", "safetensors"])
@pytest.mark.parametrize("keep", [0.3, 0.97])
def test_a_truncated_file_gets_a_clear_error(tmp_path, kind, keep):
    s = Spec(width=12, heads=3)
    path = tmp_path / f"m.{kind}"
    if kind == "npz":
        np.savez(path, **official_arrays(s, np.random.default_rng(13)))
    else:
        write_safetensors(path, timm_arrays(s, np.random.default_rng(13)))
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointError, match="truncated"):
        load64(path)


def test_a_damaged_array_in_the_middle_raises_and_returns_nothing(tmp_path):
    """The names and shapes check out, but one array's bytes are damaged: the zip's CRC catches it
    while the model is being filled, and no model comes back."""
    path = official_file(tmp_path, lambda a: None)
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("Transformer/encoderblock_1/MlpBlock_0/Dense_0/kernel.npy")
    data = bytearray(path.read_bytes())
    at = info.header_offset + 30 + len(info.filename) + info.file_size - 8  # inside the array's last bytes
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="Dense_0/kernel"):
        load64(path)


@pytest.mark.parametrize("content", [b"", b"hello, not a checkpoint\n", b"PK\x03\x04garbage"])
def test_files_that_are_no_checkpoint_get_a_clear_error(tmp_path, content):
    path = tmp_path / "x.npz"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=str(path)):
        load64(path)


def test_an_npz_of_something_else_is_named_as_such(tmp_path):
    np.savez(tmp_path / "x.npz", weights=np.ones(3))
    with pytest.raises(CheckpointError, match="neither an official ViT checkpoint.*holds weights"):
        load64(tmp_path / "x.npz")


def test_non_finite_values_are_named_and_nothing_is_returned(tmp_path):
    def edit(a):
        a["Transformer/encoderblock_1/LayerNorm_0/bias"][3] = np.nan

    with pytest.raises(CheckpointError, match=r"not hold a usable model.*blocks\.1\.norm1\.bias has non-finite"):
        load64(official_file(tmp_path, edit))


@pytest.mark.parametrize("kind", ["official", "timm"])
def test_a_file_without_a_head_loads_with_a_new_one(tmp_path, kind):
    if kind == "official":
        arrays = official_arrays(Spec(representation=6), np.random.default_rng(17))
        del arrays["head/kernel"], arrays["head/bias"]
        np.savez(tmp_path / "m.npz", **arrays)
        path = tmp_path / "m.npz"
    else:
        arrays = timm_arrays(Spec(width=12, heads=3), np.random.default_rng(17))
        del arrays["head.weight"], arrays["head.bias"]
        write_safetensors(tmp_path / "m.safetensors", arrays)
        path = tmp_path / "m.safetensors"
    with pytest.raises(CheckpointError, match="has no classifier head: pass num_classes"):
        load64(path, heads=3)
    model = load64(path, num_classes=4, heads=3)
    assert model.cfg.num_classes == 4 and model.cfg.pre_logits is None and not model.numpy_params()["head.weight"].any()


def test_a_missing_file_and_bad_options_are_refused(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load64(tmp_path / "nope.npz")
    path = official_file(tmp_path, lambda a: None)
    with pytest.raises(ValueError, match="multiple of the patch size 4"):
        load64(path, image_size=10)
    with pytest.raises(ValueError, match="num_classes must be a positive integer"):
        load64(path, num_classes=0)
    assert os.path.exists(path)


# -- memory ----------------------------------------------------------------------------------------


def test_loading_holds_the_model_once_plus_one_array(tmp_path):
    """The arrays are read one at a time as the model takes them: NumPy's allocations (which
    tracemalloc sees) peak at the model's size plus its largest array, not twice the model.
    This is what keeps ViT-B/16 under 1 GiB and ViT-L/16 under 2.5 GiB of peak RSS when
    predicting (docs/pretrained.md has the measurements)."""
    import tracemalloc

    cfg = get_preset("testing").replace(image_size=32, dim=128, depth=4, heads=4, mlp_dim=512, num_classes=10, gelu="tanh")
    save_official(ViT(cfg, seed=0), tmp_path / "m.npz")
    model_bytes = 4 * count_params(cfg)
    tracemalloc.start()
    try:
        model = load_pretrained(tmp_path / "m.npz", backend="numpy")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert model.cfg == cfg
    assert peak < 1.25 * model_bytes, f"peak {peak / 1e6:.2f} MB for a model of {model_bytes / 1e6:.2f} MB"


# -- predict ---------------------------------------------------------------------------------------


def test_the_imagenet_class_names_are_the_1000_synsets_in_order():
    from tinyvit.predict import IMAGENET1K_CLASSES, imagenet1k_names

    lines = IMAGENET1K_CLASSES.read_text(encoding="utf-8").splitlines()
    ids = [line.split("\t")[0] for line in lines]
    assert len(lines) == 1000 and ids == sorted(set(ids)) and all(i.startswith("n") and len(i) == 9 for i in ids)
    names = imagenet1k_names()
    assert len(names) == 1000 and all(names)
    assert (names[0], names[207], names[281], names[999]) == (
        "tench, Tinca tinca", "golden retriever", "tabby, tabby cat", "toilet tissue, toilet paper, bathroom tissue")


def _image(tmp_path):
    from PIL import Image

    path = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(path)
    return str(path)


def test_predict_names_an_imagenet_models_classes(tmp_path, capsys):
    from tinyvit.predict import imagenet1k_names, main

    s = Spec(classes=1000)
    np.savez(tmp_path / "in1k.npz", **official_arrays(s, np.random.default_rng(14)))
    main(["--checkpoint", str(tmp_path / "in1k.npz"), "--backend", "numpy", _image(tmp_path)])
    out = capsys.readouterr().out.splitlines()
    names = [line.split("%", 1)[1].strip() for line in out[1:]]
    assert len(names) == 5 and all(n in imagenet1k_names() for n in names)
    # the same ranking as the model's own logits on the normalised image
    from tinyvit.predict import load_image, predict

    model = load_pretrained(tmp_path / "in1k.npz", backend="numpy")
    top = predict(model, load_image(tmp_path / "img.png", 8)[None])[0]
    assert names == [imagenet1k_names()[k] for k, _ in top]


def test_predict_prints_indices_or_the_given_labels(tmp_path, capsys):
    from tinyvit.predict import main

    np.savez(tmp_path / "m.npz", **official_arrays(Spec(classes=7), np.random.default_rng(15)))
    img = _image(tmp_path)
    main(["--checkpoint", str(tmp_path / "m.npz"), "--backend", "numpy", "--top", "7", img])
    assert sorted(line.split("%")[1].strip() for line in capsys.readouterr().out.splitlines()[1:]) == [str(k) for k in range(7)]
    (tmp_path / "labels.txt").write_text("".join(f"class {k}\n" for k in range(7)))
    main(["--checkpoint", str(tmp_path / "m.npz"), "--backend", "numpy", "--labels", str(tmp_path / "labels.txt"), img])
    assert all(line.split("%")[1].strip().startswith("class ") for line in capsys.readouterr().out.splitlines()[1:])
    (tmp_path / "short.txt").write_text("a\nb\n")
    with pytest.raises(SystemExit, match="short.txt has 2 names, the model has 7 classes"):
        main(["--checkpoint", str(tmp_path / "m.npz"), "--backend", "numpy", "--labels", str(tmp_path / "short.txt"), img])


def test_predict_turns_a_bad_file_into_one_line(tmp_path):
    from tinyvit.predict import main

    arrays = official_arrays(Spec(), np.random.default_rng(16))
    del arrays["head/bias"]
    np.savez(tmp_path / "m.npz", **arrays)
    with pytest.raises(SystemExit, match="^error: .*m.npz .*missing head/bias"):
        main(["--checkpoint", str(tmp_path / "m.npz"), "--backend", "numpy", _image(tmp_path)])

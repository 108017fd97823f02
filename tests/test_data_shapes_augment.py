"""The generated `shapes` set, the Dataset record, batch augmentation and normalisation."""

import numpy as np
import pytest

from tinyvit import ViT, get_preset
from tinyvit.data import (
    Dataset,
    augment_batch,
    channel_stats,
    default_data_dir,
    load_dataset,
    normalize,
)
from tinyvit.data.shapes import CLASS_NAMES, make_shapes
from tinyvit.optim import AdamW

# ---------------------------------------------------------------- shapes


def test_shapes_has_the_documented_sizes_types_and_balance():
    """"shapes:600" is 600 train / 120 test uint8 (N, 32, 32, 3) images with int64 labels over 6 classes,
    each class within one image of an equal share."""
    ds = load_dataset("shapes:600", seed=0)
    assert ds.name == "shapes" and ds.class_names == CLASS_NAMES
    assert ds.train_images.shape == (600, 32, 32, 3) and ds.test_images.shape == (120, 32, 32, 3)
    assert ds.train_images.dtype == np.uint8 and ds.train_labels.dtype == np.int64
    assert ds.train_images.flags.c_contiguous and ds.test_images.flags.c_contiguous
    for labels in (ds.train_labels, ds.test_labels):
        counts = np.bincount(labels, minlength=len(CLASS_NAMES))
        assert counts.max() - counts.min() <= 1, counts
    assert ds.mean.dtype == np.float32 and ds.mean.shape == (3,) and ds.std.shape == (3,)


def test_shapes_default_size_and_image_size():
    ds = load_dataset("shapes", image_size=16)
    assert ds.train_images.shape == (5000, 16, 16, 3) and ds.test_images.shape == (1000, 16, 16, 3)


def test_shapes_is_fixed_by_the_seed():
    """The same seed draws identical images; another seed draws others; the training images do not
    depend on how many test images were asked for."""
    a, b, c = make_shapes(60, 12, seed=3), make_shapes(60, 12, seed=3), make_shapes(60, 12, seed=4)
    np.testing.assert_array_equal(a.train_images, b.train_images)
    np.testing.assert_array_equal(a.test_labels, b.test_labels)
    assert not np.array_equal(a.train_images, c.train_images)
    np.testing.assert_array_equal(make_shapes(60, 30, seed=3).train_images, a.train_images)


def test_shapes_are_lighter_than_their_background():
    """Every image holds a shape: its brightest pixels are well above its darkest (light shape, dark ground)."""
    ds = make_shapes(120, 0, image_size=24, seed=0)
    grey = ds.train_images.mean(-1)  # (N, S, S)
    spread = np.percentile(grey, 99, axis=(1, 2)) - np.percentile(grey, 1, axis=(1, 2))
    assert spread.min() > 60, spread.min()


def test_tiny_vit_learns_shapes_well_above_chance():
    """The `testing` preset (1.8k parameters) trained for 6 epochs on 3000 images at 16 px beats
    chance (1/6) threefold on the test split: the set is learnable, not noise."""
    ds = load_dataset("shapes:3000", image_size=16, seed=0)
    model = ViT(get_preset("testing", image_size=16, num_classes=len(ds.class_names)), seed=0, backend="numpy")
    opt = AdamW(model, lr=3e-3)
    rng = np.random.default_rng(0)
    for _ in range(6):
        order = rng.permutation(len(ds.train_labels))
        for start in range(0, len(order) - 63, 64):
            idx = order[start : start + 64]
            x = normalize(augment_batch(ds.train_images[idx], rng), ds.mean, ds.std)
            opt.step(model.loss_and_grads(x, ds.train_labels[idx])[1])
    accuracy = (model(normalize(ds.test_images, ds.mean, ds.std)).argmax(1) == ds.test_labels).mean()
    assert accuracy > 0.5, accuracy


# ---------------------------------------------------------------- Dataset


def test_data_dir_defaults_to_TINYVIT_DATA_then_the_user_cache(tmp_path, monkeypatch):
    """data_dir=None means $TINYVIT_DATA when set, else ~/.cache/tinyvit; load_dataset looks there."""
    monkeypatch.delenv("TINYVIT_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_data_dir() == tmp_path / "home" / ".cache" / "tinyvit"
    monkeypatch.setenv("TINYVIT_DATA", str(tmp_path / "elsewhere"))
    assert default_data_dir() == tmp_path / "elsewhere"
    with pytest.raises(ValueError, match=f"CIFAR-10 not found in {tmp_path / 'elsewhere'}"):
        load_dataset("cifar10", data_dir=None, download=False)


def test_channel_stats_match_a_float64_computation():
    images = np.random.default_rng(0).integers(0, 256, (7, 5, 5, 3), dtype=np.uint8)
    mean, std = channel_stats(images)
    x = images.astype(np.float64) / 255
    np.testing.assert_allclose(mean, x.mean(axis=(0, 1, 2)), rtol=1e-6)
    np.testing.assert_allclose(std, x.std(axis=(0, 1, 2)), rtol=1e-6)


def test_dataset_rejects_bad_arrays():
    """Wrong dtype, non-square images and labels outside [0, K) are ValueErrors saying what was expected."""
    good = np.zeros((4, 8, 8, 3), np.uint8)
    labels = np.array([0, 1, 0, 1])
    with pytest.raises(ValueError, match=r"train_images must be uint8 \(N, S, S, 3\), got float32"):
        Dataset("x", good.astype(np.float32), labels, good, labels, ["a", "b"])
    with pytest.raises(ValueError, match=r"test_images must be uint8 \(N, S, S, 3\), got uint8 \(4, 8, 6, 3\)"):
        Dataset("x", good, labels, good[:, :, :6], labels, ["a", "b"])
    with pytest.raises(ValueError, match=r"dataset 'x': train_labels must be in \[0, 2\), got values from 0 to 2"):
        Dataset("x", good, labels + np.array([0, 0, 0, 1]), good, labels, ["a", "b"])
    with pytest.raises(ValueError, match=r"dataset 'x': test_labels must have shape \(4,\), got \(3,\)"):
        Dataset("x", good, labels, good, labels[:3], ["a", "b"])


# ---------------------------------------------------------------- augment_batch


def batch(n=16, size=8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_augment_is_deterministic_for_a_generator_state_and_keeps_shape_and_dtype():
    images = batch()
    a = augment_batch(images, np.random.default_rng(5))
    b = augment_batch(images, np.random.default_rng(5))
    c = augment_batch(images, np.random.default_rng(6))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.shape == images.shape and a.dtype == np.uint8


def test_augment_does_not_mutate_its_input():
    images = batch()
    before = images.copy()
    out = augment_batch(images, np.random.default_rng(0), pad=2, flip=True)
    np.testing.assert_array_equal(images, before)
    assert not np.shares_memory(out, images)


def test_forced_flip_without_padding_mirrors_left_right():
    images = batch()
    out = augment_batch(images, np.random.default_rng(0), pad=0, flip=1.0)
    np.testing.assert_array_equal(out, images[:, :, ::-1])


def test_no_flip_and_no_padding_is_the_identity():
    images = batch()
    np.testing.assert_array_equal(augment_batch(images, np.random.default_rng(0), pad=0, flip=False), images)


def test_crop_is_the_image_shifted_with_zeros_coming_in():
    """With pad=2 and no flip, every output is one of the 25 windows of the zero-padded image (the content
    shifted by -2..2 pixels each way, zeros filling in), and different images get different shifts."""
    image = batch(n=1, size=6)[0] | 1  # no zero pixels, so padding is recognisable
    images = np.repeat(image[None], 64, axis=0)
    out = augment_batch(images, np.random.default_rng(0), pad=2, flip=False)
    padded = np.pad(image, ((2, 2), (2, 2), (0, 0)))
    windows = {(dy, dx): padded[dy : dy + 6, dx : dx + 6] for dy in range(5) for dx in range(5)}
    seen = set()
    for o in out:
        matches = [k for k, w in windows.items() if np.array_equal(o, w)]
        assert len(matches) == 1, "an output is not a shifted copy of the input"
        seen.add(matches[0])
    assert len(seen) > 10  # the offsets really vary
    shifted_right = windows[(2, 0)]  # content moved 2 pixels right: two zero columns on the left
    assert np.all(shifted_right[:, :2] == 0) and np.array_equal(shifted_right[:, 2:], image[:, :4])


def test_default_flip_mirrors_about_half_the_images():
    """flip=True mirrors each image with probability 1/2 (counted on images that differ from their mirror)."""
    images = batch(n=400)
    out = augment_batch(images, np.random.default_rng(1), pad=0, flip=True)
    mirrored = np.array([np.array_equal(o, i[:, ::-1]) for o, i in zip(out, images)])
    kept = np.array([np.array_equal(o, i) for o, i in zip(out, images)])
    assert np.all(mirrored ^ kept)
    assert 0.4 < mirrored.mean() < 0.6, mirrored.mean()


@pytest.mark.parametrize("kwargs, message", [
    ({"pad": -1}, "pad must be a non-negative integer"),
    ({"flip": 1.5}, "flip must be True, False or a probability"),
])  # fmt: skip
def test_augment_rejects_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        augment_batch(batch(), np.random.default_rng(0), **kwargs)
    with pytest.raises(ValueError, match="images must be a uint8 array"):
        augment_batch(batch().astype(np.float32), np.random.default_rng(0))


# ---------------------------------------------------------------- normalize


def test_normalize_is_the_documented_formula():
    images = batch()
    mean, std = np.array([0.4, 0.5, 0.6]), np.array([0.2, 0.25, 0.3])
    out = normalize(images, mean, std)
    assert out.dtype == np.float32 and out.shape == images.shape
    np.testing.assert_allclose(out, (images / 255 - mean) / std, rtol=1e-5, atol=1e-5)
    assert normalize(images, mean, std, dtype=np.float64).dtype == np.float64


def test_normalize_with_the_dataset_statistics_gives_zero_mean_unit_std():
    ds = make_shapes(300, 0, image_size=16, seed=0)
    x = normalize(ds.train_images, ds.mean, ds.std, dtype=np.float64)
    np.testing.assert_allclose(x.mean(axis=(0, 1, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(x.std(axis=(0, 1, 2)), 1, atol=1e-5)


def test_normalize_rejects_mismatched_statistics():
    with pytest.raises(ValueError, match=r"one value per channel \(3\), got \(2,\)"):
        normalize(batch(), [0.5, 0.5], [0.2, 0.2, 0.2])
    with pytest.raises(ValueError, match="std must be positive"):
        normalize(batch(), [0.5] * 3, [0.2, 0.0, 0.2])

"""`folder:PATH` datasets: odd image files, both layouts, the errors a user meets, and the decode cache."""

import os

import numpy as np
import pytest
from PIL import Image

from tinyvit.data import folder, load_dataset


def save(path, mode, size, colour, fmt=None):
    """One image of a flat colour in the given Pillow mode, size (w, h) and file format."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new(mode, size, colour)
    img.save(path, fmt)
    return path


def palette_image(path, rgb):
    img = Image.new("RGB", (12, 12), rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    img.save(path)


def test_odd_formats_become_rgb_at_image_size(tmp_path):
    """Greyscale, RGBA, palette, non-square and large PNG/JPEG/BMP/GIF files all come out RGB (16, 16, 3),
    keeping their colour; train/ and test/ subfolders are used as the split, files in sorted order."""
    root = tmp_path / "imgs"
    save(root / "train/ants/1_grey.png", "L", (10, 14), 200)
    save(root / "train/ants/2_rgba.png", "RGBA", (32, 32), (10, 20, 30, 128))
    (root / "train/ants").mkdir(parents=True, exist_ok=True)
    palette_image(root / "train/ants/3_palette.gif", (250, 0, 0))
    save(root / "train/bees/1_wide.bmp", "RGB", (40, 20), (0, 128, 255))
    save(root / "train/bees/2_big.jpg", "RGB", (300, 200), (0, 200, 0), "JPEG")
    save(root / "train/bees/notes.txt.md", "RGB", (4, 4), (0, 0, 0), "PNG")  # not an image extension: skipped
    save(root / "test/ants/x.png", "RGB", (16, 16), (1, 2, 3))
    save(root / "test/bees/y.png", "LA", (16, 16), (77, 255))

    ds = load_dataset(f"folder:{root}", data_dir=tmp_path / "cache", image_size=16)
    assert ds.class_names == ["ants", "bees"]
    assert ds.train_images.shape == (5, 16, 16, 3) and ds.train_images.dtype == np.uint8
    np.testing.assert_array_equal(ds.train_labels, [0, 0, 0, 1, 1])
    np.testing.assert_array_equal(ds.test_labels, [0, 1])
    expected = [(200, 200, 200), (10, 20, 30), (250, 0, 0), (0, 128, 255)]
    for image, colour in zip(ds.train_images, expected):
        assert np.all(image == colour), (image[0, 0], colour)
    np.testing.assert_allclose(ds.train_images[4].reshape(-1, 3).mean(0), (0, 200, 0), atol=3)  # JPEG is lossy
    assert np.all(ds.test_images[0] == (1, 2, 3)) and np.all(ds.test_images[1] == (77, 77, 77))


def make_classes(root, counts):
    """counts[k] images for class k, each a unique flat colour (k, i, 0), so an image can be traced."""
    for k, n in enumerate(counts):
        for i in range(n):
            save(root / f"class{k}" / f"{i:03d}.png", "RGB", (8, 8), (k, i, 0))


def colours(images):
    return sorted(tuple(int(v) for v in img[0, 0]) for img in images)


def test_flat_layout_gets_a_seeded_stratified_split(tmp_path):
    """Without train/ and test/, 10% of each class (at least one) goes to test; every image lands in exactly
    one split; the same seed gives the same split, another seed another."""
    root = tmp_path / "flat"
    make_classes(root, [10, 20, 3])
    ds = load_dataset(f"folder:{root}", data_dir=tmp_path / "cache", image_size=8, seed=0)
    np.testing.assert_array_equal(np.bincount(ds.test_labels), [1, 2, 1])
    np.testing.assert_array_equal(np.bincount(ds.train_labels), [9, 18, 2])
    everything = colours(np.concatenate([ds.train_images, ds.test_images]))
    assert everything == sorted((k, i, 0) for k, n in enumerate([10, 20, 3]) for i in range(n))
    again = load_dataset(f"folder:{root}", data_dir=tmp_path / "cache", image_size=8, seed=0)
    other = load_dataset(f"folder:{root}", data_dir=tmp_path / "cache", image_size=8, seed=1)
    assert colours(again.test_images) == colours(ds.test_images)
    assert colours(other.test_images) != colours(ds.test_images)


def test_cache_is_reused_and_renewed_when_a_file_changes(tmp_path, monkeypatch):
    """The second load reads the .npz cache without decoding; changing a file's contents makes a new cache."""
    root = tmp_path / "flat"
    make_classes(root, [4, 4])
    first = load_dataset(f"folder:{root}", data_dir=tmp_path / "cache", image_size=8)
    caches = list((tmp_path / "cache" / folder.CACHE_DIR).glob("*.npz"))
    assert len(caches) == 1

    decoded = []
    real_decode = folder.decode_image
    monkeypatch.setattr(folder, "decode_image", lambda path, size: decoded.append(path) or real_decode(path, size))
    second = load_dataset(f"folder:{root}", data_dir=tmp_path / "cache", image_size=8)
    assert decoded == []
    np.testing.assert_array_equal(second.train_images, first.train_images)

    changed = root / "class1" / "002.png"
    save(changed, "RGB", (8, 8), (99, 99, 99))
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
    third = load_dataset(f"folder:{root}", data_dir=tmp_path / "cache", image_size=8)
    assert len(decoded) == 8
    assert (99, 99, 99) in colours(np.concatenate([third.train_images, third.test_images]))
    assert len(list((tmp_path / "cache" / folder.CACHE_DIR).glob("*.npz"))) == 2
    assert list((tmp_path / "cache" / folder.CACHE_DIR).glob("*.part")) == []


def test_broken_image_is_an_error_naming_the_file(tmp_path):
    root = tmp_path / "flat"
    make_classes(root, [2, 2])
    broken = root / "class1" / "zz_broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n but not really")
    with pytest.raises(ValueError, match=f"cannot read image {broken}"):
        load_dataset(f"folder:{root}", data_dir=tmp_path / "cache")
    assert not any((tmp_path / "cache").rglob("*.npz"))  # nothing cached from a failed decode


def test_empty_class_folder_is_an_error_naming_it(tmp_path):
    root = tmp_path / "flat"
    make_classes(root, [2])
    (root / "empty").mkdir()
    (root / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match=f"class folder {root / 'empty'} holds no image files"):
        load_dataset(f"folder:{root}", data_dir=tmp_path / "cache")


def test_missing_directory_and_no_class_folders_are_errors(tmp_path):
    with pytest.raises(ValueError, match=f"image folder {tmp_path / 'nope'} does not exist"):
        load_dataset(f"folder:{tmp_path / 'nope'}", data_dir=tmp_path / "cache")
    (tmp_path / "flat").mkdir()
    save(tmp_path / "flat" / "loose.png", "RGB", (4, 4), (0, 0, 0))
    with pytest.raises(ValueError, match="has no class subfolders"):
        load_dataset(f"folder:{tmp_path / 'flat'}", data_dir=tmp_path / "cache")


def test_test_split_with_an_unknown_class_is_an_error(tmp_path):
    root = tmp_path / "split"
    save(root / "train/cat/a.png", "RGB", (4, 4), (0, 0, 0))
    save(root / "test/dog/b.png", "RGB", (4, 4), (0, 0, 0))
    with pytest.raises(ValueError, match=r"has classes \['dog'\] that .* lacks"):
        load_dataset(f"folder:{root}", data_dir=tmp_path / "cache")


@pytest.mark.parametrize("spec", ["cifar100", "folder:", "shapes:abc", "shapes:0", "Shapes"])
def test_unknown_spec_lists_the_valid_forms(tmp_path, spec):
    with pytest.raises(ValueError, match="shapes") as err:
        load_dataset(spec, data_dir=tmp_path)
    assert "expected" in str(err.value)

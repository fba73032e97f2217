"""The Fashion-MNIST / MNIST, image-folder and .npz loaders: round trips on small files the tests
write, hostile files refused with the file named, and the real Debian files where installed."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from conftest import npz_arrays, write_idx
from PIL import Image

from gmcert.data import build_dataset
from gmcert.data.arrays import build_arrays
from gmcert.data.folder import build_folder
from gmcert.data.idx import build_idx, read_idx

DEBIAN = Path("/usr/share/datasets/fashion-mnist")


def test_idx_round_trip_in_torchvision_layout(tmp_path):
    written = write_idx(tmp_path / "FashionMNIST" / "raw")
    data = build_idx(name="fashion_mnist", root=tmp_path, skip=2)
    images, labels = written["train"]
    assert data.train.inputs.shape == (100, 1, 28, 28)
    np.testing.assert_array_equal(data.train.inputs[:, 0], images.astype(np.float32) / 255)
    np.testing.assert_array_equal(data.train.labels, labels)
    assert data.test.indices.tolist() == list(range(0, 50, 2))


def test_idx_fallback_root_is_used(tmp_path):
    write_idx(tmp_path / "installed")
    data = build_idx(name="mnist", root=tmp_path / "empty", fallback_roots=[tmp_path / "installed"])
    assert len(data.test) == 50


def test_idx_missing_files_name_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte.*dataset.root"):
        build_idx(name="fashion_mnist", root=tmp_path)


def _rewrite(path: Path, content: bytes) -> None:
    with gzip.open(path, "wb") as f:
        f.write(content)


@pytest.mark.parametrize("damage", ["magic", "truncated", "padded", "labels", "count"])
def test_idx_hostile_files_are_refused_with_their_name(tmp_path, damage):
    write_idx(tmp_path)
    images = tmp_path / "train-images-idx3-ubyte.gz"
    labels = tmp_path / "train-labels-idx1-ubyte.gz"
    raw = gzip.decompress(images.read_bytes())
    if damage == "magic":
        _rewrite(images, gzip.decompress(labels.read_bytes()))
        target = images
    elif damage == "truncated":
        _rewrite(images, raw[:-10])
        target = images
    elif damage == "padded":
        _rewrite(images, raw + b"\0")
        target = images
    elif damage == "labels":
        content = bytearray(gzip.decompress(labels.read_bytes()))
        content[8] = 11
        _rewrite(labels, bytes(content))
        target = labels
    else:
        header = (0x803).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in (99, 28, 28))
        _rewrite(images, header + raw[16 : 16 + 99 * 784])
        target = images
    with pytest.raises(ValueError, match=str(target)):
        build_idx(name="fashion_mnist", root=tmp_path)


def test_read_idx_refuses_a_damaged_gzip(tmp_path):
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(b"\x1f\x8b" + b"garbage" * 10)
    with pytest.raises(ValueError, match="damaged gzip"):
        read_idx(path, "labels")


def _npz(path, **overrides):
    arrays = npz_arrays(**overrides)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return arrays


def test_arrays_round_trip_keeps_units(tmp_path):
    arrays = _npz(tmp_path / "d.npz")
    data = build_dataset("arrays", path=tmp_path / "d.npz")
    np.testing.assert_array_equal(data.test.inputs, arrays["x_test"])
    assert data.num_classes == 3


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"y_test": None}, "missing y_test"),
        ({"x_train": np.array([object()] * 40)}, "pickle"),
        ({"x_test": np.full((20, 5), np.nan, np.float32)}, "NaN or inf"),
        ({"y_train": np.arange(39) % 3}, "labels"),
        ({"x_test": np.zeros((20, 4), np.float32)}, "shape"),
        ({"y_train": np.linspace(0, 2, 40)}, "integer labels"),
    ],
)
def test_arrays_hostile_files_are_refused(tmp_path, overrides, message):
    _npz(tmp_path / "d.npz", **overrides)
    with pytest.raises(ValueError, match=message):
        build_arrays(path=tmp_path / "d.npz")


def test_arrays_not_an_npz(tmp_path):
    (tmp_path / "d.npz").write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="d.npz"):
        build_arrays(path=tmp_path / "d.npz")


def _folder(root: Path, classes=("a", "b"), size=(6, 5)):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for name in classes:
            (root / split / name).mkdir(parents=True)
            for i in range(3):
                pixels = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")


@pytest.mark.parametrize("channels", [1, 3])
def test_folder_round_trip(tmp_path, channels):
    _folder(tmp_path)
    data = build_folder(root=tmp_path, image_size=[6, 5], channels=channels)
    assert data.train.inputs.shape == (6, channels, 6, 5)
    assert data.class_names == ["a", "b"] and data.train.labels.tolist() == [0, 0, 0, 1, 1, 1]
    with Image.open(tmp_path / "test" / "b" / "2.png") as image:
        expected = np.asarray(image.convert("L" if channels == 1 else "RGB"), np.float32) / 255
    expected = expected[None] if channels == 1 else expected.transpose(2, 0, 1)
    np.testing.assert_allclose(data.test.inputs[-1], expected, atol=1e-7)


def test_folder_hostile_trees_are_refused(tmp_path):
    _folder(tmp_path)
    with pytest.raises(ValueError, match="image_size"):
        build_folder(root=tmp_path, image_size=7)
    assert build_folder(root=tmp_path, image_size=7, resize=True).test.inputs.shape[-1] == 7
    (tmp_path / "test" / "b" / "2.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="cannot decode image"):
        build_folder(root=tmp_path, image_size=[6, 5])
    (tmp_path / "train" / "c").mkdir()
    with pytest.raises(ValueError, match="same class folders"):
        build_folder(root=tmp_path, image_size=[6, 5])
    (tmp_path / "test" / "c").mkdir()
    with pytest.raises(ValueError, match="without images"):
        build_folder(root=tmp_path, image_size=[6, 5])


@pytest.mark.skipif(
    not DEBIAN.is_dir(), reason="Fashion-MNIST not installed: apt-get install dataset-fashion-mnist"
)
def test_the_real_fashion_mnist_files(tmp_path):
    data = build_dataset("fashion_mnist", root=tmp_path, fallback_roots=[str(DEBIAN)])
    assert data.train.inputs.shape == (60_000, 1, 28, 28) and len(data.test) == 10_000
    assert 0 <= data.train.inputs.min() and data.train.inputs.max() <= 1
    assert np.bincount(data.train.labels).tolist() == [6000] * 10
    assert np.bincount(data.test.labels).tolist() == [1000] * 10

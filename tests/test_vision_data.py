"""CIFAR-10 and ImageNet builders on small fakes written in the real on-disk formats.

The fakes (``write_cifar10``, ``write_imagenet``) live in conftest.py.  Nothing here
downloads: the CIFAR-10 download path is exercised with a stand-in for torchvision's CIFAR10
class that writes the fake batches.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import IMAGENET_TRAIN_COUNTS, IMAGENET_WNIDS, write_cifar10, write_imagenet
from PIL import Image

from gmcert.data.cifar10 import CIFAR10_CLASSES, build_cifar10
from gmcert.data.imagenet import build_imagenet, imagenet_transform

CIFAR_NAMES = list(CIFAR10_CLASSES)


@pytest.fixture
def cifar_root(tmp_path):
    truth = write_cifar10(tmp_path / "data")
    return tmp_path / "data", truth


@pytest.fixture
def imagenet_root(tmp_path):
    write_imagenet(tmp_path / "imagenet")
    return tmp_path / "imagenet"


# --------------------------------------------------------------------------------------------
# CIFAR-10
# --------------------------------------------------------------------------------------------


def test_cifar10_matches_torchvision_reader(cifar_root, monkeypatch):
    """Same images, channel order, scaling and labels as torchvision's CIFAR10 + ToTensor."""
    import torchvision.datasets.cifar as tv_cifar
    from torchvision import transforms

    root, _ = cifar_root
    # The fake files cannot match the real MD5 sums; torchvision's reader is otherwise intact.
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)
    data = build_cifar10(root=root)
    for train, split in ((True, data.train), (False, data.test)):
        ref = tv_cifar.CIFAR10(str(root), train=train, transform=transforms.ToTensor())
        assert len(split.inputs) == len(ref)
        np.testing.assert_array_equal(split.labels, np.asarray(ref.targets))
        for i in (0, 7, len(ref) - 1):
            ours, label = split.inputs[i]
            theirs, ref_label = ref[i]
            assert label == ref_label
            assert ours.dtype == torch.float32 and ours.shape == (3, 32, 32)
            torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    assert data.class_names == list(ref.classes) == CIFAR_NAMES


def test_cifar10_contents_and_subset_protocol(cifar_root):
    root, truth = cifar_root
    data = build_cifar10(root=root, skip=3, max=5, train_max=7)
    assert data.name == "cifar10" and data.num_classes == 10 and data.class_names == CIFAR_NAMES
    np.testing.assert_array_equal(data.test.indices, [0, 3, 6, 9, 12])
    np.testing.assert_array_equal(data.test.labels, truth["test_labels"][[0, 3, 6, 9, 12]])
    np.testing.assert_array_equal(data.train.indices, np.arange(7))
    np.testing.assert_array_equal(data.train.labels, truth["train_labels"][:7])
    for split in (data.train, data.test):
        assert split.labels.dtype == np.int64 and split.indices.dtype == np.int64
        assert len(split.inputs) == len(split.labels) == len(split.indices)
    # Item k of the subset is the original image at indices[k], native 32x32 in [0, 1].
    image, label = data.test.inputs[2]
    expected = truth["test_data"][6].reshape(3, 32, 32).astype(np.float32) / 255
    np.testing.assert_array_equal(image.numpy(), expected)
    assert label == truth["test_labels"][6]
    array = data.test.inputs.as_array()
    assert array.shape == (5, 3, 32, 32) and array.dtype == np.float32
    assert 0.0 <= array.min() and array.max() <= 1.0
    # The literature's protocol: every 20th test image.
    full = build_cifar10(root=root, skip=20)
    np.testing.assert_array_equal(full.test.indices, [0, 20])
    assert len(full.train.labels) == 100


def test_cifar10_accepts_the_batches_folder_itself(cifar_root):
    root, truth = cifar_root
    data = build_cifar10(root=root / "cifar-10-batches-py", max=3)
    np.testing.assert_array_equal(data.test.labels, truth["test_labels"][:3])


def test_cifar10_missing_root_says_what_and_how(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="CIFAR-10 not found under dataset.root=") as err:
        build_cifar10(root=missing)
    message = str(err.value)
    assert str(missing) in message and "cifar-10-batches-py" in message
    assert "dataset.download=true" in message and "data_batch_1" in message


def test_cifar10_downloads_only_when_asked(tmp_path, monkeypatch):
    import torchvision.datasets

    calls = []

    class FakeCIFAR10:  # stands in for torchvision's downloader: no network in tests
        def __init__(self, root, train=True, download=False, **kwargs):
            calls.append((root, train, download))
            write_cifar10(Path(root))

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    with pytest.raises(FileNotFoundError, match="CIFAR-10 not found"):
        build_cifar10(root=tmp_path / "c")
    assert calls == []
    data = build_cifar10(root=tmp_path / "c", download=True, max=4)
    assert calls == [(str(tmp_path / "c"), True, True)]
    assert len(data.test.labels) == 4
    build_cifar10(root=tmp_path / "c", download=True)  # present: no second download
    assert len(calls) == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"skip": 0}, "skip must be a positive integer, got 0"),
        ({"max": 0}, "max must be a positive integer or None, got 0"),
        ({"train_max": -1}, "train_max must be a positive integer or None, got -1"),
        ({"skip": 2.5}, "skip must be a positive integer, got 2.5"),
        ({"max": True}, "max must be a positive integer or None, got True"),
    ],
)
def test_cifar10_bad_arguments(cifar_root, kwargs, message):
    root, _ = cifar_root
    with pytest.raises(ValueError, match=message):
        build_cifar10(root=root, **kwargs)


def test_cifar10_corrupt_batch_names_the_file(cifar_root):
    root, _ = cifar_root
    (root / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="data_batch_3"):
        build_cifar10(root=root)


# --------------------------------------------------------------------------------------------
# ImageNet
# --------------------------------------------------------------------------------------------


def test_imagenet_matches_imagefolder(imagenet_root):
    """Order, labels and tensors equal torchvision's ImageFolder with the same transform."""
    from torchvision.datasets import ImageFolder

    data = build_imagenet(root=imagenet_root)
    transform = imagenet_transform()
    for split_name, split in (("train", data.train), ("val", data.test)):
        ref = ImageFolder(str(imagenet_root / split_name), transform=transform)
        assert ref.classes == IMAGENET_WNIDS
        np.testing.assert_array_equal(split.labels, np.asarray(ref.targets))
        np.testing.assert_array_equal(split.indices, np.arange(len(ref)))
        for i in (0, 3, len(ref) - 1):
            ours, label = split.inputs[i]
            theirs, ref_label = ref[i]
            assert label == ref_label
            assert ours.shape == (3, 224, 224) and ours.dtype == torch.float32
            torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
            assert 0.0 <= float(ours.min()) and float(ours.max()) <= 1.0
    assert data.name == "imagenet" and data.num_classes == 3 and data.class_names == IMAGENET_WNIDS


def test_imagenet_subset_protocol_and_train_cap(imagenet_root):
    data = build_imagenet(root=imagenet_root, skip=2, max=3, train_per_class=2)
    # val order: 3 images of class 0, then class 1, then class 2.
    np.testing.assert_array_equal(data.test.indices, [0, 2, 4])
    np.testing.assert_array_equal(data.test.labels, [0, 0, 1])
    assert len(data.test.inputs) == 3
    # First 2 (sorted) files of each class, indexed in the full train order (4, 3, 5 files).
    np.testing.assert_array_equal(data.train.indices, [0, 1, 4, 5, 7, 8])
    np.testing.assert_array_equal(data.train.labels, [0, 0, 1, 1, 2, 2])
    assert data.train.inputs.path(2).name == "n01443537_0000.JPEG"
    assert data.train.labels.dtype == np.int64 and data.test.indices.dtype == np.int64


def test_imagenet_labels_without_decoding(imagenet_root, monkeypatch):
    import PIL.Image

    def refuse(*args, **kwargs):
        raise AssertionError("an image was decoded while building the index")

    monkeypatch.setattr(PIL.Image, "open", refuse)
    data = build_imagenet(root=imagenet_root, skip=100)
    assert len(data.train.labels) == sum(IMAGENET_TRAIN_COUNTS) and len(data.test.labels) == 1


def test_imagenet_class_names_from_mapping_file(imagenet_root):
    (imagenet_root / "LOC_synset_mapping.txt").write_text(
        "n01440764 tench, Tinca tinca\nn01443537 goldfish, Carassius auratus\n"
        "n01484850 great white shark, white shark\n"
    )
    data = build_imagenet(root=imagenet_root, max=1)
    assert data.class_names == ["tench", "goldfish", "great white shark"]


def test_imagenet_missing_folders(tmp_path, imagenet_root):
    with pytest.raises(FileNotFoundError, match="train/ and val/"):
        build_imagenet(root=tmp_path / "absent")
    (imagenet_root / "val").rename(imagenet_root / "validation")
    with pytest.raises(FileNotFoundError, match="is missing; expected") as err:
        build_imagenet(root=imagenet_root)
    assert str(imagenet_root / "val") in str(err.value) and "<wnid>" in str(err.value)


def test_imagenet_empty_class_folder(imagenet_root):
    folder = imagenet_root / "val" / IMAGENET_WNIDS[1]
    for f in folder.iterdir():
        f.unlink()
    with pytest.raises(ValueError, match="class folders without images") as err:
        build_imagenet(root=imagenet_root)
    assert str(folder) in str(err.value)


def test_imagenet_mismatched_classes(imagenet_root):
    extra = imagenet_root / "train" / "n09999999"
    extra.mkdir()
    Image.new("RGB", (50, 50)).save(extra / "x.JPEG")
    with pytest.raises(ValueError, match="must hold the same class folders") as err:
        build_imagenet(root=imagenet_root)
    assert "n09999999" in str(err.value) and "only in train" in str(err.value)


def test_imagenet_flat_val_folder(tmp_path):
    root = tmp_path / "inet"
    (root / "train" / IMAGENET_WNIDS[0]).mkdir(parents=True)
    Image.new("RGB", (50, 50)).save(root / "train" / IMAGENET_WNIDS[0] / "a.JPEG")
    (root / "val").mkdir()
    Image.new("RGB", (50, 50)).save(root / "val" / "ILSVRC2012_val_00000001.JPEG")
    with pytest.raises(ValueError, match="one folder per class"):
        build_imagenet(root=root)


def test_imagenet_undecodable_image_names_the_file(imagenet_root):
    bad = imagenet_root / "val" / IMAGENET_WNIDS[0] / f"{IMAGENET_WNIDS[0]}_0000.JPEG"
    bad.write_bytes(b"not a jpeg")
    data = build_imagenet(root=imagenet_root)
    with pytest.raises(ValueError, match="cannot decode"):
        data.test.inputs[0]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"skip": 0}, "skip must be a positive integer, got 0"),
        ({"max": -3}, "max must be a positive integer or None, got -3"),
        ({"train_per_class": 0}, "train_per_class must be a positive integer or None, got 0"),
        ({"crop_size": 300}, "crop_size 300 exceeds resize_size 256"),
    ],
)
def test_imagenet_bad_arguments(tmp_path, kwargs, message):
    # Arguments are checked before the disk is read: no fake dataset is needed.
    with pytest.raises(ValueError, match=message):
        build_imagenet(root=tmp_path / "absent", **kwargs)


def test_dataset_registry_reaches_these_builders(cifar_root):
    """gmcert.data.build_dataset("cifar10", ...) goes through build_cifar10 and validates."""
    from gmcert.data import build_dataset

    root, _ = cifar_root
    data = build_dataset("cifar10", root=root, skip=20)
    assert len(data.test.labels) == 2

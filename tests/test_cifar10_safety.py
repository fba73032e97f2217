"""CIFAR-10 files are data, never code: the batches are read with a restricted unpickler,
checked against the official MD5s before they are read, and checked for their structure.

The fake folders come from conftest's ``write_cifar10`` (the real on-disk format)."""

from __future__ import annotations

import builtins
import hashlib
import io
import os
import pickle
import struct
import warnings

import numpy as np
import pytest
from conftest import write_cifar10

import gmcert.data.cifar10 as cifar10
from gmcert.data.cifar10 import CIFAR10_MD5, build_cifar10

BATCH_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


@pytest.fixture
def folder(tmp_path):
    write_cifar10(tmp_path / "data")
    return tmp_path / "data" / "cifar-10-batches-py"


def md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


class RunsCode:
    """Unpickling this object calls ``function(*args)`` (the classic pickle exploit)."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def exploits(marker):
    code = f"open({str(marker)!r}, 'w').close()"
    return {
        "os.system": RunsCode(os.system, f"touch '{marker}'"),
        "builtins.exec": RunsCode(builtins.exec, code),
    }


def write_pickle(path, content) -> None:
    with open(path, "wb") as f:
        pickle.dump(content, f, protocol=2)


def fake_batch(n: int = 4) -> dict:
    rng = np.random.default_rng(1)
    return {
        "batch_label": "fake",
        "labels": [int(y) for y in rng.integers(0, 10, size=n)],
        "data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        "filenames": [f"{i}.png" for i in range(n)],
    }


# ---------------------------------------------------------------------------------------------
# A crafted pickle never runs
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["os.system", "builtins.exec"])
def test_the_exploit_works_on_a_plain_unpickler(tmp_path, how):
    """Sanity check of the payload used below: plain pickle.load does run it."""
    marker = tmp_path / "pwned"
    pickle.loads(pickle.dumps(exploits(marker)[how], protocol=2))
    assert marker.exists()


@pytest.mark.filterwarnings("ignore:the CIFAR-10 files")
@pytest.mark.parametrize("how", ["os.system", "builtins.exec"])
@pytest.mark.parametrize("verify_checksums", [None, False])
@pytest.mark.parametrize("where", ["whole_file", "inside_labels"])
def test_crafted_batch_is_refused_and_never_runs(folder, tmp_path, how, verify_checksums, where):
    marker = tmp_path / "pwned"
    payload = exploits(marker)[how]
    if where == "whole_file":
        content = payload
    else:
        content = fake_batch()
        content["labels"][0] = payload
    write_pickle(folder / "data_batch_1", content)
    # Protocol 2 names Python-2 modules: posix.system (Linux), __builtin__.exec.
    module = {"os.system": os.system.__module__, "builtins.exec": "__builtin__"}[how]
    name = how.split(".")[1]
    with pytest.raises(ValueError, match=rf"data_batch_1 asks to load {module}\.{name}.*refused"):
        build_cifar10(root=folder.parent, verify_checksums=verify_checksums)
    assert not marker.exists()


def test_crafted_meta_is_refused_and_never_runs(folder, tmp_path):
    marker = tmp_path / "pwned"
    write_pickle(folder / "batches.meta", {"label_names": exploits(marker)["builtins.exec"]})
    with pytest.raises(ValueError, match=r"batches\.meta asks to load __builtin__\.exec"):
        build_cifar10(root=folder.parent, verify_checksums=False)
    assert not marker.exists()


def test_crafted_batch_fails_the_checksum_before_it_is_read(folder, tmp_path):
    marker = tmp_path / "pwned"
    write_pickle(folder / "data_batch_1", exploits(marker)["builtins.exec"])
    with pytest.raises(ValueError, match=r"data_batch_1 fails the CIFAR-10 checksum"):
        build_cifar10(root=folder.parent, verify_checksums=True)
    assert not marker.exists()


def test_numpy_object_arrays_cannot_smuggle_code(folder, tmp_path):
    marker = tmp_path / "pwned"
    content = fake_batch()
    content["data"] = np.array([exploits(marker)["builtins.exec"]], dtype=object)
    write_pickle(folder / "data_batch_2", content)
    with pytest.raises(ValueError, match=r"data_batch_2 asks to load __builtin__\.exec"):
        build_cifar10(root=folder.parent, verify_checksums=False)
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# Checksums
# ---------------------------------------------------------------------------------------------


def test_official_digests_are_torchvisions():
    from torchvision.datasets.cifar import CIFAR10

    listed = dict(CIFAR10.train_list + CIFAR10.test_list)
    listed[CIFAR10.meta["filename"]] = CIFAR10.meta["md5"]
    assert CIFAR10_MD5 == listed


def test_fake_folder_fails_the_official_checksums_when_asked(folder):
    found = md5(folder / "data_batch_1")
    expected = CIFAR10_MD5["data_batch_1"]
    with pytest.raises(
        ValueError, match=rf"data_batch_1 fails .* expected {expected}, found {found}.*re-extract"
    ):
        build_cifar10(root=folder.parent, verify_checksums=True)


@pytest.mark.parametrize("verify_checksums", [True, None])
def test_flipped_pixels_are_caught_by_the_checksum(folder, monkeypatch, verify_checksums):
    for name in [*BATCH_FILES, "batches.meta"]:
        monkeypatch.setitem(CIFAR10_MD5, name, md5(folder / name))
    # auto mode verifies a folder that could be the official one: make the fake batches count.
    monkeypatch.setattr(cifar10, "_OFFICIAL_BATCH_MIN_BYTES", 1000)
    intact = build_cifar10(root=folder.parent, verify_checksums=verify_checksums)
    assert len(intact.train.labels) == 100

    path = folder / "data_batch_2"
    with open(path, "rb") as f:
        batch = pickle.load(f)  # written by write_cifar10 in this test: trusted
    batch["data"][0, :3] = 255 - batch["data"][0, :3]  # three flipped pixels
    write_pickle(path, batch)
    expected, found = CIFAR10_MD5["data_batch_2"], md5(path)
    assert found != expected
    with pytest.raises(
        ValueError,
        match=rf"data_batch_2 fails the CIFAR-10 checksum: MD5 expected {expected}, found {found}",
    ):
        build_cifar10(root=folder.parent, verify_checksums=verify_checksums)
    # The altered pixels still form a valid batch: only the checksum catches them.
    build_cifar10(root=folder.parent, verify_checksums=False)


def test_small_unverified_folder_warns_and_false_is_quiet(folder):
    with pytest.warns(UserWarning, match=r"checksums were not verified.*verify_checksums=False"):
        build_cifar10(root=folder.parent)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = build_cifar10(root=folder.parent, verify_checksums=False)
    assert len(data.train.labels) == 100 and len(data.test.labels) == 40


def test_verify_checksums_must_be_a_bool_or_none(folder):
    with pytest.raises(ValueError, match="verify_checksums must be true, false or null"):
        build_cifar10(root=folder.parent, verify_checksums="yes")


# ---------------------------------------------------------------------------------------------
# Malformed files: one line naming the file and the fix
# ---------------------------------------------------------------------------------------------


def _without_labels(batch):
    del batch["labels"]
    return batch


def _wrong_shape(batch):
    batch["data"] = batch["data"].reshape(-1, 3, 32, 32)
    return batch


def _float_data(batch):
    batch["data"] = batch["data"].astype(np.float32)
    return batch


def _bad_labels(batch):
    batch["labels"][1] = 10
    return batch


def _label_count(batch):
    batch["labels"] = batch["labels"][:-1]
    return batch


def _string_labels(batch):
    batch["labels"] = [str(y) for y in batch["labels"]]
    return batch


MALFORMED = {
    "missing_labels": (_without_labels, r"lacks the 'data'/'labels' entries"),
    "wrong_shape": (_wrong_shape, r"expected 'data' uint8 of shape \(n, 3072\)"),
    "float_data": (_float_data, r"expected 'data' uint8 of shape \(n, 3072\), got ndarray float32"),
    "labels_out_of_range": (_bad_labels, r"labels outside 0\.\.9"),
    "label_count": (_label_count, r"4 images but 3 labels"),
    "string_labels": (_string_labels, r"expected 'labels' as a list of ints"),
    "not_a_dict": (lambda batch: [batch], r"holds a list, not the dict of a CIFAR-10 file"),
}


def assert_one_line(excinfo, name):
    message = str(excinfo.value)
    assert "\n" not in message and name in message and "re-extract" in message


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_batch_gets_a_one_line_error(folder, case):
    change, message = MALFORMED[case]
    write_pickle(folder / "data_batch_4", change(fake_batch()))
    with pytest.raises(ValueError, match=rf"data_batch_4.*{message}") as excinfo:
        build_cifar10(root=folder.parent, verify_checksums=False)
    assert_one_line(excinfo, "data_batch_4")


@pytest.mark.parametrize(
    "content",
    [b"label,pixels\n3,0 0 0\n", b"", b"\x80\x02}q\x00(X"],
    ids=["text", "empty", "truncated"],
)
def test_unreadable_batch_gets_a_one_line_error(folder, content):
    (folder / "test_batch").write_bytes(content)
    with pytest.raises(ValueError, match=r"test_batch is not a readable CIFAR-10 file") as excinfo:
        build_cifar10(root=folder.parent, verify_checksums=False)
    assert_one_line(excinfo, "test_batch")


@pytest.mark.parametrize(
    "meta",
    [{"num_vis": 3072}, {"label_names": ["a"] * 9}, {"label_names": list(range(10))}],
    ids=["missing", "too_few", "not_strings"],
)
def test_malformed_meta_gets_a_one_line_error(folder, meta):
    write_pickle(folder / "batches.meta", meta)
    with pytest.raises(ValueError, match=r"batches\.meta: expected 'label_names' as 10") as excinfo:
        build_cifar10(root=folder.parent, verify_checksums=False)
    assert_one_line(excinfo, "batches.meta")


# ---------------------------------------------------------------------------------------------
# The normal format still loads, including Python-2 style byte-string keys
# ---------------------------------------------------------------------------------------------


def test_fake_folder_loads_as_written(tmp_path):
    truth = write_cifar10(tmp_path / "data")
    data = build_cifar10(root=tmp_path / "data", verify_checksums=False)
    images = data.train.inputs.images.reshape(len(data.train.labels), -1)
    np.testing.assert_array_equal(images, truth["train_data"])
    np.testing.assert_array_equal(data.train.labels, truth["train_labels"])
    np.testing.assert_array_equal(data.test.labels, truth["test_labels"])


class Python2Pickler(pickle._Pickler):
    """Writes bytes as Python-2 ``str`` opcodes (SHORT_BINSTRING / BINSTRING), as the official
    archive's cPickle files have them."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj):
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def python2_pickle(content) -> bytes:
    buffer = io.BytesIO()
    Python2Pickler(buffer, protocol=2).dump(content)
    # numpy < 2 (which wrote the official files) names numpy.core.multiarray._reconstruct.
    return buffer.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def test_python2_style_pickles_load(folder):
    batch = {k.encode(): v for k, v in fake_batch().items()}
    batch[b"filenames"] = [name.encode() for name in batch[b"filenames"]]
    raw = python2_pickle(batch)
    assert b"cnumpy.core.multiarray\n_reconstruct" in raw and b"_codecs" not in raw
    (folder / "data_batch_5").write_bytes(raw)
    names = [f"c{i}".encode() for i in range(10)]
    (folder / "batches.meta").write_bytes(python2_pickle({b"label_names": names}))
    data = build_cifar10(root=folder.parent, verify_checksums=False)
    assert len(data.train.labels) == 84
    images = data.train.inputs.images[80:].reshape(4, -1)
    np.testing.assert_array_equal(images, fake_batch()["data"])
    np.testing.assert_array_equal(data.train.labels[80:], fake_batch()["labels"])
    assert data.class_names == [f"c{i}" for i in range(10)]

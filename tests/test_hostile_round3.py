"""Hostile inputs, round 3: damaged run folders under gmcert-report, failed single runs, weight
paths that are folders, data in other units, and the IDX / image-folder / npz loaders."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import gmcert_run, npz_arrays

from gmcert.report.sweep import report, report_cli

# ---------------------------------------------------------------------------------------------
# gmcert-report over damaged folders


def _complete_run(folder: Path, *, accuracy: float = 0.9, eps: bool = False) -> Path:
    """A run folder as a finished run leaves it (the files the report reads), written by hand."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(f"- mixture.shrinkage={accuracy}\n")
    (folder / ".hydra" / "config.yaml").write_text("certify:\n  ci_alpha: 0.05\n")
    (folder / "run_fingerprint.txt").write_text(f"fingerprint-{folder.name}\n")
    table = pd.DataFrame(
        {
            "method": ["closed_form"] * 2,
            "norm": ["l2"] * 2,
            "space": ["input"] * 2,
            "radius": [0.0, 0.5],
            "certified_accuracy": [accuracy, accuracy / 2],
            "ci_low": [accuracy - 0.1, accuracy / 2 - 0.1],
            "ci_high": [1.0, accuracy / 2 + 0.1],
            "n": [10, 10],
        }
    )
    table.to_csv(folder / "certified_accuracy.csv", index=False)
    metrics = {"certified_indices": [0, 10]}
    if eps:
        metrics["divergence"] = {"eps_used": 0.5, "eps_source": "knn", "estimates": {"joint": {}}}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "predictions.csv").write_text(
        "method,index,label,predict,radius_latent,radius_input,correct,seconds\n"
        + "".join(f"closed_form,{i},0,0,0.5,0.5,True,0.0\n" for i in range(10))
    )
    return folder


DAMAGE = {
    "metrics_json": ("metrics.json", "{'certified_indices': [0, 10]}", "not valid JSON"),
    "metrics_list": ("metrics.json", "[1, 2]", "holds a list"),
    "metrics_indices": ("metrics.json", '{"certified_indices": "all"}', "certified_indices"),
    "metrics_empty": ("metrics.json", "", "not valid JSON"),
    "table_columns": ("certified_accuracy.csv", "a,b\n1,2\n", "lacks the column"),
    "table_text": (
        "certified_accuracy.csv",
        "method,norm,space,radius,certified_accuracy,ci_low,ci_high\ncf,l2,input,x,y,z,w\n",
        "hold text",
    ),
    "table_empty": ("certified_accuracy.csv", "", "not a readable CSV"),
    "config_yaml": (".hydra/config.yaml", "certify: [unclosed\n", "not valid YAML"),
    "config_scalar": (".hydra/config.yaml", "just a string\n", "holds a str"),
    "overrides_yaml": (".hydra/overrides.yaml", "{a: 1}\n", "not a list"),
    "fingerprint_binary": ("run_fingerprint.txt", b"\xff\xfe\x00", "cannot be read"),
    "eps_section": (
        "metrics.json",
        '{"certified_indices": [0, 10], "divergence": {"eps_used": 1}}',
        "divergence section is malformed",
    ),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_report_lists_a_damaged_folder_and_reports_the_others(tmp_path, case, capsys):
    name, content, why = DAMAGE[case]
    sweep = tmp_path / "sweep"
    _complete_run(sweep / "0", accuracy=0.9)
    _complete_run(sweep / "1", accuracy=0.8)
    target = sweep / "1" / name
    if isinstance(content, bytes):
        target.write_bytes(content)
    else:
        target.write_text(content)
    status = report_cli([str(sweep), "--out", str(tmp_path / "report")])
    out = capsys.readouterr().out
    assert status == 1  # non-zero at the end ...
    assert f"skipped (damaged): {sweep / '1'}: {Path(name).name}: " in out and why in out
    assert "wrote " in out  # ... after the healthy job was reported
    combined = pd.read_csv(tmp_path / "report" / "combined.csv")
    assert combined["run"].unique().tolist() == ["mixture.shrinkage=0.9"]
    runs = pd.read_csv(tmp_path / "report" / "runs.csv")
    assert runs.set_index("folder").loc[str(sweep / "1"), "status"] == "damaged"


def test_report_healthy_sweep_exits_zero(tmp_path, capsys):
    _complete_run(tmp_path / "sweep" / "0", eps=True)
    assert report_cli([str(tmp_path / "sweep"), "--out", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "eps.csv").exists()


def test_damaged_part_of_a_split_run_spoils_only_its_merge(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    for shard, (first, stop) in enumerate([(0, 10), (10, 20)]):
        folder = _complete_run(sweep / str(shard))
        (folder / "run_fingerprint.txt").write_text("one-config\n")
        (folder / "metrics.json").write_text(json.dumps({"certified_indices": [first, stop]}))
    (sweep / "1" / "predictions.csv").write_text("garbage\n")
    _complete_run(tmp_path / "other", accuracy=0.7)
    result = report([sweep, tmp_path / "other"], tmp_path / "report")
    statuses = {r.path.name: r.status for r in result["runs"]}
    assert statuses == {"0": "damaged", "1": "damaged", "other": "complete"}
    assert "predictions.csv: lacks the column" in next(r.reason for r in result["runs"])


def test_damaged_unsound_record_still_marks_the_run_unsound(tmp_path):
    folder = _complete_run(tmp_path / "run")
    (folder / "unsound.json").write_text("[{truncated")
    (run,) = report([folder], tmp_path / "report")["runs"]
    assert run.status == "unsound" and "damaged" in run.reason


@pytest.mark.parametrize(
    "content, reason",
    [
        ('{"error": "ValueError: boom"}', "ValueError: boom"),
        ("{not json", "failed.json is damaged"),
        ('{"error": ""}', "records no error"),
        ('["ValueError"]', "records no error"),
    ],
)
def test_failed_record_gives_its_error_or_says_what_is_wrong(tmp_path, content, reason, capsys):
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "failed.json").write_text(content)
    assert report_cli([str(tmp_path / "job"), "--out", str(tmp_path / "report")]) == 1
    out = capsys.readouterr().out
    assert f"skipped (failed): {tmp_path / 'job'}: " in out and reason in out


def test_report_on_a_folder_without_runs_says_so(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert report_cli([str(tmp_path / "empty"), "--out", str(tmp_path / "report")]) == 1
    assert "no run folders under" in capsys.readouterr().out


@pytest.mark.slow
def test_a_failed_single_run_records_its_error_for_the_report(tmp_path):
    """A single run (not a sweep) that fails writes failed.json too: the report gives its error
    (before, the folder held only an empty run.log and the report said nothing about it)."""
    run_dir = tmp_path / "single"
    proc = gmcert_run(
        "mixture.shrinkage=2.0",
        f"hydra.run.dir={run_dir}",
        f"paths.cache_dir={tmp_path}/cache",
        cwd=tmp_path,
        status=2,
        timeout=300,
    )
    assert "Traceback" not in proc.stderr
    (run,) = report([run_dir], tmp_path / "report")["runs"]
    assert run.status == "failed" and "mixture.shrinkage must be one of" in run.reason
    assert run.name == "mixture.shrinkage=2.0"  # the config is recorded, so the run is named


def test_record_failure_keeps_a_complete_folder_unmarked(tmp_path):
    from omegaconf import OmegaConf

    from gmcert.cli import record_failure

    cfg = OmegaConf.create({"x": 1})
    folder = _complete_run(tmp_path / "done")
    record_failure(folder, cfg, ValueError("refused"), multirun=False)
    assert not (folder / "failed.json").exists()
    (tmp_path / "new").mkdir()
    record_failure(tmp_path / "new", cfg, ValueError("boom"), multirun=False)
    assert json.loads((tmp_path / "new" / "failed.json").read_text()) == {
        "error": "ValueError: boom"
    }


# ---------------------------------------------------------------------------------------------
# Weight paths that are folders (or links to nothing, or pipes)


def _weight_targets(tmp_path: Path) -> dict[str, Path]:
    folder = tmp_path / "weights_dir"
    folder.mkdir()
    (folder / "model.pth").write_bytes(b"")
    link = tmp_path / "dangling.pth"
    link.symlink_to(tmp_path / "gone.pth")
    pipe = tmp_path / "pipe.pth"
    os.mkfifo(pipe)
    return {"folder": folder, "link": link, "pipe": pipe}


WEIGHT_PATH_MESSAGES = {
    "folder": r"is a folder, but a weight file .* is expected; it holds model.pth",
    "link": r"is a link to .*gone.pth, which does not exist",
    "pipe": r"is not a regular file",
}


@pytest.mark.parametrize("kind", sorted(WEIGHT_PATH_MESSAGES))
def test_encoder_weights_that_are_not_files_say_what_they_are(tmp_path, kind):
    from torchvision import models

    from gmcert.encoders.weights import read_state_dict, resolve_torchvision_weights

    path = _weight_targets(tmp_path)[kind]
    message = WEIGHT_PATH_MESSAGES[kind]
    with pytest.raises(ValueError, match=f"encoder.weights={path} {message}"):
        read_state_dict(path)
    # The run's preflight check (before any work) says the same, not "does not exist" later.
    with pytest.raises(ValueError, match=message):
        resolve_torchvision_weights("resnet18", str(path), models.ResNet18_Weights)


@pytest.mark.parametrize("kind", sorted(WEIGHT_PATH_MESSAGES))
def test_denoiser_weights_that_are_not_files_say_what_they_are(tmp_path, kind):
    from gmcert.denoisers.weights import read_weight_file

    path = _weight_targets(tmp_path)[kind]
    with pytest.raises(
        ValueError, match=f"denoiser.weights={path} .*" + WEIGHT_PATH_MESSAGES[kind]
    ):
        read_weight_file(path)


def test_hub_encoder_weights_folder_says_what_it_is(tmp_path):
    from gmcert.encoders.hub_models import _library_weights

    folder = _weight_targets(tmp_path)["folder"]
    with pytest.raises(ValueError, match="is a folder, but a weight file"):
        _library_weights("clip", str(folder), False, "open_clip_pytorch_model.bin")


def test_missing_weight_file_is_still_not_found(tmp_path):
    from gmcert.encoders.weights import read_state_dict

    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_state_dict(tmp_path / "absent.pth")


# ---------------------------------------------------------------------------------------------
# Data in other units: the fit follows the data's scale

SCALES = (1e-6, 1e-3, 1.0, 1e3, 1e6)
# Each a mixture config (the pipeline's fit) and whether it has a radius in latent units that
# must be given in the data's units too.
SLOW = pytest.mark.slow  # a fit per held-out candidate, or the quadratic certifier
FITS = {
    "shared_ledoit_wolf": {},
    "shared_oas": {"shrinkage": "oas"},
    "shared_fixed": {"shrinkage": 0.3},
    "shared_none": {"shrinkage": "none"},
    "shared_select": pytest.param({"shrinkage": "select", "select_radius": 0.5}, marks=SLOW),
    "robust": pytest.param({"robust_radius": 0.25}, marks=SLOW),
    "isotropic": {"covariance": "isotropic", "shrinkage": "none"},
    "diag": {"covariance": "diag", "shrinkage": "none", "reg_covar": 1e-4},
    "full": {"covariance": "full"},
    "lowrank": pytest.param({"covariance": "lowrank", "shrinkage": "none", "rank": 4}, marks=SLOW),
}
RADIUS_OPTIONS = ("select_radius", "robust_radius")


@pytest.fixture(scope="module")
def digits64():
    from gmcert.data.digits import build_digits

    data = build_digits()
    return (
        data.train.inputs.astype(np.float64),
        data.train.labels,
        data.test.inputs.astype(np.float64),
        data.test.labels,
    )


def _fit_and_certify(digits64, options: dict, scale: float):
    from omegaconf import OmegaConf

    from gmcert.certify.latent import certify_latents, latent_certifier
    from gmcert.config import MixtureConfig
    from gmcert.fit import fit_mixture

    x_train, y_train, x_test, _ = digits64
    x_test = (
        x_test if options.get("covariance", "shared") in ("shared", "isotropic") else x_test[:40]
    )
    scaled = {k: v * scale if k in RADIUS_OPTIONS else v for k, v in options.items()}
    cfg = OmegaConf.merge(OmegaConf.structured(MixtureConfig), scaled)
    mixture = fit_mixture(x_train * scale, y_train, cfg, seed=0)
    certifier = latent_certifier(mixture, norm="l2", device="cpu", dtype=torch.float64)
    codes, radii = certify_latents(certifier, x_test * scale, batch_size=4096)
    return mixture, mixture.classes_[codes], radii


@pytest.mark.parametrize("options", FITS.values(), ids=FITS.keys())
def test_the_same_data_in_other_units_gives_the_same_rule(digits64, options):
    """Digits times c for c in 1e-6 .. 1e6: the same predictions, radii times c. (Before,
    reg_covar was an absolute 1e-6: at c = 1e-6 it swamped variances of order 1e-12 and clean
    accuracy fell from 0.958 to 0.197 without a word.)"""
    _, reference, reference_radii = _fit_and_certify(digits64, options, 1.0)
    assert (reference == digits64[3][: len(reference)]).mean() > 0.85
    for scale in SCALES:
        mixture, predicted, radii = _fit_and_certify(digits64, options, scale)
        np.testing.assert_array_equal(predicted, reference, err_msg=f"scale {scale}")
        np.testing.assert_allclose(radii / scale, reference_radii, rtol=1e-6, err_msg=f"{scale}")
        np.testing.assert_allclose(
            mixture.reg_covar_,
            mixture.reg_covar * np.var(digits64[0] * scale, axis=0).mean(),
            rtol=1e-9,
        )


def test_reg_covar_is_relative_to_the_mean_variance():
    from gmcert.models.mixture import GaussianMixtureClassifier

    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 4)) * [1.0, 10.0, 0.1, 3.0] + 5.0
    y = np.arange(60) % 3
    mixture = GaussianMixtureClassifier(covariance="isotropic", reg_covar=0.5).fit(X, y)
    assert mixture.data_variance_ == pytest.approx(np.var(X, axis=0).mean(), rel=1e-12)
    # All points equal: no scale to follow, the ridge is reg_covar itself.
    same = GaussianMixtureClassifier(covariance="isotropic", reg_covar=0.5)
    assert same.fit(np.ones((6, 2)), np.arange(6) % 2).reg_covar_ == 0.5


# ---------------------------------------------------------------------------------------------
# The IDX, image-folder and npz loaders: hostile files


def _idx_header(magic: int, dims) -> bytes:
    return magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)


def _gzip(path: Path, content: bytes) -> None:
    path.write_bytes(gzip.compress(content, compresslevel=1))


IMAGES, LABELS = "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"
IDX_CASES = {
    # ({file to replace: its content}, the file the one line must name, words it must hold)
    "two_dimensions": (
        {IMAGES: _idx_header(0x802, (100, 784)) + bytes(100 * 784)},
        IMAGES,
        "unsigned bytes with 2 dimension",
    ),
    "float_values": (
        {IMAGES: _idx_header(0xD03, (100, 28, 28)) + bytes(100 * 784 * 4)},
        IMAGES,
        "IDX file of float32",
    ),
    "no_data": (
        {IMAGES: _idx_header(0x803, (0, 28, 28)), LABELS: _idx_header(0x801, (0,))},
        IMAGES,
        "declares 0 images",
    ),
    "other_image_size": (
        {IMAGES: _idx_header(0x803, (100, 0, 28)), LABELS: _idx_header(0x801, (100,)) + bytes(100)},
        IMAGES,
        "images of 0x28 pixels",
    ),
}


@pytest.mark.parametrize("case", sorted(IDX_CASES))
def test_idx_hostile_headers_are_refused_with_their_name(tmp_path, case):
    from conftest import write_idx

    from gmcert.data.idx import build_idx

    write_idx(tmp_path)
    files, named, words = IDX_CASES[case]
    for name, content in files.items():
        _gzip(tmp_path / name, content)
    with pytest.raises(ValueError, match=rf"{tmp_path / named}.*{words}"):
        build_idx(name="mnist", root=tmp_path)


class PeakMemory:
    """Peak Python and numpy allocations inside the block, in MB (tracemalloc)."""

    def __enter__(self):
        import tracemalloc

        tracemalloc.start()
        return self

    def __exit__(self, *exc):
        import tracemalloc

        self.megabytes = tracemalloc.get_traced_memory()[1] / 1e6
        tracemalloc.stop()


def test_idx_gzip_bomb_is_refused_from_the_headers(tmp_path):
    """A 1.6 MB gzip that unpacks to 314 MB of images whose labels file disagrees: refused from
    the two headers, before the images are unpacked (it used to read all of them first)."""
    from conftest import write_idx

    from gmcert.data.idx import build_idx

    write_idx(tmp_path)
    n = 400_000
    with gzip.open(tmp_path / "train-images-idx3-ubyte.gz", "wb", compresslevel=1) as f:
        f.write(_idx_header(0x803, (n, 28, 28)))
        for _ in range(n // 4000):
            f.write(bytes(784 * 4000))
    with PeakMemory() as peak, pytest.raises(ValueError, match="400,000 images but .* 100 labels"):
        build_idx(name="mnist", root=tmp_path)
    assert peak.megabytes < 50


def plant_non_file(kind: str, path: Path, missing: Path) -> None:
    """Put at ``path`` what a loader must not read as a file: a folder, a link to the absent
    ``missing``, or a named pipe (whose read would block)."""
    {
        "folder": path.mkdir,
        "link": lambda: path.symlink_to(missing),
        "pipe": lambda: os.mkfifo(path),
    }[kind]()


@pytest.mark.parametrize("kind", ["folder", "link", "pipe"])
def test_idx_file_that_is_not_a_file_is_named(tmp_path, kind):
    from conftest import write_idx

    from gmcert.data.idx import build_idx

    write_idx(tmp_path)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.unlink()
    plant_non_file(kind, path, tmp_path / "gone")
    words = {"folder": "a folder", "link": "a link to nothing", "pipe": "not a regular file"}
    with pytest.raises(ValueError, match=f"{path} is {words[kind]}.*, not an IDX file"):
        build_idx(name="mnist", root=tmp_path)


def _image_tree(root: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for name in ("a", "b"):
            (root / split / name).mkdir(parents=True)
            for i in range(2):
                pixels = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")


@pytest.mark.parametrize("kind", ["folder", "link", "pipe"])
def test_folder_entry_with_an_image_name_that_is_not_a_file(tmp_path, kind):
    """Refused with its name (a pipe would have blocked the read; a folder or a dangling link
    was skipped without a word, leaving the class smaller than the user thinks)."""
    from gmcert.data.folder import build_folder

    _image_tree(tmp_path)
    path = tmp_path / "train" / "b" / "2.png"
    plant_non_file(kind, path, tmp_path / "gone.png")
    words = {"folder": "a folder", "link": "a link to .*gone.png", "pipe": "not a regular file"}
    with pytest.raises(ValueError, match=f"{path} is {words[kind]}.*, not an image file"):
        build_folder(root=tmp_path, image_size=4)


def test_folder_link_to_an_image_is_read(tmp_path):
    from gmcert.data.folder import build_folder

    _image_tree(tmp_path)
    (tmp_path / "train" / "b" / "2.png").symlink_to(tmp_path / "train" / "a" / "0.png")
    assert len(build_folder(root=tmp_path, image_size=4).train) == 5


def test_folder_oversized_image_is_refused_before_decoding(tmp_path):
    """An image whose header claims more pixels than PIL's bomb limit is refused by name, also
    with resize=true (it used to be decoded in full, only warned about)."""
    from PIL import Image

    from gmcert.data.folder import build_folder

    _image_tree(tmp_path)
    big = tmp_path / "train" / "a" / "big.png"
    # 144 M pixels (a 0.2 MB file): above PIL's 89 M warning limit, below its 179 M error.
    Image.new("L", (12_000, 12_000)).save(big)
    with pytest.raises(ValueError, match=f"cannot decode image {big}"):
        build_folder(root=tmp_path, image_size=4, resize=True)


# complex, strings and channels were refused before too (untested); the others were not.
NPZ_CASES = {
    "complex": ({"x_train": np.ones((40, 5), np.complex64)}, "x_train has dtype complex64"),
    "strings": ({"x_test": np.full((20, 5), "a")}, "x_test has dtype <U1"),
    "channels": (
        {"x_train": np.zeros((40, 1, 4, 4), np.float32), "x_test": np.zeros((20, 3, 4, 4))},
        r"x_train rows have shape \(1, 4, 4\) but x_test rows \(3, 4, 4\)",
    ),
    "gaps_in_labels": (
        {"y_train": (np.arange(40) % 3) * 4, "y_test": (np.arange(20) % 3) * 4},
        "no training row has label 1, 2, 3, 5, 6 ...",
    ),
    "empty_train": (
        {"x_train": np.zeros((0, 5), np.float32), "y_train": np.zeros(0, np.int64)},
        r"x_train has shape \(0, 5\), no values",
    ),
    "no_features": (
        {"x_train": np.zeros((40, 0), np.float32), "x_test": np.zeros((20, 0), np.float32)},
        r"x_train has shape \(40, 0\), no values",
    ),
    "astronomical_label": (
        {"y_train": np.where(np.arange(40) == 0, 10**12, np.arange(40) % 3)},
        "labels up to 1000000000000",
    ),
}


@pytest.mark.parametrize("case", sorted(NPZ_CASES))
def test_npz_hostile_arrays_are_refused_with_the_file_named(tmp_path, case):
    from gmcert.data.arrays import build_arrays

    overrides, words = NPZ_CASES[case]
    np.savez(tmp_path / "d.npz", **npz_arrays(**overrides))
    with pytest.raises(ValueError, match=rf"{tmp_path / 'd.npz'}.*{words}"):
        build_arrays(path=tmp_path / "d.npz")


def _npy(array_header: dict, body: bytes) -> bytes:
    import io

    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, array_header)
    return out.getvalue() + body


def test_npz_header_claiming_terabytes_is_refused_without_allocating(tmp_path):
    import io
    import zipfile

    path = tmp_path / "forged.npz"
    with zipfile.ZipFile(path, "w") as z:
        for key, value in npz_arrays().items():
            buffer = io.BytesIO()
            np.save(buffer, value)
            z.writestr(f"{key}.npy", buffer.getvalue() if key != "x_train" else b"")
        claim = {"descr": "<f4", "fortran_order": False, "shape": (10**11, 5)}
    with zipfile.ZipFile(path) as z:
        members = {name: z.read(name) for name in z.namelist()}
    members["x_train.npy"] = _npy(claim, bytes(800))
    with zipfile.ZipFile(path, "w") as z:
        for name, content in members.items():
            z.writestr(name, content)
    from gmcert.data.arrays import build_arrays

    with pytest.raises(ValueError, match=r"x_train declares shape \(100000000000, 5\).*damaged"):
        build_arrays(path=path)


def test_npz_compressed_bomb_is_refused_from_the_headers(tmp_path):
    """320 MB of zeros in a 0.3 MB .npz whose labels disagree: refused from the headers, before
    the array is unpacked (it used to be unpacked and copied to float32 first)."""
    import io
    import zipfile

    path = tmp_path / "bomb.npz"
    rows = 20_000_000
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for key, value in npz_arrays().items():
            if key != "x_train":
                buffer = io.BytesIO()
                np.save(buffer, value)
                z.writestr(f"{key}.npy", buffer.getvalue())
        with z.open("x_train.npy", "w", force_zip64=True) as f:
            f.write(_npy({"descr": "<f4", "fortran_order": False, "shape": (rows, 4)}, b""))
            for _ in range(rows * 16 // (1 << 22)):
                f.write(bytes(1 << 22))
            f.write(bytes(rows * 16 % (1 << 22)))
    from gmcert.data.arrays import build_arrays

    with PeakMemory() as peak, pytest.raises(ValueError, match="20000000 inputs but 40 labels"):
        build_arrays(path=path)
    assert peak.megabytes < 50


def test_arrays_config_takes_num_classes_from_the_labels(tmp_path):
    """dataset=arrays documents num_classes: null (1 + the largest label), but the option check
    refused null, so no .npz could be run without stating it."""
    from conftest import compose_config

    from gmcert.config import check_options

    np.savez(tmp_path / "d.npz", **npz_arrays())
    cfg = compose_config(tmp_path, ["dataset=arrays", f"dataset.path={tmp_path / 'd.npz'}"])
    assert cfg.dataset.num_classes is None
    check_options(cfg)

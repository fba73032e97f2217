"""Shared test helpers: configs composed the way Hydra composes them (each run under
tmp_path), the one list of quick-run overrides (QUICK), the one command-line runner
(gmcert_run, start_cli), the e2e marker's time budget, and small fake CIFAR-10 / ImageNet /
IDX data written in the real on-disk formats."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

# The e2e marker's time budget: hooks, which pytest finds here by name.
from e2e_budget import (  # noqa: F401
    pytest_runtest_protocol,
    pytest_sessionfinish,
    pytest_terminal_summary,
)
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict
from PIL import Image

from gmcert.cli import CONFIG_DIR
from gmcert.data import build_dataset
from gmcert.data.cifar10 import CIFAR10_CLASSES
from gmcert.encoders import build_encoder
from gmcert.features import extract_features
from gmcert.fit import fit_robust_mixture
from gmcert.models.mixture import GaussianMixtureClassifier

CONFIGS = Path(CONFIG_DIR)


def hydra_config(overrides: list[str] = ()):
    """The run config as the command line composes it, Hydra's own ``hydra`` node included."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


def compose_config(tmp_path: Path, overrides: list[str] = ()):
    """A fully composed run config, with every output and the cache under ``tmp_path``."""
    cfg = hydra_config(overrides)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.root_dir = str(tmp_path)
        cfg.paths.output_dir = str(tmp_path / "run")
        cfg.paths.cache_dir = str(tmp_path / "cache")
        cfg.paths.data_dir = str(tmp_path / "data")
        del cfg.hydra
    return cfg


# A quick run: the closed-form certificate alone, without the eps estimate and the attack. A
# test adds what it exercises; Hydra applies overrides in order, so a later value of the same
# key wins ("attack.enabled=true", "certify.methods=[smoothing_gmm]": the certify=closed_form
# group keeps its radii, and a smoothing test sets certify.n, whose schema default is the
# paper-scale 100,000).
QUICK = ("certify=closed_form", "divergence.enabled=false", "attack.enabled=false")


@pytest.fixture
def one_thread():
    """Torch on one thread for the test: tiny matrices and many small ops, where a second
    thread on a busy 2-core machine only adds contention (tens of times slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def make_cfg(tmp_path):
    return lambda *overrides: compose_config(tmp_path, overrides)


def rebuild_run(cfg) -> SimpleNamespace:
    """A run's data, fitted encoder, latents (float32, as the run computes them) and mixture,
    rebuilt from its config with the public building blocks, to check what the run wrote.
    Encoders fitted in-process (identity, pca, lipschitz without its weight cache)."""
    options = OmegaConf.to_container(cfg.dataset, resolve=True)
    data = build_dataset(options.pop("name"), **options)
    options = OmegaConf.to_container(cfg.encoder, resolve=True)
    encoder = build_encoder(options.pop("name"), **options)
    encoder.fit(data.train.inputs, data.train.labels)
    cpu = torch.device("cpu")
    Z_train = extract_features(encoder, data.train.inputs, device=cpu)
    Z_test = extract_features(encoder, data.test.inputs, device=cpu)
    params = OmegaConf.to_container(cfg.mixture, resolve=True)
    params.pop("name", None)
    robust_radius = params.pop("robust_radius", None)
    holdout = params.pop("holdout_fraction", 0.2)
    params.pop("select_radius", None)
    mixture = GaussianMixtureClassifier(**params, random_state=cfg.seed)
    if robust_radius is None:
        mixture.fit(Z_train, data.train.labels)
    else:
        mixture = fit_robust_mixture(
            mixture,
            Z_train,
            data.train.labels,
            radius=robust_radius,
            holdout_fraction=holdout,
            seed=cfg.seed,
        )
    return SimpleNamespace(
        data=data, encoder=encoder, Z_train=Z_train, Z_test=Z_test, mixture=mixture
    )


def linear_radius(M, c, Z, *, norm: str = "l2") -> np.ndarray:
    """Distance in ``norm`` from each row of Z to the boundary of ``argmax M z + c``, written
    out: min over rivals j of (s_k - s_j) / ||M_k - M_j||_dual."""
    dual = {"l2": 2, "linf": 1, "l1": np.inf}[norm]
    scores = Z @ M.T + c
    rows = np.arange(len(Z))
    k = scores.argmax(1)
    gaps = np.linalg.norm(M[k][:, None, :] - M[None], ord=dual, axis=2)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = (scores[rows, k][:, None] - scores) / gaps
    ratios[rows, k] = np.inf
    return ratios.min(1)


def largest_stretch(encoder, x, *, noise: float, steps: int = 100) -> float:
    """The largest ||f(b) - f(a)|| / ||b - a|| found by gradient ascent on b, from a = x (float64)
    and b = a plus Gaussian noise of std ``noise``: an attack on an encoder's Lipschitz bound."""
    gen = torch.Generator().manual_seed(0)
    a = torch.as_tensor(x, dtype=torch.float64)
    b = (a + noise * torch.randn(a.shape, generator=gen, dtype=torch.float64)).requires_grad_()
    optimiser = torch.optim.Adam([b], lr=0.01)
    best = 0.0
    for _ in range(steps):
        ratio = (encoder(b) - encoder(a)).norm(dim=1) / (b - a).flatten(1).norm(dim=1)
        best = max(best, float(ratio.detach().max()))
        optimiser.zero_grad()
        (-ratio.sum()).backward()
        optimiser.step()
    return best


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# --------------------------------------------------------------------------------------------
# Fake image datasets in the real formats (test_vision_data, test_experiments)
# --------------------------------------------------------------------------------------------

IMAGENET_WNIDS = ["n01440764", "n01443537", "n01484850"]
IMAGENET_TRAIN_COUNTS = [4, 3, 5]
IMAGENET_VAL_PER_CLASS = 3


def write_cifar10(root: Path, *, per_batch: int = 20, n_test: int = 40, seed: int = 0) -> dict:
    """Write cifar-10-batches-py/ as the real archive has it: Python pickles, protocol 2,
    'data' uint8 (n, 3072) channel-major, 'labels' list of ints, batches.meta label_names.
    Returns the arrays written, for comparison."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    truth = {"train_data": [], "train_labels": []}

    def dump(name: str, data: np.ndarray, labels: np.ndarray) -> None:
        # Python-2 str keys, which Python 3 reads back as str with encoding="latin1".
        batch = {
            "batch_label": name,
            "labels": labels.tolist(),
            "data": data,
            "filenames": [f"{i}.png" for i in range(len(labels))],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)

    for i in range(1, 6):
        labels = rng.permutation(np.arange(per_batch) % 10)
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        dump(f"data_batch_{i}", data, labels)
        truth["train_data"].append(data)
        truth["train_labels"].append(labels)
    test_labels = rng.permutation(np.arange(n_test) % 10)
    test_data = rng.integers(0, 256, size=(n_test, 3072), dtype=np.uint8)
    dump("test_batch", test_data, test_labels)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump(
            {
                "label_names": list(CIFAR10_CLASSES),
                "num_cases_per_batch": per_batch,
                "num_vis": 3072,
            },
            f,
            protocol=2,
        )
    return {
        "train_data": np.concatenate(truth["train_data"]),
        "train_labels": np.concatenate(truth["train_labels"]),
        "test_data": test_data,
        "test_labels": test_labels,
    }


def npz_arrays(**overrides) -> dict:
    """A small valid ``dataset=arrays`` content (40 train, 20 test points, 5 features, 3
    classes); ``overrides`` replace or add members."""
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.normal(size=(40, 5)).astype(np.float32),
        "y_train": np.arange(40) % 3,
        "x_test": rng.normal(size=(20, 5)).astype(np.float32),
        "y_test": np.arange(20) % 3,
    }
    arrays.update(overrides)
    return arrays


def write_idx(root: Path, *, n_train: int = 100, n_test: int = 50, seed: int = 0) -> dict:
    """The four gzipped MNIST-format IDX files, flat in root (Debian's layout): class-structured
    28x28 images (each class a brighter block in its own place), labels cycling over 0..9.
    Returns the arrays written."""
    import gzip

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.permutation(np.arange(n) % 10).astype(np.uint8)
        images = rng.integers(0, 80, size=(n, 28, 28), dtype=np.uint8)
        for i, k in enumerate(labels):
            images[i, 2 * k : 2 * k + 8, 4:20] += 150
        for kind, magic, array in (("images-idx3", 0x803, images), ("labels-idx1", 0x801, labels)):
            header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
            with gzip.open(root / f"{split}-{kind}-ubyte.gz", "wb") as f:
                f.write(header + array.tobytes())
        written[split] = (images, labels)
    return written


def write_imagenet(root: Path, *, seed: int = 0) -> None:
    """root/train/<wnid>/*.JPEG and root/val/<wnid>/*.JPEG for 3 wnids, varied sizes and modes
    (one greyscale JPEG, one PNG), and a stray non-image file in every class folder."""
    rng = np.random.default_rng(seed)
    val_counts = [IMAGENET_VAL_PER_CLASS] * len(IMAGENET_WNIDS)
    for split, counts in (("train", IMAGENET_TRAIN_COUNTS), ("val", val_counts)):
        for c, (wnid, count) in enumerate(zip(IMAGENET_WNIDS, counts, strict=True)):
            folder = root / split / wnid
            folder.mkdir(parents=True)
            for k in range(count):
                h, w = int(rng.integers(40, 300)), int(rng.integers(40, 300))
                pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
                image = Image.fromarray(pixels)
                if c == 1 and k == 0:
                    image = image.convert("L")  # ImageNet has greyscale JPEGs
                name = f"{wnid}_{k:04d}"
                if c == 2 and k == 1:
                    image.save(folder / f"{name}.png")
                else:
                    image.save(folder / f"{name}.JPEG", quality=90)
            (folder / "notes.txt").write_text("not an image")


# --------------------------------------------------------------------------------------------
# The command line, in a fresh interpreter (what a user's shell runs)


# Each console script (pyproject.toml) as this interpreter runs it, so that a test runs the
# checkout it imports, whatever is on PATH.
PROGRAMS = {
    "gmcert-run": ["-m", "gmcert.cli"],
    "gmcert-reevaluate": ["-c", "from gmcert.cli import reevaluate_main; reevaluate_main()"],
    "gmcert-report": ["-c", "from gmcert.cli import report_main; report_main()"],
}


def cli_command(*args, program: str = "gmcert-run") -> list[str]:
    """``PROGRAM ARGS`` as a command line."""
    return [sys.executable, *PROGRAMS[program], *map(str, args)]


def gmcert_run(*args, program: str = "gmcert-run", cwd=None, status: int = 0, timeout=600):
    """``PROGRAM ARGS`` (gmcert-run unless told) to its end, output captured as text; asserts
    the exit status (the message is the tail of stderr, which says why)."""
    proc = subprocess.run(
        cli_command(*args, program=program),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == status, proc.stderr[-3000:]
    return proc


def start_cli(args, run_dir, cache_dir, **popen) -> subprocess.Popen:
    """``gmcert-run ARGS`` started in a subprocess (not waited for), writing to ``run_dir``
    with its own cache."""
    command = cli_command(*args, f"hydra.run.dir={run_dir}", f"paths.cache_dir={cache_dir}")
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **popen)

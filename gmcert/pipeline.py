"""`run(cfg)`: dataset -> encode -> fit mixture -> certify -> evaluate -> write. Wiring only."""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from gmcert.bounds.degradation import add_bound_columns, eps_from_estimates, sensitivity_curves
from gmcert.certify import CertifyContext, build_method
from gmcert.certify.norms import NORMS
from gmcert.data import LabelledData, build_dataset, class_log_joint
from gmcert.device import resolve_device
from gmcert.encoders import PRETRAINED, build_encoder
from gmcert.eps.estimators import estimate_eps, gaussian_logpdf, gaussianity_tests
from gmcert.features import cached, extract_features, file_digest
from gmcert.io import PredictionLog, write_csv, write_json
from gmcert.models.mixture import GaussianMixtureClassifier
from gmcert.population.accuracy import two_class_certified_accuracy
from gmcert.population.ceiling import pairwise_robust_accuracy_ceiling
from gmcert.report.plots import plot_certified_accuracy, plot_eps_sensitivity
from gmcert.report.published import published_rows
from gmcert.report.table import (
    average_certified_radius,
    certified_accuracy,
    population_certified_accuracy,
)

log = logging.getLogger(__name__)

# Options of a pretrained encoder that shape extraction speed, not the latents.
_EXTRACTION_OPTIONS = ("batch_size", "num_workers", "bf16", "channels_last")


class StageTimer:
    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str):
        start = time.perf_counter()
        log.info("stage %s ...", stage)
        yield
        self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start


def _options(node) -> dict:
    opts = OmegaConf.to_container(node, resolve=True)
    opts.pop("name", None)
    return opts


def check_certify_options(certify) -> None:
    """The value errors a schema cannot express, caught before any work is done."""
    if certify.norm not in NORMS:
        raise ValueError(f"certify.norm must be one of {NORMS}, got {certify.norm!r}")
    if any(r < 0 for r in certify.radii) or not certify.radii:
        raise ValueError(
            f"certify.radii must be a non-empty list of radii >= 0, got {list(certify.radii)}"
        )
    if not 0 < certify.ci_alpha < 1:
        raise ValueError(f"certify.ci_alpha must lie in (0, 1), got {certify.ci_alpha}")
    if certify.batch_size < 1:
        raise ValueError(f"certify.batch_size must be >= 1, got {certify.batch_size}")
    if certify.start < 0 or (certify.stop is not None and certify.stop <= certify.start):
        raise ValueError(
            f"certify.start/stop must satisfy 0 <= start < stop, got {certify.start}/{certify.stop}"
        )
    if not 0 <= certify.shard < certify.shards:
        raise ValueError(
            f"certify.shard must be in 0..shards-1, got shard={certify.shard}, "
            f"shards={certify.shards}"
        )


def encode(data: LabelledData, encoder_cfg, *, device, cache_dir, force: bool):
    """Build and fit the encoder; latents of both splits, through the feature cache."""
    name = encoder_cfg.name
    opts = _options(encoder_cfg)
    extraction = {k: opts.pop(k) for k in _EXTRACTION_OPTIONS if k in opts}
    if opts.get("lipschitz") == "spectral":
        # The bound covers the resize from the data's native size: it needs that size.
        opts["source_size"] = tuple(_first_image(data.test.inputs).shape[-2:])
        opts["device"] = device
    encoder = build_encoder(name, **opts)
    if hasattr(encoder, "fit"):  # encoders learned from the train split (PCA)
        encoder.fit(data.train.inputs)
    weights = opts.get("weights")
    material = {
        "dataset": data.name,
        "encoder": {"name": name, **{k: v for k, v in opts.items() if k != "device"}},
        "weights_source": getattr(encoder, "weights_source", None),
        "weights_sha256": file_digest(weights) if weights and Path(weights).is_file() else None,
    }
    if name not in PRETRAINED:
        # identity / pca latents depend on the data itself: hash what went in.
        material["train_inputs"] = _array_digest(data.train.inputs)
        material["test_inputs"] = _array_digest(data.test.inputs)
    latents = {}
    hits = {}
    for split_name in ("train", "test"):
        split = getattr(data, split_name)

        def compute(split=split, split_name=split_name):
            z = extract_features(
                encoder, split.inputs, device=device, desc=f"encode {split_name}", **extraction
            )
            return z, split.labels

        (z, labels), hits[split_name] = cached(
            {**material, "split": split_name, "indices": _array_digest(split.indices)},
            compute,
            cache_dir=cache_dir,
            force=force,
        )
        if not np.array_equal(labels, split.labels):
            raise ValueError(f"cached labels for the {split_name} split do not match the data")
        latents[split_name] = z
    return encoder, latents["train"], latents["test"], hits


def _first_image(inputs):
    return inputs[0] if isinstance(inputs, np.ndarray) else inputs[0][0]


def _array_digest(x) -> str | None:
    if not isinstance(x, np.ndarray):
        return None
    return hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest()[:24]


def fit_mixture(Z_train, y_train, mixture_cfg, *, seed: int) -> GaussianMixtureClassifier:
    opts = _options(mixture_cfg)
    robust_radius = opts.pop("robust_radius")
    holdout = opts.pop("holdout_fraction")
    mixture = GaussianMixtureClassifier(**opts, random_state=seed)
    if robust_radius is not None:
        from gmcert.models.fitting import fit_robust_mixture

        return fit_robust_mixture(
            mixture, Z_train, y_train, radius=robust_radius, holdout_fraction=holdout, seed=seed
        )
    return mixture.fit(Z_train, y_train)


def _run_fingerprint(cfg: DictConfig) -> str:
    """Everything that determines the predictions; paths and index ranges excluded."""
    keep = OmegaConf.to_container(cfg, resolve=False)
    keep.pop("paths", None)
    for key in ("start", "stop", "shard", "shards"):
        keep.get("certify", {}).pop(key, None)
    return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()


def open_prediction_log(out_dir: Path, fingerprint: str) -> PredictionLog:
    """The run's predictions log; a folder holding another config's predictions is refused."""
    stamp = out_dir / "run_fingerprint.txt"
    if stamp.exists() and stamp.read_text().strip() != fingerprint:
        raise ValueError(
            f"{out_dir} holds predictions of a different configuration; resume only with the "
            "same config, or choose a fresh hydra.run.dir"
        )
    stamp.write_text(fingerprint + "\n")
    return PredictionLog(out_dir / "predictions.csv")


def certify_positions(num_test: int, certify) -> np.ndarray:
    """The test positions this job certifies: [start, stop), then its shard of that range."""
    stop = num_test if certify.stop is None else min(certify.stop, num_test)
    positions = np.array_split(np.arange(certify.start, stop), certify.shards)[certify.shard]
    if len(positions) == 0:
        raise ValueError(
            f"no test points to certify: start={certify.start}, stop={certify.stop}, "
            f"shard {certify.shard} of {certify.shards}, with {num_test} test points"
        )
    return positions


def certify_all(method, log_: PredictionLog, positions, data: LabelledData) -> None:
    """Certify the positions not yet in the log, appending each chunk as soon as it is done."""
    done = log_.done(method.name)
    todo = np.array([p for p in positions if int(data.test.indices[p]) not in done], dtype=int)
    if len(todo) < len(positions):
        log.info(
            "%s: resuming, %d of %d points already certified",
            method.name,
            len(positions) - len(todo),
            len(positions),
        )
    chunk = getattr(method, "chunk_size", 4096)
    for start in tqdm(
        range(0, len(todo), chunk),
        desc=f"certify {method.name}",
        unit="chunk",
        leave=False,
        disable=len(todo) <= chunk,
    ):
        rows = todo[start : start + chunk]
        t0 = time.perf_counter()
        result = method.certify(rows)
        seconds = (time.perf_counter() - t0) / len(rows)
        labels = data.test.labels[rows]
        log_.append(
            pd.DataFrame(
                {
                    "method": method.name,
                    "index": data.test.indices[rows],
                    "label": labels,
                    "predict": result.predict,
                    "radius_latent": result.radius_latent,
                    "radius_input": result.radius_input,
                    "correct": result.predict == labels,
                    "seconds": seconds,
                }
            )
        )


def evaluate(predictions: pd.DataFrame, methods, *, radii, norm: str, alpha: float):
    """certified_accuracy.csv rows and per-method summary metrics."""
    tables, summary = [], {}
    for method in methods:
        rows = predictions[predictions["method"] == method.name]
        space = "input" if rows["radius_input"].notna().all() else "latent"
        radius = rows[f"radius_{space}"].to_numpy()
        correct = rows["correct"].to_numpy(bool)
        table = certified_accuracy(correct, radius, radii, alpha=alpha)
        table.insert(0, "method", method.name)
        table.insert(1, "norm", getattr(method, "norm", norm))
        table.insert(2, "space", space)
        tables.append(table)
        summary[method.name] = {
            "clean_accuracy": float(correct.mean()),
            "average_certified_radius": average_certified_radius(correct, radius),
            "abstain_rate": float((rows["predict"] == -1).mean()),
            "radius_space": space,
            "exact": bool(getattr(method, "exact", True)),
            "points": int(len(rows)),
            "seconds_per_point": float(rows["seconds"].mean()),
        }
        if hasattr(method, "cap"):
            # The largest radius CERTIFY can return (nA = n): a cap, not a measurement.
            summary[method.name].update(
                radius_cap=method.cap,
                sigma=method.smoothed.sigma,
                n=method.n,
                n0=method.n0,
                alpha=method.alpha,
                at_cap=float((radius >= method.cap * (1 - 1e-9)).mean()),
            )
    return pd.concat(tables, ignore_index=True), summary


def run(cfg: DictConfig) -> dict:
    """Run one job; returns the metrics it wrote to ``metrics.json``."""
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    check_certify_options(cfg.certify)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    timer = StageTimer()

    with timer("data"):
        data = build_dataset(cfg.dataset.name, **_options(cfg.dataset))
    with timer("encode"):
        cache_dir = cfg.paths.cache_dir if cfg.cache.enabled else None
        encoder, Z_train, Z_test, cache_hits = encode(
            data, cfg.encoder, device=device, cache_dir=cache_dir, force=cfg.cache.force
        )
    with timer("fit"):
        mixture = fit_mixture(Z_train, data.train.labels, cfg.mixture, seed=cfg.seed)

    positions = certify_positions(len(data.test), cfg.certify)
    ctx = CertifyContext(
        mixture=mixture,
        test_latents=Z_test,
        device=device,
        lipschitz=encoder.lipschitz,
        norm=cfg.certify.norm,
        batch_size=cfg.certify.batch_size,
        dtype=cfg.certify.dtype,
        extra={
            "encoder": encoder,
            "data": data,
            "train_latents": Z_train,
            "options": cfg.certify,
            "seed": cfg.seed,
        },
    )
    methods = [build_method(name, ctx) for name in cfg.certify.methods]
    predictions_log = open_prediction_log(out_dir, _run_fingerprint(cfg))
    with timer("certify"):
        for method in methods:
            certify_all(method, predictions_log, positions, data)

    with timer("evaluate"):
        predictions = predictions_log.read()
        predictions = predictions[predictions["index"].isin(data.test.indices[positions])]
        table, summary = evaluate(
            predictions,
            methods,
            radii=list(cfg.certify.radii),
            norm=cfg.certify.norm,
            alpha=cfg.certify.ci_alpha,
        )
        population = _population_column(table, methods, encoder.lipschitz, cfg)
        if any(m.name.startswith("smoothing") for m in methods):
            table = pd.concat(
                [table, published_rows(data.name, cfg.certify.sigma)], ignore_index=True
            )
    divergence = None
    if cfg.divergence.enabled or cfg.divergence.eps is not None:
        with timer("divergence"):
            # The data's exact law is the latent law only when the encoder is the identity.
            truth = data.truth if cfg.encoder.name == "identity" else None
            divergence = degradation_stage(
                table,
                population,
                mixture,
                Z_test,
                data.test.labels,
                cfg.divergence,
                out_dir=out_dir,
                seed=cfg.seed,
                device=device,
                truth=truth,
            )

    write_csv(out_dir / "certified_accuracy.csv", table)
    plot_certified_accuracy(
        predictions,
        table,
        out_dir / "certified_accuracy.png",
        title=f"{data.name} / {cfg.encoder.name} / {mixture.covariance}",
    )
    metrics = {
        "dataset": data.name,
        "encoder": cfg.encoder.name,
        "covariance": mixture.covariance,
        "num_classes": data.num_classes,
        "latent_dim": int(Z_train.shape[1]),
        "train_points": len(data.train),
        "test_points": len(data.test),
        "certified_points": int(len(positions)),
        "certified_indices": [int(positions[0]), int(positions[-1]) + 1],
        "lipschitz": encoder.lipschitz,
        "radius_units": _radius_units(encoder.lipschitz),
        "methods": summary,
        "mixture": {
            "shrinkage": np.asarray(mixture.shrinkage_).tolist(),
            "train_accuracy": float((mixture.predict(Z_train) == data.train.labels).mean()),
        },
        "population_Q": population,
        "divergence": divergence,
        "cache_hits": cache_hits,
        "stage_seconds": timer.seconds,
        "throughput": {
            "certify_points_per_second": len(positions)
            * len(methods)
            / max(timer.seconds["certify"], 1e-9),
        },
        "device": _device_name(device),
        "versions": _versions(),
        "git_commit": _git_commit(),
        "output_dir": str(out_dir),
    }
    write_json(out_dir / "metrics.json", metrics)
    return metrics


def _population_column(table, methods, lipschitz, cfg) -> dict | None:
    """Add CA under Q beside the closed-form rows: in closed form for two equiprobable classes
    with a shared covariance (THEORY.md 5), by Monte Carlo from the fitted Q otherwise."""
    table["population_Q"] = np.nan
    closed = [m for m in methods if m.name == "closed_form"]
    if not closed or cfg.certify.population_samples <= 0:
        return None
    rows = table["method"] == "closed_form"
    scale = lipschitz if table.loc[rows, "space"].iloc[0] == "input" else 1.0
    radii = table.loc[rows, "radius"].to_numpy() * scale
    mixture = closed[0].ctx.mixture
    two_class_bayes = (
        len(mixture.classes_) == 2
        and mixture.is_linear_
        and mixture.tau == 0
        and np.allclose(mixture.priors_, 0.5, rtol=0, atol=1e-12)
    )
    if two_class_bayes:
        exact = two_class_certified_accuracy(
            mixture.means_[0], mixture.means_[1], mixture.covariances_, radii, norm=cfg.certify.norm
        )
        table.loc[rows, "population_Q"] = exact
        result = {"method": "closed_form", "ci_low": exact.tolist(), "ci_high": exact.tolist()}
    else:
        mc = population_certified_accuracy(
            mixture,
            closed[0].certifier,
            radii,
            samples=cfg.certify.population_samples,
            alpha=cfg.certify.ci_alpha,
            seed=cfg.seed,
        )
        table.loc[rows, "population_Q"] = mc["certified_accuracy"].to_numpy()
        result = {
            "method": "monte_carlo",
            "samples": cfg.certify.population_samples,
            "ci_low": mc["ci_low"].tolist(),
            "ci_high": mc["ci_high"].tolist(),
        }
    if mixture.is_linear_ and cfg.certify.norm == "l2":
        # The optimal robust accuracy under Q: no classifier can beat it (THEORY.md 5).
        ceiling = [
            pairwise_robust_accuracy_ceiling(
                mixture.means_, mixture.covariances_, mixture.priors_, rho
            )
            for rho in radii
        ]
        table["ceiling_Q"] = np.nan
        table.loc[rows, "ceiling_Q"] = ceiling
        result["ceiling"] = (
            "optimal robust accuracy under Q; exact for two equiprobable classes, "
            "a sound pairwise upper bound for K > 2 (l2, shared covariance)"
        )
    else:
        result["ceiling"] = "not available: needs a shared covariance and the l2 norm"
    return result


def estimate_stage(mixture, Z_test, y_test, div_cfg, *, seed, device) -> dict:
    """eps estimates with intervals and Gaussianity diagnostics on held-out latents."""
    codes = np.searchsorted(mixture.classes_, y_test)
    estimates = estimate_eps(
        Z_test,
        codes,
        means=mixture.means_,
        covariances=mixture.class_covariances(),
        priors=mixture.priors_,
        estimators=list(div_cfg.estimators),
        n_boot=div_cfg.n_boot,
        alpha=div_cfg.alpha,
        random_state=seed,
        device=device,
        max_per_class=div_cfg.max_per_class,
    )
    lows = [v["ci_low"] for v in estimates["joint"].values() if v.get("ci_low") is not None]
    return {
        "estimates": estimates,
        "gaussianity": gaussianity_tests(Z_test, codes),
        "eps_ci_low": min(lows) if lows else None,
        **eps_from_estimates(estimates),
    }


def degradation_stage(
    table, population, mixture, Z_test, y_test, div_cfg, *, out_dir, seed, device, truth=None
) -> dict:
    """eps (estimated on the held-out test latents, or the stated budget) -> bound columns,
    the falsification check, and eps_sensitivity.png. With the data's exact law (synthetic
    data), also the true eps by Monte Carlo and each estimator's error against it."""
    result: dict = {}
    eps_hat = eps_upper = interval = None
    if div_cfg.enabled:
        try:
            result.update(
                estimate_stage(mixture, Z_test, y_test, div_cfg, seed=seed, device=device)
            )
            eps_hat, eps_upper = result["eps_hat"], result["eps_upper"]
            interval = (result["eps_ci_low"], eps_upper)
        except ValueError as err:
            # Too few held-out points per class, say: the run keeps its certificates.
            log.warning("eps estimation skipped: %s", err)
            result["note"] = f"eps estimation failed: {err}"
            if div_cfg.eps is None:
                return result
    if population is None:
        result["note"] = "no CA under Q for these methods, so no bound"
        return result
    if truth is not None:
        result["eps_true"] = true_kl(truth, mixture, samples=div_cfg.truth_samples, seed=seed + 1)
        if "estimates" in result:
            result["estimator_error"] = {
                name: v["estimate"] - result["eps_true"]["estimate"]
                for name, v in result["estimates"]["joint"].items()
                if v["estimate"] is not None
            }
    eps = div_cfg.eps if div_cfg.eps is not None else eps_hat
    result["eps_used"] = eps
    result["eps_source"] = "stated budget" if div_cfg.eps is not None else "estimate"
    low = np.asarray(population["ci_low"])
    eps_true = None
    if truth is not None:
        # 3 standard errors above the Monte Carlo estimate: the bound at the true eps, safely.
        eps_true = max(result["eps_true"]["estimate"] + 3 * result["eps_true"]["stderr"], 0.0)
    add_bound_columns(
        table,
        population_low=low,
        eps=eps,
        eps_upper=eps_upper if div_cfg.eps is None else None,
        eps_true=eps_true,
    )
    rows = table["population_Q"].notna()
    above = bool(table.loc[rows, "above_bound"].all())
    result["measured_above_bound"] = above
    if not above:
        failing = table.loc[rows & ~table["above_bound"].fillna(True), "radius"].tolist()
        result["verdict"] = (
            f"measured certified accuracy falls BELOW the bound at eps = {eps:.4g} at radii "
            f"{failing}: KL(P || Q) <= eps is falsified by these data"
        )
    elif (table.loc[rows, "bound_at_eps"] <= 0).all():
        result["verdict"] = (
            f"the bound at eps = {eps:.4g} ({result['eps_source']}) is 0 at every radius: "
            "vacuous, the latents are too far from the mixture for eps to guarantee anything"
        )
    else:
        result["verdict"] = (
            f"measured certified accuracy is at or above the bound at eps = {eps:.4g} "
            f"({result['eps_source']}) at every radius"
        )
    log.info(result["verdict"])
    top = max(10.0, 2 * (eps_upper or eps or 0.0))
    grid = np.geomspace(1e-3, top, 200)
    plot_eps_sensitivity(
        table[rows],
        sensitivity_curves(low, grid),
        grid,
        out_dir / "eps_sensitivity.png",
        eps_hat=eps,
        eps_interval=interval,
    )
    return result


def true_kl(truth, mixture, *, samples: int, seed: int) -> dict:
    """KL(P || Q) = E_P[log P(z, y) - log Q(z, y)] by Monte Carlo from the exact law P."""
    Z, y = truth.sample(samples, seed)
    codes = np.searchsorted(mixture.classes_, y)
    covs = mixture.class_covariances()  # Q itself, not the robust rule's Sigma + tau I
    log_q = class_log_joint(
        Z, codes, mixture.priors_, lambda zk, k: gaussian_logpdf(zk, mixture.means_[k], covs[k])
    )
    diff = truth.log_joint(Z, y) - log_q
    return {
        "estimate": float(diff.mean()),
        "stderr": float(diff.std(ddof=1) / np.sqrt(len(y))),
        "samples": samples,
        "method": "monte_carlo from the exact data law",
    }


def _radius_units(lipschitz) -> str:
    if lipschitz:
        return "input space, l_p norm of [0, 1] pixel units (latent radius / Lipschitz bound)"
    return "latent space (no certified Lipschitz bound for this encoder)"


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def _versions() -> dict:
    import hydra
    import scipy
    import sklearn
    import torchvision

    import gmcert

    return {
        "gmcert": gmcert.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "sklearn": sklearn.__version__,
        "pandas": pd.__version__,
        "hydra": hydra.__version__,
    }


def _git_commit() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None

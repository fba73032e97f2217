"""`run(cfg)`: data -> encode -> fit -> reuse -> heads -> certify -> attack -> evaluate ->
degrade -> write (reuse: certified predictions already made under this run's prediction key;
heads: smoothing's heads trained, when points remain to certify).

Each stage is one call into the module that owns it; nothing else happens here.
"""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from gmcert.attack.cache import attack_key, cached_attacks
from gmcert.attack.stage import attack_all, attack_enabled, findings, raise_if_unsound
from gmcert.bounds.degradation import degrade
from gmcert.certify.methods import CertifyInputs, build_methods
from gmcert.certify.reuse import PredictionCache, prediction_key, prediction_options
from gmcert.certify.stage import (
    certify_pending,
    certify_positions,
    check_prediction_source,
    pending_positions,
    reuse_predictions,
)
from gmcert.certify.transfer import radius_transfer
from gmcert.config import check_options
from gmcert.data import build_dataset
from gmcert.data.digest import data_digest
from gmcert.denoisers import build_denoiser
from gmcert.device import resolve_device
from gmcert.features import encode
from gmcert.fit import fit_mixture
from gmcert.io import lock_run_folder, open_prediction_log, run_fingerprint, write_run_config
from gmcert.population.columns import population_q
from gmcert.preflight import check_inputs_present
from gmcert.provenance import StageTimer, provenance
from gmcert.report.outputs import describe_run, write_run
from gmcert.report.published import published_curves
from gmcert.report.table import empirical_robust_accuracy, evaluate, result_table


def run(cfg: DictConfig) -> dict:
    """Run one job; returns the metrics it wrote to ``metrics.json``. The output folder is
    locked for the whole job: a second run started in it is refused before any work."""
    check_options(cfg)
    check_inputs_present(cfg)
    if cfg.certify.predictions_from is not None:
        check_prediction_source(cfg.certify.predictions_from, prediction_options(cfg))
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with lock_run_folder(out_dir):
        return _run_locked(cfg, out_dir)


def _run_locked(cfg: DictConfig, out_dir: Path) -> dict:
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    timer = StageTimer()
    denoiser = build_denoiser(cfg.denoiser, sigma=cfg.certify.sigma, device=device)

    with timer("data"):
        options = OmegaConf.to_container(cfg.dataset, resolve=True)
        data = build_dataset(options.pop("name"), **options)
        digests = data_digest(data, cache_dir=cfg.paths.cache_dir)
    with timer("encode"):
        cache_dir = cfg.paths.cache_dir if cfg.cache.enabled else None
        latents = encode(
            data,
            cfg.encoder,
            device=device,
            cache_dir=cache_dir,
            force=cfg.cache.force,
            data_digests=digests,
        )
    with timer("fit"):
        mixture = fit_mixture(latents.train, data.train.labels, cfg.mixture, seed=cfg.seed)

    positions = certify_positions(len(data.test), cfg.certify)
    transfer = radius_transfer(latents.encoder, cfg.certify.norm, data.test.input_dim)
    inputs = CertifyInputs(
        mixture=mixture,
        encoder=latents.encoder,
        data=data,
        train_latents=latents.train,
        test_latents=latents.test,
        device=device,
        options=cfg.certify,
        seed=cfg.seed,
        transfer=transfer,
        denoiser=denoiser,
    )
    methods = build_methods(cfg.certify.methods, inputs)
    key = prediction_key(
        cfg,
        data_digests=digests,
        train_latents=latents.train,
        test_latents=latents.test,
        device=device,
    )
    predictions_log = open_prediction_log(out_dir, run_fingerprint(cfg, digests), key)
    write_run_config(out_dir, cfg)
    # Predictions depend on fewer options than the results: a sweep over evaluation options
    # certifies once, and every other job evaluates the cached rows.
    cache = PredictionCache(cfg.paths.cache_dir, key) if cfg.cache.enabled else None
    with timer("reuse"):
        reused = reuse_predictions(
            methods,
            predictions_log,
            positions,
            data.test,
            key=key,
            source=cfg.certify.predictions_from,
            cache=None if cfg.cache.force else cache,
            smoothing_skip=cfg.certify.smoothing_skip,
        )
    pending = pending_positions(
        methods, predictions_log, positions, data.test, smoothing_skip=cfg.certify.smoothing_skip
    )
    with timer("heads"):  # smoothing's heads are trained here, under its noise, if needed
        for method in methods:
            if len(pending[method.name]):
                method.prepare()
    with timer("certify"):
        certified = certify_pending(methods, predictions_log, pending, data.test)
    if cache is not None:
        cache.store(predictions_log.path, force=cfg.cache.force)
    predictions = predictions_log.read()
    predictions = predictions[predictions["index"].isin(data.test.indices[positions])]

    attacks = []
    if attack_enabled(cfg.attack, data.test, methods):
        with timer("attack"):
            # Seeded, and fixed by the predictions: a sweep over evaluation options attacks once.
            attacks = cached_attacks(
                cfg.paths.cache_dir if cfg.cache.enabled else None,
                attack_key(
                    key,
                    OmegaConf.to_container(cfg.attack, resolve=True),
                    positions,
                    cfg.certify.smoothing_skip,
                    cfg.seed,
                ),
                lambda: attack_all(predictions, methods, inputs, positions, cfg.attack),
                force=cfg.cache.force,
            )

    with timer("evaluate"):
        radii, alpha = list(cfg.certify.radii), cfg.certify.ci_alpha
        evaluation = evaluate(predictions, methods, radii=radii, alpha=alpha)
        population = population_q(
            methods, mixture, radii=radii, options=cfg.certify, device=device, seed=cfg.seed
        )
        empirical = None
        if attacks:
            empirical = empirical_robust_accuracy(predictions, attacks, radii=radii)
        published = None
        if any(m.smoothing is not None for m in methods):
            published = published_curves(data.name, cfg.certify.sigma)
    degradation = None
    if cfg.divergence.enabled or cfg.divergence.eps is not None:
        with timer("divergence"):
            degradation = degrade(
                evaluation.table,
                population,
                mixture,
                latents.test,
                data.test.labels,
                cfg.divergence,
                seed=cfg.seed,
                device=device,
                # The data's exact law is the latent law only when the encoder is the identity.
                truth=data.truth if latents.spec.identity else None,
            )

    table = result_table(
        evaluation.table,
        population=population,
        empirical=empirical,
        published=published,
        bounds=degradation.bounds if degradation else None,
    )
    metrics = {
        **describe_run(data, cfg.encoder.name, latents, mixture, positions),
        "methods": evaluation.summary_metrics(),
        "attack": empirical.metrics if empirical else None,
        "population_Q": population.as_metrics() if population else None,
        "divergence": degradation.metrics if degradation else None,
        "throughput": {
            # Over the points this job certified itself (none when every row was reused).
            "certify_points_per_second": certified / max(timer.seconds["certify"], 1e-9)
            if certified
            else None,
            "predictions_reused": reused,
        },
        **provenance(device, timer),
        "output_dir": str(out_dir),
    }
    title = f"{data.name} / {cfg.encoder.name} / {mixture.covariance}"
    found = findings(attacks) if attacks else None
    unsound = write_run(
        out_dir,
        table,
        predictions,
        degradation,
        metrics,
        title=title,
        methods=methods,
        findings=found,
    )
    if found is not None:
        raise_if_unsound(found, unsound)
    return metrics

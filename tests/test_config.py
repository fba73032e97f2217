"""Every config composes; bad overrides fail at once with a message naming the problem."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
from conftest import CONFIGS, compose_config, start_cli
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from gmcert.data.specs import DATASETS
from gmcert.pipeline import run

GROUPS = ["dataset", "encoder", "mixture", "certify", "divergence", "experiment"]


def options(group):
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


@pytest.mark.parametrize(
    "override", [f"{g}={o}" for g in GROUPS for o in options(g)], ids=lambda s: s
)
def test_every_config_file_composes(tmp_path, override):
    cfg = compose_config(tmp_path, [override])
    # Resolving every interpolation catches typos in keys that composition alone does not.
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    assert cfg.dataset.name and cfg.encoder.name


def test_unknown_group_option_lists_the_choices(tmp_path):
    with pytest.raises(ConfigCompositionException, match="(?s)encoder/nope.*identity"):
        compose_config(tmp_path, ["encoder=nope"])


@pytest.mark.parametrize(
    "override,message",
    [
        ("certify.radii=oops", "certify.radii"),
        ("certify.radii=[0,oops]", "oops"),
        ("certify.batch_size=big", "certify.batch_size"),
        ("certify.radius=1", "radius"),
        ("dataset.separation=far", "separation"),
    ],
)
def test_type_errors_name_the_key(tmp_path, override, message):
    with pytest.raises(ConfigCompositionException, match=message):
        compose_config(tmp_path, ["dataset=synthetic", override])


@pytest.mark.parametrize(
    "override, message",
    [
        ("certify.norm=l3", r"certify.norm must be one of .*got 'l3'"),
        ("certify.radii=[]", r"certify.radii must be a non-empty list of finite .*got \[\]"),
        ("certify.radii=[0.0,-0.5]", r"certify.radii must be a non-empty list .*-0.5"),
        ("certify.radii=[nan]", r"certify.radii must be .*finite.*got \[nan\]"),
        ("certify.methods=[]", r"certify.methods must be a non-empty list from .*got \[\]"),
        ("certify.methods=[smoothing]", r"certify.methods must be .*got \['smoothing'\]"),
        ("certify.ci_alpha=1.5", r"certify.ci_alpha must be a level in \(0, 1\).*got 1.5"),
        ("certify.batch_size=0", "certify.batch_size must be an integer >= 1, got 0"),
        ("certify.stop=0", "certify.stop must be null or an integer > certify.start, got 0"),
        ("certify.start=5 certify.stop=5", "0 <= start < stop, got 5/5"),
        ("certify.shard=3", "certify.shard must be in 0..shards-1, got shard=3, shards=1"),
        ("certify.population_samples=-1", "certify.population_samples must be an integer >= 0"),
        ("certify.sigma=0", r"certify.sigma must be a noise std > 0 \(pixel units\), got 0.0"),
        ("divergence.estimators=[knnn]", r"divergence.estimators must be .*got \['knnn'\]"),
        ("divergence.n_boot=0", r"divergence.n_boot must be an integer >= 1 .*, got 0"),
        ("mixture.holdout_fraction=0", r"mixture.holdout_fraction must be a fraction in \(0, 1\)"),
        ("mixture.shrinkage=oops", r"mixture.shrinkage must be one of .*got 'oops'"),
        ("mixture.covariance=fulll", r"mixture.covariance must be one of .*got 'fulll'"),
        ("seed=4294967296", r"seed must be an integer in \[0, 2\*\*32 - 1\], got 4294967296"),
        ("seed=-1", r"seed must be an integer in \[0, 2\*\*32 - 1\], got -1"),
        ("attack.enabled=maybe", "attack.enabled must be true, false or auto, got 'maybe'"),
        ("dataset.test_size=0", r"dataset.test_size must be a fraction in \(0, 1\), got 0.0"),
    ],
)
def test_bad_certify_options_fail_before_any_work(make_cfg, monkeypatch, override, message):
    """Caught when the run starts, in-process, before the data is even built."""

    def no_data(*args, **kwargs):
        raise AssertionError("the dataset was built before the options were checked")

    monkeypatch.setitem(DATASETS, "digits", replace(DATASETS["digits"], build=no_data))
    with pytest.raises(ValueError, match=message):
        run(make_cfg("certify=closed_form", *override.split()))


@pytest.mark.parametrize(
    "override, message",
    [
        ("dataset.dim=0", "dataset.dim must be an integer >= 1 (the input dimension), got 0"),
        ("dataset.num_classes=1", "dataset.num_classes must be an integer >= 2, got 1"),
        ("dataset.n_test=0", "dataset.n_test must be an integer >= 1, got 0"),
    ],
)
def test_bad_dataset_options_fail_before_any_work(make_cfg, monkeypatch, override, message):
    def no_data(*args, **kwargs):
        raise AssertionError("the dataset was built before the options were checked")

    monkeypatch.setitem(DATASETS, "synthetic", replace(DATASETS["synthetic"], build=no_data))
    with pytest.raises(ValueError, match=re.escape(message)):
        run(make_cfg("certify=closed_form", "dataset=synthetic", override))


def test_singular_fit_without_shrinkage_names_the_options(make_cfg):
    cfg = make_cfg("certify=closed_form", "mixture.shrinkage=none", "mixture.reg_covar=0")
    # Digits has constant (always blank) pixels: the unshrunk covariance is singular.
    with pytest.raises(ValueError, match=r"not positive definite; fit with mixture.shrinkage="):
        run(cfg)


# Each error is its own process, run side by side (most of each is importing torch): a
# composition error and a value error in the fast suite, two more of each kind in test-full.
CLI_ERRORS = [
    (["encoder=nope"], "Could not find 'encoder/nope'"),
    (["certify.radii=[-1]"], "certify.radii must be a non-empty list of finite radii >= 0"),
]
MORE_CLI_ERRORS = [
    (["certify.radii=oops"], "certify.radii"),
    (["certify.norm=l3"], "certify.norm must be one of"),
]


def check_command_line_errors(tmp_path, cases):
    procs = [
        start_cli(args, tmp_path / f"run{i}", tmp_path / "cache", text=True)
        for i, (args, _) in enumerate(cases)
    ]
    for proc, (args, message) in zip(procs, cases, strict=True):
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode != 0, args
        assert message in stderr, (args, stderr[-2000:])
        assert "Traceback" not in stderr, (args, stderr[-2000:])


def test_command_line_errors_are_one_clear_message(tmp_path):
    check_command_line_errors(tmp_path, CLI_ERRORS)


@pytest.mark.slow
def test_more_command_line_errors_are_one_clear_message(tmp_path):
    check_command_line_errors(tmp_path, MORE_CLI_ERRORS)

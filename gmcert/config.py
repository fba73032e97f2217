"""Typed config schemas, registered in Hydra's ConfigStore (the dataset and encoder schemas
are their specs': :mod:`gmcert.data.schemas`, :mod:`gmcert.encoders.schemas`).

Every YAML option of a group extends one of these, so a typo (``certify.radius=1``) or a wrong
type (``certify.radii=oops``) on the command line fails at once, naming the key.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, ListConfig, OmegaConf

from gmcert.certify.norms import NORMS
from gmcert.data.specs import DATASETS
from gmcert.encoders.specs import ENCODERS

# ----------------------------------------------------------------------------- stages


@dataclass
class MixtureConfig:
    covariance: str = "shared"
    # ledoit_wolf | oas | none | a number in [0, 1] | select: the intensity with the best
    # held-out certified accuracy at select_radius (latent l2 units; linear rules only)
    shrinkage: Any = "ledoit_wolf"
    select_radius: float | None = None
    priors: Any = "empirical"  # empirical | uniform | list of K weights
    # Ridge on every covariance's diagonal, RELATIVE to the train latents' mean per-coordinate
    # variance (reg_covar * mean(np.var(Z, axis=0))): the same data in other units gets the
    # same rule in those units (docs/theory.md section 1).
    reg_covar: float = 1e-6
    rank: int = 8
    # The robust linear rule (docs/theory.md section 2) for this target radius (latent l2
    # units); null = Bayes.
    robust_radius: float | None = None
    holdout_fraction: float = 0.2  # split of train used to choose tau, never test
    chunk_size: int = 65536


@dataclass
class CertifyConfig:
    # closed_form: the mixture rule's exact certificate (in input space where the encoder
    # allows); smoothing_gmm / smoothing_probe (+ _clean): Cohen et al.'s randomized smoothing
    methods: list[str] = field(default_factory=lambda: ["closed_form"])
    norm: str = "l2"
    radii: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    batch_size: int = 4096
    dtype: str = "float64"
    ci_alpha: float = 0.05  # level of the Clopper-Pearson interval on certified accuracy
    start: int = 0  # certify test points [start, stop): split a large run into jobs
    stop: int | None = None
    # ... or sweep `certify.shards=N certify.shard=0,..,N-1`: job i takes the i-th of N parts.
    shards: int = 1
    shard: int = 0
    # randomized smoothing (pixels in [0, 1])
    sigma: float = 0.25
    n0: int = 100
    n: int = 100_000
    alpha: float = 0.001
    noise_batch: int = 1000
    # smoothing certifies the test points whose index is a multiple of this (the literature's
    # subset protocol: 20 for CIFAR-10, 100 for ImageNet); closed_form certifies every point
    smoothing_skip: int = 1
    # smoothing heads are trained under the noise (Cohen et al.); nonlinear encoders and the
    # probe on this many noisy copies of each train input (the mixture on a linear one: exact)
    noise_copies: int = 4
    population_samples: int = 20_000  # Monte Carlo draws from Q for CA_Q (SE <= 0.0036)
    # A run folder whose certified predictions this run evaluates again instead of certifying
    # (set by gmcert-reevaluate); refused unless they were made under this run's prediction key.
    predictions_from: str | None = None


@dataclass
class DivergenceConfig:
    enabled: bool = False
    # A KL budget to report the bound at, instead of (or besides) the estimate.
    eps: float | None = None
    estimators: list[str] = field(default_factory=lambda: ["knn", "plugin", "dv"])
    n_boot: int = 50
    alpha: float = 0.05
    max_per_class: int | None = 2000
    truth_samples: int = 200_000  # Monte Carlo draws for the true eps, where the data law is known
    k: int = 1  # neighbour order of knn and the plug-in's entropy
    q_ratio: int = 1  # Q draws per class point for knn and dv_logistic
    dv_split: float = 0.5  # share of each class the DV discriminator is fitted on
    dv_C_grid: list[float] = field(default_factory=lambda: [0.01, 0.1, 1.0])  # dv_logistic
    # every estimator also run on this many samples of Q itself (true KL = 0), with the same
    # class sizes: the null bias it subtracts (gmcert/eps/null.py); 0 turns it off
    null_replicates: int = 5


@dataclass
class AttackConfig:
    enabled: Any = False  # true | false | auto (on for in-memory datasets, off for image folders)
    steps: int = 50  # search steps per run of the minimum-norm attack
    restarts: int = 2  # extra runs from random points around each input
    batch_size: int = 256
    tolerance: float = 1e-6  # relative slack before an attack inside a radius is UNSOUND
    # attack the certified points whose index is a multiple of this (a network attacked on
    # every one of 10,000 points takes hours on a CPU)
    skip: int = 1
    # The smoothed classifiers' attack (gmcert.attack.smoothing): PGD on the soft smoothed
    # classifier, then PREDICT along its direction (docs/theory.md section 5).
    smoothing: bool = True
    smoothing_skip: int = 1  # attack the smoothing points whose index is a multiple of this
    smoothing_steps: int = 10  # gradient steps (>= 1)
    smoothing_samples: int = 32  # noise draws per point per gradient step
    smoothing_search: int = 5  # bisection steps on the scale (each one PREDICT call a point)
    smoothing_n: int | None = None  # PREDICT's noise samples per call; null: certify.n


@dataclass
class DenoiserConfig:
    """Denoised smoothing: a denoiser in front of the encoder (smoothing methods only).

    Values are checked by :func:`gmcert.denoisers.build_denoiser`, which names the fix.
    """

    name: str = "none"  # none | diffusion | custom
    # diffusion: a diffusers folder (config.json + diffusion_pytorch_model.safetensors or .bin,
    # optionally scheduler_config.json), or with builder a state-dict file; custom: an optional
    # state-dict file for the builder's module. Read locally, never downloaded.
    weights: str | None = None
    # "package.module:function": custom: returns the denoiser; diffusion: returns the
    # noise-prediction network eps(x_t, t) (e.g. a checkpoint that is not in diffusers format).
    builder: str | None = None
    timestep: int | None = None  # diffusion: force t*; null: matched to certify.sigma
    # diffusion: side (px) the network runs at; null: the data's own resolution.
    image_size: int | None = None
    # diffusion schedule; null: scheduler_config.json, else DDPM's (linear, 1e-4..0.02, 1000)
    beta_schedule: str | None = None
    beta_start: float | None = None
    beta_end: float | None = None
    num_train_timesteps: int | None = None
    prediction_type: str | None = None  # epsilon | sample | v_prediction; null: as above
    bf16: bool = True  # bf16 autocast, on CUDA only
    max_batch: int | None = None  # images per denoiser call; null: the whole noise batch


@dataclass
class PathsConfig:
    root_dir: str = MISSING
    data_dir: str = MISSING
    log_dir: str = MISSING
    cache_dir: str = MISSING
    output_dir: str = MISSING


@dataclass
class CacheConfig:
    enabled: bool = True
    force: bool = False


@dataclass
class Config:
    dataset: Any = MISSING
    encoder: Any = MISSING
    mixture: MixtureConfig = field(default_factory=MixtureConfig)
    certify: CertifyConfig = field(default_factory=CertifyConfig)
    divergence: DivergenceConfig = field(default_factory=DivergenceConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    denoiser: DenoiserConfig = field(default_factory=DenoiserConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    task_name: str = "run"
    seed: int = 0
    device: str = "auto"
    # Multirun: log a failing job and go on with the sweep instead of stopping it.
    continue_on_error: bool = True


def register_configs() -> None:
    """Register the schemas.

    The top-level schema types every stage group; dataset and encoder options differ in their
    fields, so each of their YAML options names its own schema (``schema_*``) in its defaults:
    the one its spec names (:data:`gmcert.data.specs.DATASETS`,
    :data:`gmcert.encoders.specs.ENCODERS`; the pretrained encoders share one).
    """
    cs = ConfigStore.instance()
    cs.store(name="gmcert_schema", node=Config)
    for spec in DATASETS.values():
        cs.store(group="dataset", name=f"schema_{spec.schema_name}", node=spec.schema)
    for spec in ENCODERS.values():
        cs.store(group="encoder", name=f"schema_{spec.schema_name}", node=spec.schema)


def _number(low=-math.inf, high=math.inf, *, integer=False, open_low=False, open_high=False):
    """A predicate: a finite (integer) number in the given range; bools are refused."""

    def ok(value) -> bool:
        kind = numbers.Integral if integer else numbers.Real
        if isinstance(value, bool) or not isinstance(value, kind):
            return False
        if not integer and not math.isfinite(value):
            return False
        above = value > low if open_low else value >= low
        below = value < high if open_high else value <= high
        return above and below

    return ok


def _optional(rule):
    return lambda value: value is None or rule(value)


def _each(rule, *, non_empty=True):
    return lambda value: (len(value) > 0 or not non_empty) and all(rule(v) for v in value)


def _one_of(choices):
    return lambda value: value in choices


def _probability():
    return _number(0, 1, open_low=True, open_high=True)


def _rules() -> list[tuple[str, object, str]]:
    """(option, predicate, what it must be). Options a config lacks (``dataset.dim`` on digits)
    are skipped. The registries are imported here, so that this module stays light."""
    from gmcert.certify.latent import DTYPES
    from gmcert.certify.methods import METHODS
    from gmcert.eps.per_class import ESTIMATORS
    from gmcert.models.mixture import COVARIANCE_FAMILIES
    from gmcert.models.moments import SHRINKAGE_RULES

    count, positive = _number(0, integer=True), _number(1, integer=True)
    return [
        ("seed", _number(0, 2**32 - 1, integer=True), "an integer in [0, 2**32 - 1]"),
        ("certify.norm", _one_of(NORMS), f"one of {list(NORMS)}"),
        ("certify.methods", _each(_one_of(METHODS)), f"a non-empty list from {sorted(METHODS)}"),
        ("certify.radii", _each(_number(0)), "a non-empty list of finite radii >= 0"),
        ("certify.batch_size", positive, "an integer >= 1"),
        ("certify.dtype", _one_of(DTYPES), f"one of {sorted(DTYPES)}"),
        ("certify.ci_alpha", _probability(), "a level in (0, 1), e.g. 0.05"),
        ("certify.start", count, "an integer >= 0"),
        ("certify.stop", _optional(positive), "null or an integer > certify.start"),
        ("certify.shards", positive, "an integer >= 1"),
        ("certify.shard", count, "an integer in 0..certify.shards-1"),
        ("certify.sigma", _number(0, open_low=True), "a noise std > 0 (pixel units)"),
        ("certify.n0", positive, "an integer >= 1 (selection samples)"),
        ("certify.n", positive, "an integer >= 1 (estimation samples)"),
        ("certify.alpha", _probability(), "a level in (0, 1), e.g. 0.001"),
        ("certify.noise_batch", positive, "an integer >= 1"),
        ("certify.noise_copies", positive, "an integer >= 1"),
        ("certify.smoothing_skip", positive, "an integer >= 1"),
        ("certify.population_samples", count, "an integer >= 0 (0: no CA under Q)"),
        ("mixture.covariance", _one_of(COVARIANCE_FAMILIES), f"one of {COVARIANCE_FAMILIES}"),
        (
            "mixture.shrinkage",
            lambda v: v in (*SHRINKAGE_RULES, "select") or _number(0, 1)(v),
            f"one of {(*SHRINKAGE_RULES, 'select')} or a number in [0, 1]",
        ),
        ("mixture.reg_covar", _number(0), "a number >= 0"),
        ("mixture.rank", positive, "an integer >= 1"),
        ("mixture.robust_radius", _optional(_number(0)), "null or a radius >= 0"),
        ("mixture.select_radius", _optional(_number(0)), "null or a radius >= 0"),
        ("mixture.holdout_fraction", _probability(), "a fraction in (0, 1), e.g. 0.2"),
        ("mixture.chunk_size", positive, "an integer >= 1"),
        ("divergence.eps", _optional(_number(0)), "null or a KL budget >= 0 (nats)"),
        (
            "divergence.estimators",
            _each(_one_of(ESTIMATORS)),
            f"a non-empty list from {sorted(ESTIMATORS)}",
        ),
        ("divergence.n_boot", positive, "an integer >= 1 (bootstrap replicates)"),
        ("divergence.alpha", _probability(), "a level in (0, 1), e.g. 0.05"),
        ("divergence.max_per_class", _optional(_number(2, integer=True)), "null or >= 2"),
        ("divergence.truth_samples", positive, "an integer >= 1"),
        ("divergence.k", positive, "an integer >= 1 (neighbour order)"),
        ("divergence.q_ratio", positive, "an integer >= 1"),
        ("divergence.dv_split", _probability(), "a fraction in (0, 1), e.g. 0.5"),
        (
            "divergence.dv_C_grid",
            _each(_number(0, open_low=True)),
            "a non-empty list of numbers > 0",
        ),
        (
            "divergence.null_replicates",
            lambda v: _number(0, integer=True)(v) and v != 1,
            "0 (off) or an integer >= 2 (one draw has no spread)",
        ),
        ("attack.enabled", _one_of((True, False, "auto")), "true, false or auto"),
        ("attack.steps", positive, "an integer >= 1"),
        ("attack.restarts", count, "an integer >= 0"),
        ("attack.batch_size", positive, "an integer >= 1"),
        ("attack.tolerance", _number(0), "a relative slack >= 0"),
        ("attack.skip", positive, "an integer >= 1"),
        ("attack.smoothing", _one_of((True, False)), "true or false"),
        ("attack.smoothing_skip", positive, "an integer >= 1"),
        ("attack.smoothing_steps", positive, "an integer >= 1"),
        ("attack.smoothing_samples", positive, "an integer >= 1"),
        ("attack.smoothing_search", count, "an integer >= 0"),
        ("attack.smoothing_n", _optional(positive), "null (certify.n) or an integer >= 1"),
        ("dataset.test_size", _probability(), "a fraction in (0, 1)"),
        # null where the schema allows it (dataset=arrays: 1 + the largest label)
        ("dataset.num_classes", _optional(_number(2, integer=True)), "an integer >= 2"),
        ("dataset.dim", positive, "an integer >= 1 (the input dimension)"),
        ("dataset.n_train", positive, "an integer >= 1"),
        ("dataset.n_test", positive, "an integer >= 1"),
        ("dataset.separation", _number(0), "a distance >= 0"),
        ("dataset.nu", _number(0, open_low=True), "degrees of freedom > 0"),
        ("encoder.n_components", positive, "an integer >= 1"),
    ]


def check_options(cfg) -> None:
    """Every option's value checked before any work is done, each error naming the option and
    what it must be (the schema has already checked the types)."""
    absent = object()
    for option, ok, meaning in _rules():
        value = OmegaConf.select(cfg, option, default=absent)
        if value is absent:
            continue
        if isinstance(value, ListConfig):
            value = list(value)
        if not ok(value):
            raise ValueError(f"{option} must be {meaning}, got {value!r}")
    certify = cfg.certify
    if certify.stop is not None and certify.stop <= certify.start:
        raise ValueError(
            f"certify.start/stop must satisfy 0 <= start < stop, got {certify.start}/{certify.stop}"
        )
    if certify.shard >= certify.shards:
        raise ValueError(
            f"certify.shard must be in 0..shards-1, got shard={certify.shard}, "
            f"shards={certify.shards}"
        )

"""Certification methods: one typed interface, and a registry from ``certify.methods`` names.

A method certifies test points by position. For each point it returns the prediction (a class
label, or ABSTAIN) and the certified radius in latent units and in input units (NaN where no
honest Lipschitz bound links the two). The pipeline reads nothing else from a method.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property, partial
from typing import Any, Protocol

import numpy as np
import torch
from sklearn.base import clone

from gmcert.certify.latent import (
    certify_latents,
    folded_certifier,
    latent_certifier,
    torch_dtype,
)
from gmcert.certify.smoothing import ABSTAIN, SmoothedClassifier, radius_cap
from gmcert.certify.transfer import RadiusTransfer
from gmcert.data import LabelledData
from gmcert.models.heads import LinearProbeHead, MixtureHead, fit_linear_probe
from gmcert.models.mixture import GaussianMixtureClassifier
from gmcert.models.noise_training import noisy_latents, noisy_mixture


@dataclass(frozen=True)
class Certified:
    """Per point: the prediction and its radius in latent and in input units."""

    predict: np.ndarray
    radius_latent: np.ndarray
    radius_input: np.ndarray


@dataclass(frozen=True)
class SmoothingSettings:
    """What a smoothing certificate depends on; ``radius_cap`` is the largest radius CERTIFY
    can return with these n and alpha (a limit of n, not a measurement)."""

    sigma: float
    n0: int
    n: int
    alpha: float
    radius_cap: float


@dataclass(frozen=True)
class RadiusSpace:
    """Where a method's radii are measured and how they got there, decided once, where the
    method is built: the table, CA under Q, the ceiling, the attack and the plot read it here
    instead of working it out again.

    ``space``: "input" (pixel units) or "latent" (latent units); the table's ``space`` column
    and the predictions column ``radius_<space>`` the table reads. ``folded``: the certifier of
    the rule folded into an encoder linear in its input, certified in input space directly
    (exact in every norm), or None. ``transfer``: for a latent certificate read in input units
    (folded, or through a Lipschitz bound), the run's :class:`RadiusTransfer`; None where the
    radii stay latent, or are input radii by construction (smoothing).
    """

    space: str
    folded: Any = None
    transfer: RadiusTransfer | None = None

    @property
    def column(self) -> str:
        """The predictions column holding these radii."""
        return f"radius_{self.space}"

    @property
    def linear(self):
        """The encoder's exact linear map where these input radii go through it, else None."""
        return self.transfer.linear if self.transfer is not None else None


class CertificationMethod(Protocol):
    name: str
    norm: str  # the perturbation norm of its radii
    radius_space: RadiusSpace  # where its radii are measured, and how they got there
    space: str  # radius_space.space: "input" (pixel units) or "latent"
    exact: bool  # True: the exact radius; False: a sound lower bound
    chunk_size: int  # points certified per call (and per resume step)
    smoothing: SmoothingSettings | None
    # Its certificates can be checked by an attack (gmcert.attack): the deterministic model's
    # minimum-norm attack where ``smoothing`` is None, the smoothed classifier's otherwise.
    # An attacked method gets the table's empirical column and the plot's band.
    attackable: bool
    # It certifies Q's own Bayes rule in closed form, so CA under Q (a certificate of that
    # rule on draws from Q), the ceiling under Q and the eps bound built on them describe its
    # rows.
    under_q: bool

    def prepare(self) -> None:
        """Build what certifying needs and building the method left out (smoothing's heads,
        trained under its noise): called only when the run has points left to certify."""

    def certify(self, positions: np.ndarray) -> Certified: ...


@dataclass(frozen=True)
class CertifyInputs:
    """Everything a method may need, passed explicitly (no global config)."""

    mixture: GaussianMixtureClassifier
    encoder: torch.nn.Module  # carries ``lipschitz``: l2 -> l2 bound, or None
    data: LabelledData
    train_latents: np.ndarray
    test_latents: np.ndarray
    device: torch.device
    options: Any  # the run's ``certify`` config node
    seed: int
    transfer: RadiusTransfer  # how latent radii become input radii in ``options.norm``
    denoiser: torch.nn.Module | None = None  # smoothing only: applied to the noisy input


class ClosedForm:
    """The exact certificate of the mixture's rule (docs/theory.md section 3), carried to input
    space wherever an honest link exists:

    * an encoder linear in its input (identity, PCA) with a linear head: the composition is
      one linear rule in the input, certified there directly: exact in every norm;
    * otherwise the latent radius over the encoder's Lipschitz bound for the right pair of
      norms (:mod:`gmcert.certify.transfer`): sound, not exact (the identity: exact);
    * no bound: radii stay in latent units.

    ``radius_latent`` is always the latent certificate in ``certify.norm``.
    """

    name = "closed_form"
    smoothing = None
    attackable = True
    under_q = True

    def __init__(self, inputs: CertifyInputs):
        opts, mixture = inputs.options, inputs.mixture
        self.norm = opts.norm
        self.chunk_size = opts.batch_size
        self._test, self._latents = inputs.data.test, inputs.test_latents
        self._classes, self._transfer = mixture.classes_, inputs.transfer

        def certifier(norm):
            return latent_certifier(
                mixture, norm=norm, device=inputs.device, dtype=torch_dtype(opts.dtype)
            )

        self._latent = certifier(opts.norm)
        linear = self._transfer.linear
        self._folded = folded_certifier(
            mixture, linear, norm=opts.norm, device=inputs.device, dtype=torch_dtype(opts.dtype)
        )
        self._through = None
        if self._folded is not None:
            self.radius_space = RadiusSpace("input", self._folded, self._transfer)
            self.exact = True
        elif self._transfer.factor is not None:
            same = self._transfer.latent_norm == opts.norm
            self._through = self._latent if same else certifier(self._transfer.latent_norm)
            self.radius_space = RadiusSpace("input", None, self._transfer)
            self.exact = self._latent.exact and linear is not None and linear.weight is None
        else:
            self.radius_space = RadiusSpace("latent")
            self.exact = self._latent.exact

    @property
    def space(self) -> str:
        return self.radius_space.space

    def prepare(self) -> None:
        """Nothing to prepare: the closed form is built with the method."""

    def certify(self, positions: np.ndarray) -> Certified:
        latents = self._latents[positions]
        codes, radius = certify_latents(self._latent, latents, batch_size=self.chunk_size)
        if self._folded is not None:
            x = self._test.batch(positions).flatten(1).double().numpy()
            codes, radius_input = certify_latents(self._folded, x, batch_size=self.chunk_size)
        elif self._through is not None:
            through = radius
            if self._through is not self._latent:
                _, through = certify_latents(self._through, latents, batch_size=self.chunk_size)
            radius_input = self._transfer.input_radius(through)
        else:
            radius_input = np.full_like(radius, np.nan)
        return Certified(self._classes[codes], radius, radius_input)


class Smoothing:
    """Randomized smoothing (Cohen et al. 2019, docs/theory.md section 4) of ``encoder -> head``.

    Radii are l2 in input pixel units. As in Cohen et al., the head is trained under the
    noise it is smoothed with (``noise_trained``): for the mixture on an encoder linear in its
    input exactly (class covariances Sigma_k + sigma^2 W W^T), otherwise on encodings of
    ``certify.noise_copies`` noisy copies of each train input, passed through the denoiser
    first when one is configured; ``noise_trained=False`` keeps the clean-trained head
    (methods ``*_clean``: with a denoiser, Carlini et al.'s off-the-shelf setting). A test
    point's noise depends only on the run's seed and the point's index in the dataset, so
    resumed, sharded and unsplit runs agree.
    """

    norm = "l2"
    radius_space = RadiusSpace("input")  # input radii by construction: no transfer, no fold
    space = radius_space.space
    exact = True
    attackable = True  # by gmcert.attack.smoothing, through smoothed, classes and noise_seeds
    under_q = False  # it certifies the smoothed classifier, not Q's Bayes rule

    def __init__(self, inputs: CertifyInputs, *, head: str, noise_trained: bool):
        opts = inputs.options
        self.name = f"smoothing_{head}" + ("" if noise_trained else "_clean")
        self._seed = inputs.seed
        self._inputs, self._head_kind, self._noise_trained = inputs, head, noise_trained
        # True: the base's first stage is a denoiser (run in inference mode, no gradient).
        self.denoised = inputs.denoiser is not None
        self._test = inputs.data.test
        self.smoothing = SmoothingSettings(
            sigma=opts.sigma,
            n0=opts.n0,
            n=opts.n,
            alpha=opts.alpha,
            radius_cap=radius_cap(opts.sigma, opts.n, opts.alpha),
        )
        # Several points share forward passes when n is small next to the noise batch.
        self.chunk_size = max(1, opts.noise_batch // opts.n)

    @cached_property
    def smoothed(self) -> SmoothedClassifier:
        """The smoothed classifier, its head trained on first use (:meth:`prepare`): a run
        whose predictions and attacks are all reused never trains it."""
        inputs = self._inputs
        stages = [inputs.encoder, self._head(inputs, self._head_kind, self._noise_trained)]
        if inputs.denoiser is not None:
            stages.insert(0, inputs.denoiser)
        base = torch.nn.Sequential(*stages).eval().to(inputs.device)
        opts = inputs.options
        return SmoothedClassifier(
            base, len(self._classes), opts.sigma, device=inputs.device, batch_size=opts.noise_batch
        )

    def prepare(self) -> None:
        self.smoothed  # noqa: B018 (trains the head now, in the heads stage)

    def _head(self, inputs: CertifyInputs, head: str, noise_trained: bool) -> torch.nn.Module:
        mixture, encoder, train = inputs.mixture, inputs.encoder, inputs.data.train
        Z, y = inputs.train_latents, train.labels
        # The closed form holds for latents W (x + e); a denoiser in between breaks it.
        exact_noise = (
            head == "gmm" and inputs.transfer.linear is not None and inputs.denoiser is None
        )
        if noise_trained and not exact_noise:
            # Train on what the smoothed base will see: encoder(denoiser(x + e)).
            seen = encoder
            if inputs.denoiser is not None:
                seen = torch.nn.Sequential(inputs.denoiser, encoder)
            Z, y = noisy_latents(
                seen,
                train.inputs,
                train.labels,
                sigma=inputs.options.sigma,
                copies=inputs.options.noise_copies,
                seed=inputs.seed,
                device=inputs.device,
            )
        if head == "probe":
            head_module = LinearProbeHead(fit_linear_probe(Z, y, seed=inputs.seed))
            self._classes = head_module.classes
            return head_module
        if noise_trained:
            mixture = (
                noisy_mixture(mixture, sigma=inputs.options.sigma, linear_map=encoder)
                if exact_noise
                else clone(mixture).fit(Z, y)
            )
        self._classes = mixture.classes_
        return MixtureHead(mixture)

    @property
    def classes(self) -> np.ndarray:
        """The labels of the base classifier's outputs, in output order."""
        self.prepare()
        return self._classes

    def noise_seeds(self, positions: np.ndarray) -> list[int]:
        """One noise key per test position, from the run's seed and the point's dataset index
        only (CERTIFY draws streams 0 and 1 of it; an attack draws other streams)."""
        # The seed is below 2**32 (checked with the options), so each pair is its own key.
        return [self._seed * 2**32 + int(i) for i in self._test.indices[positions]]

    def certify(self, positions: np.ndarray) -> Certified:
        settings = self.smoothing
        seeds = self.noise_seeds(positions)
        certs = self.smoothed.certify_batch(
            self._test.batch(positions),
            n0=settings.n0,
            n=settings.n,
            alpha=settings.alpha,
            seeds=seeds,
        )
        codes = np.array([c.prediction for c in certs])
        predict = np.where(codes == ABSTAIN, ABSTAIN, self._classes[np.maximum(codes, 0)])
        radius = np.array([c.radius for c in certs])
        return Certified(predict, np.full_like(radius, np.nan), radius)


METHODS: dict[str, Callable[[CertifyInputs], CertificationMethod]] = {
    "closed_form": ClosedForm,
    "smoothing_gmm": partial(Smoothing, head="gmm", noise_trained=True),
    "smoothing_probe": partial(Smoothing, head="probe", noise_trained=True),
    "smoothing_gmm_clean": partial(Smoothing, head="gmm", noise_trained=False),
    "smoothing_probe_clean": partial(Smoothing, head="probe", noise_trained=False),
}


def build_methods(names, inputs: CertifyInputs) -> list[CertificationMethod]:
    unknown = [name for name in names if name not in METHODS]
    if unknown or not names:
        raise ValueError(
            f"certify.methods must name one or more of {sorted(METHODS)}, got {list(names)}"
        )
    return [METHODS[name](inputs) for name in names]

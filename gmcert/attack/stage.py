"""The attack stage: every certificate attacked where its radius is measured.

For each point an attackable method without smoothing (the closed form) certified, the
smallest perturbation found that changes the deterministic model's prediction (encoder ->
mixture head on inputs when the method's ``radius_space`` is input space, the head on latents
when it is latent), in the certificate's norm. Where
the model is linear in its input the exact boundary projection is taken as well. The attack
radius bounds the robust radius from above, as the certificate bounds it from below: their
ratio is the certificate's tightness, and an attack that succeeds strictly inside a certified
radius is a soundness bug, reported as such.

Smoothing certificates are probabilistic statements about the smoothed classifier: they are
attacked by :mod:`gmcert.attack.smoothing` (Monte Carlo), which this stage calls for every
method that is ``attackable`` and has ``smoothing`` settings.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from gmcert.attack.linear import linear_boundary_projection
from gmcert.attack.minimum_norm import minimum_norm_attack
from gmcert.attack.results import Attacked, Findings
from gmcert.attack.smoothing import attack_smoothed
from gmcert.certify.methods import CertificationMethod, CertifyInputs
from gmcert.data import Split
from gmcert.models.heads import MixtureHead

log = logging.getLogger(__name__)


class UnsoundCertificate(RuntimeError):
    """An attack found a class change strictly inside a certified radius."""


def attacked_methods(methods, options) -> list[CertificationMethod]:
    """The methods whose certificates the stage attacks: every ``attackable`` one, the
    smoothing methods only with ``attack.smoothing``."""
    return [
        m
        for m in methods
        if getattr(m, "attackable", False) and (m.smoothing is None or options.smoothing)
    ]


def attack_enabled(options, test: Split, methods) -> bool:
    """``attack.enabled``: true, false, or auto (on for in-memory datasets, off for image
    folders, where attacking a large encoder on every image is a job of its own). Without an
    attackable method (:func:`attacked_methods`) there is nothing to attack."""
    if options.enabled not in (True, False, "auto"):
        raise ValueError(f"attack.enabled must be true, false or auto, got {options.enabled!r}")
    if not attacked_methods(methods, options):
        if options.enabled is True:
            log.warning("attack.enabled=true, but none of certify.methods can be attacked")
        return False
    if options.enabled == "auto":
        return isinstance(test.inputs, np.ndarray)
    return options.enabled


def attack_all(
    predictions: pd.DataFrame,
    methods,
    inputs: CertifyInputs,
    positions: np.ndarray,
    options,
) -> list[Attacked]:
    """Each of :func:`attacked_methods`, by the attack its kind of certificate needs."""
    attacks = []
    for method in attacked_methods(methods, options):
        if method.smoothing is None:
            attacks.append(attack_certificates(predictions, method, inputs, positions, options))
            continue
        found = attack_smoothed(predictions, method, positions, inputs.data.test, options)
        if found is not None:
            attacks.append(found)
    return attacks


def unsound_findings(attacks) -> list[dict]:
    """The findings that make a run UNSOUND: a closed-form certificate beaten at all, or
    smoothing certificates beaten more often than their alpha allows."""
    return [v for attacked in attacks for v in attacked.violations]


def findings(attacks) -> Findings:
    """What the write stage records of the attack stage's results (:class:`Findings`)."""
    return Findings(
        attack_radius={attacked.method: attacked.radius for attacked in attacks},
        # Every confirmed flip inside a smoothing radius; UNSOUND only beyond what alpha allows.
        flips=[f for attacked in attacks for f in getattr(attacked, "flips", [])],
        unsound=unsound_findings(attacks),
    )


def raise_if_unsound(found: Findings, written: Path | None) -> None:
    """The run's last step: :class:`UnsoundCertificate` when an attack beat a certificate
    (``written``: the file the write stage recorded the findings in)."""
    violations = found.unsound
    if not violations:
        return
    where = sorted({f"{v['method']} ({v['norm']}, {v['space']} space)" for v in violations})
    raise UnsoundCertificate(
        f"UNSOUND: an attack changed the prediction strictly inside {len(violations)}"
        f" certified radii of {', '.join(where)}; the points, perturbations and both radii"
        f" are in {written}"
    )


def attack_certificates(
    predictions: pd.DataFrame,
    method: CertificationMethod,
    inputs: CertifyInputs,
    positions: np.ndarray,
    options,
) -> Attacked:
    """Attack ``method``'s certificates (from ``predictions``) at ``positions``, in its norm
    and space; ``options``: the ``attack`` config node (steps, restarts, batch_size,
    tolerance, skip: only the points whose index is a multiple of it)."""
    started = time.perf_counter()
    where, norm, mixture, encoder = method.radius_space, method.norm, inputs.mixture, inputs.encoder
    space = where.space
    test = inputs.data.test
    # By dataset index, as smoothing's subset: shards and resumed runs attack the same points.
    positions = positions[test.indices[positions] % options.skip == 0]
    if len(positions) == 0:
        raise ValueError(
            f"attack.skip={options.skip} leaves no test point of this job to attack; lower it"
        )
    head = MixtureHead(mixture, dtype=torch.float64)
    if space == "input":
        x = test.batch(positions).double()
        model = nn.Sequential(encoder, head).eval()
    else:
        x = torch.as_tensor(np.asarray(inputs.test_latents[positions], np.float64))
        model = head.eval()
    linear = where.linear  # the encoder's exact map, where these input radii go through it
    affine = mixture.is_linear_ and (space == "latent" or linear is not None)
    # Scores affine in the attacked space: the first (DeepFool) step over every rival lands on
    # the nearest face, up to the overshoot the bisection then removes, and the exact
    # projection below is the minimum. More steps, restarts and one-rival runs would only cost
    # time (the attack on 10,000 Fashion-MNIST images: 51 s before, 2.6 s now).
    runs = {"steps": 1, "restarts": 0, "targeted": 0}
    if not affine:
        runs = {"steps": options.steps, "restarts": options.restarts}
    found = minimum_norm_attack(
        model,
        x,
        norm=norm,
        **runs,
        batch_size=options.batch_size,
        device=inputs.device,
        seed=inputs.seed,
    )
    radius, adversarial = found.radius.copy(), found.adversarial.reshape(len(x), -1).copy()
    flat = x.flatten(1).numpy()
    if affine:
        M, c = mixture.linear_head()
        A, b = linear.fold(M, c) if linear is not None else (M, c)
        exact = linear_boundary_projection(A, b, flat, norm=norm)
        better = exact.verified & (exact.radius < radius)
        radius[better] = exact.radius[better]
        adversarial[better] = flat[better] + exact.delta[better]
    indices = test.indices[positions]
    certified = (
        predictions[predictions["method"] == method.name]
        .set_index("index")
        .loc[indices, where.column]
        .to_numpy()
    )
    inside = radius < certified * (1 - options.tolerance)
    violations = [
        {
            "index": int(indices[i]),
            "method": method.name,
            "norm": norm,
            "space": space,
            "certified_radius": float(certified[i]),
            "attack_radius": float(radius[i]),
            "perturbation": (adversarial[i] - flat[i]).tolist(),
        }
        for i in np.flatnonzero(inside)
    ]
    return Attacked(
        pd.Series(radius, index=indices, name="attack_radius"),
        violations,
        time.perf_counter() - started,
        norm,
        space,
        method.name,
    )

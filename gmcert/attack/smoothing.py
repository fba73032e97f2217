"""The attack on a smoothed classifier: an upper bound beside each smoothing certificate
(docs/theory.md section 5).

A smoothing certificate is about ``g(x) = argmax_c P[h(x + e) = c]``, not about the base ``h``,
so it is ``g`` that is attacked, in l2 (the certificate's norm), in two parts:

1. *Direction*: projected gradient descent, in the style of Salman et al.'s (2019) SmoothAdv
   attack, on the log-probability the *soft* smoothed classifier
   ``G(x) = E_e[softmax(h_scores(x + e))]`` gives the certified class, each ``G`` a Monte
   Carlo average over ``attack.smoothing_samples`` fresh noise draws, inside an l2 ball of
   radius ``1.5 max(R, sigma / 4)`` (R: the certified radius). With a denoiser in front (run
   in inference mode, without gradients) the gradient passes it as the identity (BPDA,
   Athalye et al. 2018); PREDICT below still runs the real base.
2. *Minimum norm along it*: PREDICT (Cohen et al.'s, ``SmoothedClassifier.predict_batch``,
   with certify.n and certify.alpha unless set) at growing scales of the direction (from
   the PGD budget) until the prediction is lost, then at the certified radius, then bisection on
   the scale. Every call draws fresh noise, independent of CERTIFY's (streams of the point's
   own key that CERTIFY never uses). The attack radius is the smallest scale found at which
   PREDICT does not return the certified class: **an abstention counts as losing it** (not
   robust at that radius).

A class change is only a soundness finding when PREDICT returned *another class* strictly
inside the certified radius and a further PREDICT, with fresh noise at level alpha, returns
another class again. Each certificate and each such confirmation errs with probability at
most alpha, independently across points, so a correct certifier yields at most
``Binomial(N, 2 alpha)`` confirmed flips among N certified points: the run is UNSOUND only
when the count's one-sided binomial p-value falls below alpha.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from scipy import stats
from torch import nn

from gmcert.attack.results import Attacked
from gmcert.certify.smoothing import ABSTAIN, block_seed

log = logging.getLogger(__name__)

# Noise streams of a point's key (run seed, dataset index) that the attack draws from: CERTIFY
# uses streams 0 (selection) and 1 (estimation), so these are independent of its noise.
GRADIENT_STREAM = 1000  # + gradient step
PREDICT_STREAM = 2000  # + PREDICT call of the search
CONFIRM_STREAM = 3000
EXPANSIONS = 4  # the search doubles the scale at most this many times before giving up
BUDGET_FACTOR = 1.5  # the gradient attack's l2 ball: this times max(R, sigma / 4)


@dataclass(frozen=True)
class SmoothedAttacked(Attacked):
    """One smoothing method's attack (``radius`` by index: inf where no loss of the prediction
    was found, 0 where CERTIFY abstained; ``violations``: the confirmed flips when beyond what
    alpha allows, else empty), plus ``flips`` (every confirmed flip inside a certified radius)
    and ``details`` (metrics.json's account: counts, noise, the binomial test)."""

    flips: list[dict]
    details: dict


class _StraightThrough(nn.Module):
    """A module without gradients (a denoiser in inference mode) passed as the identity in the
    backward pass: forward ``f(x)``, gradient that of ``x`` (BPDA, Athalye et al. 2018)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out = self.inner(x.detach()).clone()  # a normal tensor, not an inference one
        return x + (out - x.detach())


def gradient_model(method) -> nn.Module:
    """The base classifier the gradient steps differentiate: the smoothed one's base, with a
    denoiser in front passed straight through."""
    base = method.smoothed.base
    if not method.denoised:
        return base
    return nn.Sequential(_StraightThrough(base[0]), *list(base)[1:])


def soft_smoothed_direction(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    seeds: list[int],
    *,
    sigma: float,
    budget: torch.Tensor,
    steps: int,
    samples: int,
    rows: int,
) -> torch.Tensor:
    """Unit l2 directions (M, *shape) that lower the soft smoothed classifier's probability
    of ``target`` (class codes, M) at ``x`` (M, *shape): ``steps`` normalised gradient steps
    of size ``2.5 budget / steps``, projected on the l2 ball of radius ``budget`` (M,), each
    on ``samples`` fresh draws of N(0, sigma^2 I) per point (keyed by ``seeds``), ``rows``
    noisy copies per forward pass at most. A zero direction where no gradient ever moved."""
    chunk = max(1, rows // samples)
    out = torch.zeros_like(x)
    for start in range(0, len(x), chunk):
        part = slice(start, start + chunk)
        out[part] = _descend(
            model, x[part], target[part], seeds[part], sigma, budget[part], steps, samples
        )
    norms = out.flatten(1).norm(dim=1).clamp_min(1e-300)
    return out / norms.view(-1, *([1] * (x.dim() - 1)))


def _descend(model, x, target, seeds, sigma, budget, steps, samples):
    shape, dev = x.shape[1:], x.device
    view = (-1, *([1] * len(shape)))
    delta = torch.zeros_like(x)
    step = (2.5 * budget / max(steps, 1)).to(x.dtype).view(view)
    generator = torch.Generator(dev)
    for t in range(steps):
        noise = torch.empty((len(x), samples, *shape), dtype=x.dtype, device=dev)
        for m, seed in enumerate(seeds):
            generator.manual_seed(block_seed(seed, GRADIENT_STREAM + t, 0))
            noise[m].normal_(0.0, sigma, generator=generator)
        delta.requires_grad_(True)
        noisy = ((x + delta)[:, None] + noise).reshape(-1, *shape)
        scores = model(noisy).view(len(x), samples, -1).double()
        log_p = torch.log_softmax(scores, dim=-1)
        pick = target.view(-1, 1, 1).expand(-1, samples, 1)
        # log G_target = log mean_j softmax_target(x + delta + e_j), in the log domain.
        log_soft = torch.logsumexp(log_p.gather(2, pick).squeeze(2), dim=1)
        try:
            (grad,) = torch.autograd.grad(log_soft.sum(), delta, retain_graph=True)
        except RuntimeError as err:  # e.g. an encoder that runs under torch.no_grad
            raise ValueError(
                "the smoothing attack needs input gradients of the base classifier, which this "
                f"encoder does not give ({err}); set attack.smoothing=false"
            ) from err
        flat = grad.flatten(1).norm(dim=1)
        if bool((flat == 0).any()):
            # Saturated softmax (every draw certain of the target): descend the mean margin
            # to the strongest rival instead, which still has a gradient.
            rival = scores.scatter(2, pick, -torch.inf).amax(dim=2)
            margin = (scores.gather(2, pick).squeeze(2) - rival).mean(dim=1)
            (fallback,) = torch.autograd.grad(margin.sum(), delta)
            grad = torch.where((flat == 0).view(view), fallback, grad)
            flat = grad.flatten(1).norm(dim=1)
        with torch.no_grad():
            unit = grad / flat.clamp_min(1e-300).view(view)
            delta = delta.detach() - step * unit
            size = delta.flatten(1).norm(dim=1)
            scale = torch.where(size > budget, budget / size.clamp_min(1e-300), 1.0)
            delta = delta * scale.to(x.dtype).view(view)
    return delta.detach()


def binomial_allowance(points: int, per_point: float, level: float) -> int:
    """How many confirmed flips ``points`` correct certificates can show: the largest count
    whose one-sided p-value under ``Binomial(points, per_point)`` is at least ``level``."""
    allowed = 0
    while allowed < points and stats.binom.sf(allowed, points, per_point) >= level:
        allowed += 1  # P(X >= allowed + 1) >= level: one more flip is still allowed
    return allowed


def flip_p_value(flips: int, points: int, per_point: float) -> float:
    """P(Binomial(points, per_point) >= flips): how surprising the count is for correct
    certificates."""
    return 1.0 if flips == 0 else float(stats.binom.sf(flips - 1, points, per_point))


def attack_smoothed(
    predictions: pd.DataFrame, method, positions, test, options
) -> SmoothedAttacked | None:
    """Attack ``method`` (a smoothing method: ``smoothed``, ``classes``, ``noise_seeds``,
    ``denoised``, ``smoothing``) at its certified ``positions`` whose dataset index is a
    multiple of ``attack.smoothing_skip``; ``options``: the ``attack`` config node. None
    (with a warning) where no such point was certified."""
    started = time.perf_counter()
    settings, smoothed = method.smoothing, method.smoothed
    rows = predictions[predictions["method"] == method.name].set_index("index")
    positions = np.asarray(positions)
    indices = test.indices[positions]
    keep = np.isin(indices, rows.index) & (indices % options.smoothing_skip == 0)
    positions, indices = positions[keep], indices[keep]
    if len(positions) == 0:
        log.warning(
            "%s: attack.smoothing_skip=%d leaves no certified point to attack",
            method.name,
            options.smoothing_skip,
        )
        return None
    n = options.smoothing_n or settings.n
    alpha, sigma, tolerance = settings.alpha, settings.sigma, options.tolerance
    points = rows.loc[indices]
    certified = points[method.radius_space.column].to_numpy(np.float64)
    labels = points["predict"].to_numpy()
    code_of = {label: code for code, label in enumerate(method.classes.tolist())}
    attacked = labels != ABSTAIN  # an abstention has no prediction to keep: radius 0
    radius = np.zeros(len(positions))
    flips: list[dict] = []
    search_calls = 0
    if attacked.any():
        sel = np.flatnonzero(attacked)
        target = np.array([code_of[label] for label in labels[sel]])
        seeds = method.noise_seeds(positions[sel])
        x = test.batch(positions[sel]).to(smoothed.device)
        budget = BUDGET_FACTOR * np.maximum(certified[sel], sigma / 4)
        direction = soft_smoothed_direction(
            gradient_model(method),
            x,
            torch.as_tensor(target, device=smoothed.device),
            seeds,
            sigma=sigma,
            budget=torch.as_tensor(budget, device=smoothed.device),
            steps=options.smoothing_steps,
            samples=options.smoothing_samples,
            rows=smoothed.batch_size,
        )
        search = _Search(smoothed, x, direction, target, seeds, n=n, alpha=alpha)
        found, flip_scale = search.run(
            budget, certified[sel], certified[sel] * (1 - tolerance), options
        )
        radius[sel] = found
        search_calls = search.calls
        flips = _confirm(search, flip_scale, sel, indices, certified, labels, method)
    # Points with a certificate: the ones a flip could contradict.
    certificates = int(((labels != ABSTAIN) & (certified > 0)).sum())
    per_point = 2 * alpha  # the certificate's error, plus the confirming PREDICT's
    allowed = binomial_allowance(certificates, per_point, alpha)
    p_value = flip_p_value(len(flips), certificates, per_point)
    unsound = p_value < alpha
    details = {
        "points": int(len(positions)),
        "attacked": int(attacked.sum()),
        "abstained": int((~attacked).sum()),
        "certificates": certificates,
        "found": int(np.isfinite(radius[attacked]).sum()),
        "inside_certified": int((radius < certified * (1 - tolerance)).sum()),
        "confirmed_flips": len(flips),
        "flips_allowed": allowed,
        "flip_p_value": p_value,
        "unsound": bool(unsound),
        "rule": f"UNSOUND when P(Binomial({certificates}, 2 alpha) >= confirmed flips) < alpha"
        f" = {alpha:g}: each certificate and each confirming PREDICT errs with probability "
        "<= alpha, independently across points",
        "abstentions": "a point whose PREDICT abstains at a scale has lost its prediction "
        "there (not robust at that radius); a point CERTIFY abstained on is not attacked "
        "(radius 0, not robust at any radius)",
        "gradient_steps": int(options.smoothing_steps),
        "gradient_samples": int(options.smoothing_samples),
        "predict_n": int(n),
        "predict_alpha": float(alpha),
        "search_predict_calls": int(search_calls),
        "noise_samples": int(
            attacked.sum() * options.smoothing_steps * options.smoothing_samples
            + search_calls * n
            + len(flips) * n
        ),
        "noise": "keyed by (seed * 2**32 + dataset index, stream), as CERTIFY's: CERTIFY "
        f"draws streams 0 and 1, the gradient steps {GRADIENT_STREAM} + step, the search's "
        f"PREDICT calls {PREDICT_STREAM} + call, the confirmation {CONFIRM_STREAM}",
        "attack": "PGD on the soft smoothed classifier (SmoothAdv-style, Monte Carlo), then "
        "the smallest scale along its direction at which PREDICT loses the certified class "
        "(doubling, the certified radius, then bisection)"
        + (", gradient through the denoiser as the identity" if method.denoised else ""),
    }
    seconds = time.perf_counter() - started
    return SmoothedAttacked(
        pd.Series(radius, index=indices, name="attack_radius"),
        flips if unsound else [],
        seconds,
        method.norm,
        method.space,
        method.name,
        flips,
        details,
    )


class _Search:
    """The minimum-norm search along fixed directions, each step one batched PREDICT call on
    fresh noise (stream PREDICT_STREAM + call number)."""

    def __init__(self, smoothed, x, direction, target, seeds, *, n, alpha):
        self.smoothed, self.x, self.direction = smoothed, x, direction
        self.target, self.seeds, self.n, self.alpha = target, seeds, n, alpha
        self.calls = 0  # PREDICT calls, summed over points
        self._stream = 0

    def point(self, rows: np.ndarray, scale: np.ndarray) -> torch.Tensor:
        view = (-1, *([1] * (self.x.dim() - 1)))
        s = torch.as_tensor(scale, dtype=self.x.dtype, device=self.x.device).view(view)
        return self.x[rows] + s * self.direction[rows]

    def predict(self, rows: np.ndarray, scale: np.ndarray, stream: int | None = None):
        if stream is None:
            stream, self._stream = PREDICT_STREAM + self._stream, self._stream + 1
        self.calls += len(rows)
        return self.smoothed.predict_batch(
            self.point(rows, scale),
            n=self.n,
            alpha=self.alpha,
            seeds=[self.seeds[i] for i in rows],
            stream=stream,
        )

    def run(self, budget, certified, inside, options) -> tuple[np.ndarray, np.ndarray]:
        """Per point the smallest scale found where PREDICT loses the target (inf: none), and
        the smallest scale strictly ``inside`` the certified radius where PREDICT returned
        another class (NaN: none). Scales: ``budget``, doubled until the target is lost,
        then the ``certified`` radius, then ``attack.smoothing_search`` bisections."""
        m = len(self.target)
        lo, hi = np.zeros(m), np.full(m, np.inf)
        flip = np.full(m, np.nan)

        def check(rows, scale):
            got = self.predict(rows, scale)
            lost = got != self.target[rows]
            other = lost & (got != ABSTAIN) & (scale < inside[rows])
            smaller = other & ~(flip[rows] <= scale)
            flip[rows[smaller]] = scale[smaller]
            return lost

        def split(rows, at):
            lost = check(rows, at)
            hi[rows[lost]] = at[lost]
            lo[rows[~lost]] = at[~lost]

        # No call at x itself: CERTIFY found cA there, and where PREDICT would abstain at x
        # the bisection below closes in on 0 anyway (one call a point saved, an eighth).
        scale = budget.copy()
        for _ in range(EXPANSIONS + 1):
            rows = np.flatnonzero(np.isinf(hi))
            if len(rows) == 0:
                break
            split(rows, scale[rows])
            scale[rows] *= 2
        # The first split at the certified radius itself where it lies in the bracket: a
        # certificate near its attack radius (the usual case) then leaves a bracket a fraction
        # of the radius wide for the bisection, instead of the whole ball.
        bracketed = np.isfinite(hi) & (hi > 0)
        rows = np.flatnonzero(bracketed & (lo < certified) & (certified < hi))
        if len(rows):
            split(rows, certified[rows])
        for _ in range(options.smoothing_search):
            rows = np.flatnonzero(np.isfinite(hi) & (hi > 0))
            if len(rows) == 0:
                break
            split(rows, (lo[rows] + hi[rows]) / 2)
        return hi, flip


def _confirm(search: _Search, flip_scale, sel, indices, certified, labels, method) -> list[dict]:
    """The flips inside certified radii that a fresh PREDICT (level alpha) confirms: it too
    returns a class other than the certified one."""
    rows = np.flatnonzero(np.isfinite(flip_scale))
    if len(rows) == 0:
        return []
    scale = flip_scale[rows]
    got = search.predict(rows, scale, stream=CONFIRM_STREAM)
    confirmed = (got != search.target[rows]) & (got != ABSTAIN)
    flips = []
    for row, s, cls in zip(rows[confirmed], scale[confirmed], got[confirmed], strict=True):
        i = sel[row]
        x = search.x[row].flatten().double().cpu()
        delta = float(s) * search.direction[row].flatten().double().cpu()
        flips.append(
            {
                "index": int(indices[i]),
                "method": method.name,
                "norm": method.norm,
                "space": method.space,
                "certified_radius": float(certified[i]),
                "attack_radius": float(delta.norm()),
                "certified_class": labels[i].item() if hasattr(labels[i], "item") else labels[i],
                "class_at_perturbation": method.classes[int(cls)].item(),
                "confirmed_by": f"PREDICT, n={search.n}, alpha={search.alpha:g}, noise stream "
                f"{CONFIRM_STREAM}",
                "input": x.tolist(),
                "perturbation": delta.tolist(),
            }
        )
    return flips


__all__ = [
    "SmoothedAttacked",
    "attack_smoothed",
    "binomial_allowance",
    "flip_p_value",
    "gradient_model",
    "soft_smoothed_direction",
]

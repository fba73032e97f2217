"""Randomized smoothing (Cohen, Rosenfeld and Kolter 2019): the input-space certifier
(docs/theory.md section 4).

The smoothed classifier of a base classifier ``h`` is ``g(x) = argmax_c P[h(x + e) = c]`` with
``e ~ N(0, sigma^2 I)``. If the top class has probability ``pA >= pA_lower > 1/2``, then ``g`` is
constant on the l2 ball of radius ``sigma * Phi^-1(pA_lower)`` around ``x``. CERTIFY estimates
``pA_lower`` from noisy samples, so each certificate holds with probability at least
``1 - alpha`` over the noise drawn for that input.

Units: inputs are images (or vectors) with pixels in [0, 1]; ``sigma`` and every radius are l2
distances in those pixel units. Noisy inputs are not clipped to [0, 1], as in the theorem.
"""

from __future__ import annotations

import hashlib
import math
import numbers
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats

from gmcert.checks import check_int, check_sigma
from gmcert.confidence import clopper_pearson_lower

__all__ = ["ABSTAIN", "Certificate", "SmoothedClassifier", "radius_cap"]

ABSTAIN = -1


@dataclass(frozen=True)
class Certificate:
    """One input's CERTIFY result; ``radius`` is an l2 distance in pixel units.

    With probability at least ``1 - alpha`` (over the noise), either ``prediction == ABSTAIN``
    (then ``radius == 0.0``) or the smoothed classifier predicts ``prediction`` at every point
    within ``radius`` of the input. ``n_a`` of the ``n`` estimation samples fell in the selected
    class; ``p_a_lower`` is their one-sided Clopper-Pearson lower bound. ``seconds`` is the wall
    time (amortised over the inputs when several are certified together).
    """

    prediction: int
    radius: float
    n_a: int
    p_a_lower: float
    seconds: float
    sigma: float
    n: int
    alpha: float


def radius_cap(sigma: float, n: int, alpha: float) -> float:
    """Largest radius CERTIFY can return with ``n`` samples: ``sigma * Phi^-1(alpha^(1/n))``.

    Reached when all ``n`` estimation samples agree (``nA = n``); e.g. 3.81 sigma for
    ``n = 1e5, alpha = 1e-3``. Report it beside results so that a cap is not read as a result.
    """
    check_sigma(sigma)
    _check_sampling(n=n, alpha=alpha)
    # 1 - alpha^(1/n) without cancellation, then the upper-tail quantile.
    return float(sigma * stats.norm.isf(-math.expm1(math.log(alpha) / n)))


class SmoothedClassifier:
    """Gaussian smoothing of ``base`` with noise std ``sigma`` (pixel units), on ``device``.

    ``base`` maps a batch ``(B, *input_shape)`` of inputs to class scores ``(B, num_classes)``;
    its argmax is the base prediction. It must be in eval mode (batch statistics or dropout
    would make the noisy samples dependent or change the classifier) and live on ``device``.
    ``batch_size`` noisy copies go through ``base`` per forward pass.
    """

    def __init__(
        self,
        base: torch.nn.Module,
        num_classes: int,
        sigma: float,
        *,
        device: str | torch.device = "cpu",
        batch_size: int = 1000,
    ) -> None:
        check_int(num_classes, "num_classes", 2, "at least 2 classes are needed to certify")
        check_int(batch_size, "batch_size", 1, "noisy copies per forward pass")
        check_sigma(sigma)
        self.base = base
        self.num_classes = int(num_classes)
        self.sigma = float(sigma)
        self.device = torch.device(device)
        self.batch_size = int(batch_size)

    # ------------------------------------------------------------------ sampling

    def sample_counts(
        self, xs: torch.Tensor, num: int, *, seeds: Sequence[int] | None = None, stream: int = 0
    ) -> torch.Tensor:
        """Count base predictions on ``num`` noisy copies of each of the ``M`` inputs ``xs``.

        ``xs``: ``(M, *input_shape)``, pixels in [0, 1]. Returns int64 counts ``(M, num_classes)``
        on ``self.device``, without reading anything back to the host.

        The noise of input ``m`` depends only on ``seeds[m]``, ``stream`` and ``num``: copies are
        drawn in blocks of ``batch_size``, each block from a generator seeded by
        (``seeds[m]``, ``stream``, block number). So an input gets the same noise whichever
        other inputs share the call, which makes a run reproducible however it was cut into
        chunks, shards or resumed parts. ``seeds=None`` draws fresh seeds from torch's global
        generator. Blocks of several inputs share a forward pass when ``num < batch_size``.
        """
        check_int(num, "num", 1, "number of noisy samples per input")
        xs = self._to_device(xs)
        self._check_ready()
        m_inputs, k = xs.shape[0], self.num_classes
        if seeds is None:
            seeds = torch.randint(2**62, (m_inputs,)).tolist()
        if len(seeds) != m_inputs:
            raise ValueError(f"got {len(seeds)} seeds for {m_inputs} inputs: give one per input")
        counts = torch.zeros(m_inputs * k, dtype=torch.int64, device=self.device)
        rows = min(self.batch_size, m_inputs * num)
        noise = torch.empty((rows, *xs.shape[1:]), dtype=xs.dtype, device=self.device)
        ones = torch.ones(rows, dtype=torch.int64, device=self.device)
        generator = torch.Generator(self.device)
        with torch.inference_mode():
            for batch in _pack_blocks(m_inputs, num, self.batch_size):
                size = sum(count for _, _, count in batch)
                start = 0
                for owner, block, count in batch:
                    generator.manual_seed(block_seed(seeds[owner], stream, block))
                    noise[start : start + count].normal_(0.0, self.sigma, generator=generator)
                    start += count
                if len(batch) == 1:  # copies of one input: broadcast it, no copy of x
                    first = batch[0][0]
                    noise[:size].add_(xs[first])
                    target = counts[first * k : (first + 1) * k]
                    offset = None
                else:
                    owners, _, sizes = zip(*batch, strict=True)
                    owner = torch.repeat_interleave(
                        torch.tensor(owners, device=self.device),
                        torch.tensor(sizes, device=self.device),
                    )
                    noise[:size].add_(xs.index_select(0, owner))
                    target, offset = counts, owner * k
                scores = self.base(noise[:size])
                if scores.shape != (size, k):
                    raise ValueError(
                        f"base returned scores of shape {tuple(scores.shape)} for {size} inputs; "
                        f"expected ({size}, {k}): set num_classes to the base model's output size"
                    )
                labels = scores.argmax(dim=1)
                if offset is not None:
                    labels += offset
                # index_add_ rather than bincount: CUDA bincount reads min/max back to the host.
                target.index_add_(0, labels, ones[:size])
        return counts.view(m_inputs, k)

    # ------------------------------------------------------------------ CERTIFY / PREDICT

    def certify(self, x: torch.Tensor, **sampling) -> Certificate:
        """CERTIFY one input ``x`` of shape ``input_shape``: :meth:`certify_batch` of a batch of
        one, with the same options (n0, n, alpha) and guarantee; ``seed`` keys its noise."""
        seed = sampling.pop("seed", None)
        seeds = None if seed is None else [seed]
        return self.certify_batch(_as_batch_of_one(x), seeds=seeds, **sampling)[0]

    def certify_batch(
        self,
        xs: torch.Tensor,
        *,
        n0: int = 100,
        n: int = 100_000,
        alpha: float = 0.001,
        seeds: Sequence[int] | None = None,
    ) -> list[Certificate]:
        """CERTIFY each of the ``M`` inputs ``xs`` ``(M, *input_shape)``; one Certificate each
        (docs/theory.md section 4).

        ``n0`` noisy copies select the top class cA; ``n`` fresh copies count ``nA``. With
        probability at least ``1 - alpha`` (for each input separately, not jointly), the
        smoothed classifier predicts cA on the l2 ball of the returned radius (pixel units); it
        abstains when ``pA_lower < 1/2``. Noise is independent across inputs; copies of several
        inputs share forward passes, which pays off when ``n`` is small next to ``batch_size``.
        ``seeds``: one integer per input that alone determines its noise (see
        :meth:`sample_counts`); selection and estimation draw from separate streams.
        """
        check_int(n0, "n0", 1, "selection samples (docs/theory.md section 4 default: 100)")
        _check_sampling(n=n, alpha=alpha)
        started = time.perf_counter()
        if seeds is None:
            seeds = torch.randint(2**62, (len(xs),)).tolist()
        selection = self.sample_counts(xs, n0, seeds=seeds, stream=0)
        c_a = selection.argmax(dim=1)
        estimation = self.sample_counts(xs, n, seeds=seeds, stream=1)
        n_a = estimation.gather(1, c_a.unsqueeze(1)).squeeze(1)
        c_a, n_a = c_a.cpu().numpy(), n_a.cpu().numpy()
        p_a_lower = clopper_pearson_lower(n_a, n, alpha)
        certified = p_a_lower >= 0.5
        radius = np.where(certified, self.sigma * stats.norm.ppf(np.maximum(p_a_lower, 0.5)), 0.0)
        seconds = (time.perf_counter() - started) / len(c_a)
        return [
            Certificate(
                prediction=int(c) if ok else ABSTAIN,
                radius=float(r),
                n_a=int(k),
                p_a_lower=float(p),
                seconds=seconds,
                sigma=self.sigma,
                n=int(n),
                alpha=float(alpha),
            )
            for c, ok, r, k, p in zip(c_a, certified, radius, n_a, p_a_lower, strict=True)
        ]

    def predict(
        self,
        x: torch.Tensor,
        *,
        n: int = 100_000,
        alpha: float = 0.001,
        seed: int | None = None,
    ) -> int:
        """PREDICT for one input ``x``: the smoothed class, or ABSTAIN.

        Two-sided binomial test of the top two counts among ``n`` noisy copies: with probability
        at least ``1 - alpha`` the returned class (if not ABSTAIN) is the smoothed prediction.
        """
        seeds = None if seed is None else [seed]
        return int(self.predict_batch(_as_batch_of_one(x), n=n, alpha=alpha, seeds=seeds)[0])

    def predict_batch(
        self,
        xs: torch.Tensor,
        *,
        n: int = 100_000,
        alpha: float = 0.001,
        seeds: Sequence[int] | None = None,
        stream: int = 0,
    ) -> np.ndarray:
        """PREDICT for each of the ``M`` inputs ``xs``: int64 classes ``(M,)``, ABSTAIN where
        the test is not significant. ``seeds`` and ``stream`` key the noise as in
        :meth:`sample_counts`, so a caller can draw noise independent of CERTIFY's (streams 0
        and 1) by naming another stream. The guarantee holds for each input separately."""
        _check_sampling(n=n, alpha=alpha)
        counts = self.sample_counts(xs, n, seeds=seeds, stream=stream)
        top2 = counts.topk(2, dim=1)
        n_a, n_b = top2.values.cpu().numpy().T
        c_a = top2.indices[:, 0].cpu().numpy()
        # The two-sided binomial test against 1/2 (scipy's binomtest), vectorised: the null
        # law is symmetric, so the p-value is twice the lower tail at the smaller count.
        p_value = np.minimum(1.0, 2.0 * stats.binom.cdf(n_b, n_a + n_b, 0.5))
        return np.where(p_value > alpha, ABSTAIN, c_a).astype(np.int64)

    # ------------------------------------------------------------------ checks

    def _to_device(self, xs: torch.Tensor) -> torch.Tensor:
        if not isinstance(xs, torch.Tensor) or not xs.is_floating_point():
            raise ValueError(
                "inputs must be a floating-point torch.Tensor (pixels in [0, 1]); "
                "convert with torch.as_tensor(x, dtype=torch.float32)"
            )
        if xs.dim() < 2 or xs.shape[0] == 0:
            raise ValueError(
                f"expected a non-empty batch (M, *input_shape), got shape {tuple(xs.shape)}; "
                "use certify(x) for a single input or x.unsqueeze(0)"
            )
        return xs.to(self.device)

    def _check_ready(self) -> None:
        if any(module.training for module in self.base.modules()):
            raise ValueError(
                "base is in training mode (batch norm or dropout would make noisy samples "
                "dependent or random): call base.eval() before smoothing"
            )
        param = next(self.base.parameters(), None)
        if param is not None and param.device.type != self.device.type:
            raise ValueError(
                f"base lives on {param.device} but device is {self.device}: "
                f"call base.to({str(self.device)!r}) or pass device={str(param.device)!r}"
            )


def block_seed(seed: int, stream: int, block: int) -> int:
    """A 63-bit generator seed for one block of one input's noise: a hash, so that nearby
    (seed, stream, block) triples give unrelated streams."""
    key = f"{int(seed)}:{int(stream)}:{int(block)}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1


def _pack_blocks(m_inputs: int, num: int, rows: int) -> list[list[tuple[int, int, int]]]:
    """Forward batches of at most ``rows`` noisy copies, as (input, block, count) triples: input
    m's ``num`` copies are cut into blocks of ``rows`` counted from its own first copy, and whole
    blocks are packed in order, so a block never depends on the other inputs."""
    batches, current, size = [], [], 0
    for owner in range(m_inputs):
        for block, first in enumerate(range(0, num, rows)):
            count = min(rows, num - first)
            if size + count > rows:
                batches.append(current)
                current, size = [], 0
            current.append((owner, block, count))
            size += count
    if current:
        batches.append(current)
    return batches


def _as_batch_of_one(x) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dim() < 1:
        raise ValueError(
            "x must be one input as a torch.Tensor of shape input_shape (no batch dimension); "
            "use certify_batch for a batch"
        )
    return x.unsqueeze(0)


def _check_sampling(*, n, alpha) -> None:
    check_int(n, "n", 1, "estimation samples (docs/theory.md section 4 default: 100000)")
    if not isinstance(alpha, numbers.Real) or not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1) (e.g. 0.001), got {alpha!r}")

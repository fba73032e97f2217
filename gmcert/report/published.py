"""Published certified accuracies (docs/theory.md section 8), for tables side by side.

Cohen, Rosenfeld, Kolter (2019), "Certified Adversarial Robustness via Randomized Smoothing":
CIFAR-10 ResNet-110 and ImageNet ResNet-50, l2 radii in [0, 1] pixel units, per sigma.

Carlini, Tramer, Dvijotham, Rice, Sun, Kolter (ICLR 2023), "(Certified!!) Adversarial
Robustness for Free!": diffusion denoised smoothing of off-the-shelf models. Only the figure
their abstract states (page 1) is here: 71% of ImageNet certified at l2 radius 0.5, the best
over their noise levels, so it is shown beside an ImageNet run of any sigma. Their tables were
not at hand to transcribe; add rows only from the paper itself.
"""

from __future__ import annotations

from dataclasses import dataclass

COHEN_2019 = {
    ("cifar10", 0.25): {0.0: 0.748, 0.25: 0.600, 0.5: 0.428, 0.75: 0.266, 1.0: 0.0},
    ("cifar10", 0.5): {0.0: 0.652, 0.25: 0.546, 0.5: 0.414, 0.75: 0.320, 1.0: 0.234},
    ("imagenet", 0.25): {0.0: 0.67, 0.5: 0.49, 1.0: 0.0, 1.5: 0.0, 2.0: 0.0},
    ("imagenet", 0.5): {0.0: 0.57, 0.5: 0.46, 1.0: 0.37, 1.5: 0.29, 2.0: 0.0},
    ("imagenet", 1.0): {0.0: 0.44, 0.5: 0.38, 1.0: 0.33, 1.5: 0.26, 2.0: 0.19},
}
CARLINI_2023 = {"imagenet": {0.5: 0.71}}
METHOD = "cohen2019_published"
CARLINI_METHOD = "carlini2023_published"


@dataclass(frozen=True)
class PublishedCurve:
    """One paper's certified accuracy by radius (l2, input pixel units), shown beside a run."""

    method: str
    accuracy: dict[float, float]  # radius -> certified accuracy
    norm: str = "l2"
    space: str = "input"


def published_curves(dataset: str, sigma: float) -> list[PublishedCurve]:
    """The published curves for this dataset and sigma (possibly none), to be shown as rows of
    the run's table (:func:`gmcert.report.table.published_table`)."""
    sources = [
        (METHOD, COHEN_2019.get((dataset, float(sigma)))),
        (CARLINI_METHOD, CARLINI_2023.get(dataset)),
    ]
    return [PublishedCurve(method, numbers) for method, numbers in sources if numbers is not None]

"""The labelled data every stage reads (`LabelledData`, its `Split`s) and `build_dataset`, which
builds a dataset from its spec (:mod:`gmcert.data.specs`) and checks it before any stage uses it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from gmcert.data.specs import dataset_spec


@dataclass
class Split:
    """One split of a labelled dataset.

    ``inputs`` is either a float32 array (n, ...) with pixels in [0, 1] or a torch Dataset
    yielding ``(image C,H,W float in [0, 1], label)``; ``indices`` are positions in the
    original split, so that a subset protocol (every 20th image, say) is written out.
    """

    inputs: np.ndarray | torch.utils.data.Dataset
    labels: np.ndarray
    indices: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, positions) -> torch.Tensor:
        """The inputs at ``positions`` as one float tensor (B, *input_shape)."""
        if isinstance(self.inputs, np.ndarray):
            return torch.from_numpy(np.asarray(self.inputs[positions], dtype=np.float32))
        return torch.stack([self.inputs[int(p)][0] for p in positions])

    @property
    def input_dim(self) -> int:
        """Coordinates of one input (C * H * W for images)."""
        return int(np.prod(self.batch([0]).shape[1:]))


@dataclass
class GroundTruth:
    """The exact law P of (x, y), known for synthetic data: fresh draws and log P(x, y)."""

    sample: Callable[[int, int], tuple[np.ndarray, np.ndarray]]  # (n, seed) -> (X, y)
    log_joint: Callable[[np.ndarray, np.ndarray], np.ndarray]  # (X, y) -> log P(x, y), (n,)


def class_log_joint(x, y, priors, class_logpdf) -> np.ndarray:
    """log pi_y + log p(x | y) for each row, with ``class_logpdf(x_k, k)`` the class density."""
    out = np.empty(len(y))
    for k, prior in enumerate(priors):
        idx = y == k
        out[idx] = np.log(prior) + class_logpdf(x[idx], k)
    return out


@dataclass
class LabelledData:
    name: str
    train: Split
    test: Split
    num_classes: int
    class_names: list[str]
    truth: GroundTruth | None = None

    @classmethod
    def from_arrays(cls, name, x_train, y_train, x_test, y_test, num_classes, truth=None):
        """In-memory splits: float32 inputs, int64 labels, indices 0..n-1."""
        return cls(
            name=name,
            train=Split(
                x_train.astype(np.float32), y_train.astype(np.int64), np.arange(len(y_train))
            ),
            test=Split(x_test.astype(np.float32), y_test.astype(np.int64), np.arange(len(y_test))),
            num_classes=num_classes,
            class_names=[str(k) for k in range(num_classes)],
            truth=truth,
        )


def validate_split(split: Split, *, name: str, num_classes: int) -> None:
    """Fail early, with the fix, on the data errors that would otherwise surface deep inside."""
    if len(split) == 0:
        raise ValueError(f"the {name} split is empty; check the dataset root and subset options")
    if isinstance(split.inputs, np.ndarray):
        if len(split.inputs) != len(split.labels):
            raise ValueError(
                f"the {name} split has {len(split.inputs)} inputs but {len(split.labels)} labels"
            )
        bad = ~np.isfinite(split.inputs.reshape(len(split.inputs), -1)).all(axis=1)
        if bad.any():
            rows = np.flatnonzero(bad)[:5].tolist()
            raise ValueError(
                f"the {name} split has {int(bad.sum())} inputs with NaN or inf values "
                f"(first rows: {rows}); clean or drop them before running gmcert"
            )
    labels = np.asarray(split.labels)
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(
            f"the {name} split has labels outside 0..{num_classes - 1}: "
            f"found {labels.min()}..{labels.max()}"
        )
    if name == "train":
        empty = np.flatnonzero(np.bincount(labels, minlength=num_classes) == 0).tolist()
        if empty:
            raise ValueError(
                f"classes {empty} have no samples in the train split, so the mixture cannot "
                "model them; add samples of those classes or drop them from the label set"
            )


def build_dataset(name: str, **options) -> LabelledData:
    """Build the dataset registered as ``name`` and check it before anything uses it."""
    data = dataset_spec(name).build(**options)
    for split_name in ("train", "test"):
        validate_split(getattr(data, split_name), name=split_name, num_classes=data.num_classes)
    return data

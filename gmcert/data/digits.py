"""scikit-learn's bundled digits: the embedded default, runs anywhere with no download."""

from __future__ import annotations

from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from gmcert.data import LabelledData


def build_digits(*, test_size: float = 0.2, split_seed: int = 0) -> LabelledData:
    """scikit-learn's bundled 8x8 digits (1797 images, 10 classes), pixels scaled to [0, 1].

    The train/test split is stratified and fixed by ``split_seed``; inputs are flat (n, 64).
    """
    digits = load_digits()
    x = digits.data / 16.0  # raw pixels are integers 0..16
    x_train, x_test, y_train, y_test = train_test_split(
        x, digits.target, test_size=test_size, stratify=digits.target, random_state=split_seed
    )
    return LabelledData.from_arrays("digits", x_train, y_train, x_test, y_test, 10)

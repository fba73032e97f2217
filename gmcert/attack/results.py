"""What the attack stage returns for one attacked method."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd


@dataclass(frozen=True)
class Attacked:
    """Per attacked point: ``radius`` (attack radius, inf where none was found) by index;
    ``violations``: the points whose certificate the attack beat; ``seconds``; the ``norm``
    and ``space`` it was attacked in; the ``method`` attacked."""

    radius: pd.Series
    violations: list[dict]
    seconds: float
    norm: str
    space: str
    method: str

"""What the attack stage returns: one result per attacked method, and what the write stage
needs of them all (:class:`Findings`)."""

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


@dataclass(frozen=True)
class Findings:
    """The attack stage's results as the write stage takes them (it does not import the attack
    package): ``attack_radius`` per attacked method (by index), for the plot's band; ``flips``,
    every confirmed flip inside a smoothing radius; ``unsound``, the findings that make the run
    UNSOUND (a closed-form certificate beaten at all, smoothing ones beyond what alpha
    allows)."""

    attack_radius: dict[str, pd.Series]
    flips: list[dict]
    unsound: list[dict]

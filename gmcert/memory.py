"""Refuse work that cannot fit in memory before starting it, with the number and a way out."""

from __future__ import annotations

import os

GIB = 1024**3
# Leave room for everything else the process and the machine hold.
USABLE_FRACTION = 0.8


def physical_memory() -> int | None:
    """Bytes of RAM on this machine, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(needed: int, what: str, fix: str) -> None:
    """ValueError when ``needed`` bytes exceed the usable share of this machine's memory."""
    total = physical_memory()
    if total is not None and needed > USABLE_FRACTION * total:
        raise ValueError(
            f"{what} needs about {needed / GIB:,.1f} GiB, more than this machine's "
            f"{total / GIB:,.1f} GiB of memory allows; {fix}"
        )

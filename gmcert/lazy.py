"""Names a package exports but imports only on first use (PEP 562), so that importing the
package (the CLI reads the registries at start-up) loads none of their heavy dependencies."""

from __future__ import annotations

import importlib
import sys


def lazy_exports(package: str, homes: dict[str, str]):
    """``(__getattr__, __dir__)`` for ``package``: each name in ``homes`` (name -> the module
    that defines it) is imported from that module on first access, then kept in the package."""

    def __getattr__(name: str):
        if name not in homes:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(homes[name]), name)
        setattr(sys.modules[package], name, value)  # later lookups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *homes})

    return __getattr__, __dir__

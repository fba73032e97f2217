"""User builders named on the command line as ``package.module:function``.

A builder is how a network that gmcert cannot construct from a weight file alone (arbitrary
code, a checkpoint in another library's format) gets into a run: importing trusted code the
user names is safe in a way that unpickling code from a file is not.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable

__all__ = ["build_module", "call_builder", "import_builder"]


def import_builder(path: str, *, option: str = "denoiser.builder") -> Callable:
    """The callable ``function`` of module ``package.module`` named by ``path``."""
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"{option} must read 'package.module:function', got {path!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ImportError(
            f"{option}={path!r}: cannot import {module_name!r} ({err}); install it or put it on "
            "PYTHONPATH"
        ) from None
    builder = module
    for part in attribute.split("."):
        if not hasattr(builder, part):
            raise ValueError(f"{option}={path!r}: {module_name!r} has no attribute {attribute!r}")
        builder = getattr(builder, part)
    if not callable(builder):
        raise ValueError(f"{option}={path!r} is not callable")
    return builder


def call_builder(builder: Callable, *, sigma: float):
    """``builder(sigma=sigma)`` when it declares a ``sigma`` parameter, else ``builder()``: a
    denoiser tuned to one noise level gets it, others need not declare it. (``**kwargs`` does
    not count: ``nn.Module.__init__`` has it and refuses any keyword.)"""
    try:
        parameters = inspect.signature(builder).parameters
    except (TypeError, ValueError):  # some builtins have no signature: call them bare
        return builder()
    sigma_parameter = parameters.get("sigma")
    takes_sigma = sigma_parameter is not None and sigma_parameter.kind in (
        sigma_parameter.POSITIONAL_OR_KEYWORD,
        sigma_parameter.KEYWORD_ONLY,
    )
    return builder(sigma=sigma) if takes_sigma else builder()


def build_module(options, *, sigma: float, returns: str):
    """The module ``options.builder`` returns, with ``options.weights`` (a state-dict file)
    loaded into it strictly when given; ``returns`` says what the builder must return."""
    from torch import nn

    from gmcert.denoisers.weights import load_module_weights, read_weight_file

    module = call_builder(import_builder(options.builder), sigma=sigma)
    if not isinstance(module, nn.Module):
        raise ValueError(
            f"denoiser.builder={options.builder!r} returned {type(module).__name__}, not a "
            f"torch.nn.Module ({returns})"
        )
    if options.weights is not None:
        load_module_weights(module, read_weight_file(options.weights), source=options.weights)
    return module

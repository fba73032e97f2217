"""Weight files of the pretrained encoders: safe reading, strict loading, torch hub's cache.

Nothing here downloads.  Files are read with ``torch.load(weights_only=True)`` (no pickled
code); torchvision's named weights are looked up where torch hub keeps them
(``<torch.hub.get_dir()>/checkpoints/<file>``), and a missing file is an error that says where
to put it.  ``weights=None`` / "random" builds a randomly initialised network, for tests only.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

_RANDOM_NAMES = ("random", "none", "null", "")
# What a folder passed as a weight file may hold instead: the files to point at.
WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")


def not_a_weight_file(path: Path, option: str, expected: str) -> str | None:
    """None when ``path`` is a regular file; else one line saying what it is instead (a
    folder, with the weight files in it; a dangling link; a pipe or device; nothing), what
    ``option`` expects, and how to fix it."""
    if path.is_file():
        return None
    if path.is_dir():
        inside = sorted(p.name for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES)[:5]
        hint = f"; it holds {', '.join(inside)}: point {option} at one of them" if inside else ""
        return f"{option}={path} is a folder, but {expected} is expected{hint}"
    if path.is_symlink():
        return (
            f"{option}={path} is a link to {path.readlink()}, which does not exist; "
            f"{expected} is expected"
        )
    if path.exists():
        return (
            f"{option}={path} is not a regular file (a pipe, socket or device); "
            f"{expected} is expected"
        )
    return f"{option}={path} does not exist; {expected} is expected"


STATE_DICT_FILE = "a weight file (a state dict saved with torch.save(model.state_dict(), 'x.pth'))"


def is_random(weights: str | Path | None) -> bool:
    return weights is None or (isinstance(weights, str) and weights.lower() in _RANDOM_NAMES)


def warn_random(name: str) -> None:
    log.warning(
        "%s: RANDOMLY INITIALISED weights (weights=None/'random'). Latents from a random "
        "network are for tests only; this is NOT a real experiment.",
        name,
    )


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a weight file safely (``torch.load(weights_only=True)``) into a flat state dict.

    Accepts a plain state dict or a checkpoint dict holding one under "state_dict", "model",
    "model_state_dict" or "module"; strips the prefixes that DataParallel/DDP ("module."),
    torch.compile ("_orig_mod.") and this package's wrapper ("backbone.") add to every key.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a tensor state dict loadable with weights_only=True.
    """
    p = Path(path).expanduser()
    problem = not_a_weight_file(p, "encoder.weights", STATE_DICT_FILE)
    if problem:
        error = FileNotFoundError if not p.exists() and not p.is_symlink() else ValueError
        raise error(
            f"{problem}. Fix: set encoder.weights=/path/to/file.pth to an existing state-dict "
            "file, 'default' for torchvision's cached weights, or 'random'"
        )
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except OSError:
        raise
    except Exception:  # a text file fails with KeyError, a damaged one with others
        raise ValueError(
            f"cannot read {p} as a weight file: torch.load(weights_only=True) refuses it (a "
            "text or damaged file, or one holding pickled objects). gmcert only loads plain "
            "tensor state dicts (no pickled code, for safety); re-save it with "
            "torch.save(model.state_dict(), path)"
        ) from None
    for _ in range(3):  # checkpoints nest at most a couple of levels
        if isinstance(obj, dict) and not _is_tensor_dict(obj):
            inner = next(
                (
                    obj[k]
                    for k in ("state_dict", "model", "model_state_dict", "module")
                    if isinstance(obj.get(k), dict)
                ),
                None,
            )
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, dict) or not _is_tensor_dict(obj):
        raise ValueError(
            f"{p} holds no tensor state dict (top-level keys: {_preview(obj)}); expected "
            "{name: tensor} or a checkpoint with a 'state_dict'/'model' entry"
        )
    state = dict(obj)
    for prefix in ("module.", "_orig_mod.", "backbone."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _is_tensor_dict(obj: dict) -> bool:
    return bool(obj) and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())


def _preview(obj: Any) -> str:
    if isinstance(obj, dict):
        keys = list(obj)[:6]
        return ", ".join(map(repr, keys)) + (" ..." if len(obj) > 6 else "")
    return type(obj).__name__


def load_backbone_weights(
    backbone: nn.Module,
    state: dict[str, Tensor],
    *,
    name: str,
    source: str,
    head_prefixes: Sequence[str] = (),
) -> None:
    """Load ``state`` into ``backbone`` strictly, ignoring classifier-head keys.

    The encoder replaces the classifier head by Identity, so keys under ``head_prefixes``
    (e.g. "fc." for ResNet, "heads." for ViT) are dropped.  Any other missing, unexpected or
    mis-shaped key raises ValueError naming them: a partial load would silently leave random
    layers inside a "pretrained" encoder.
    """
    state = {k: v for k, v in state.items() if not k.startswith(tuple(head_prefixes))}
    mismatch = state_dict_mismatch(backbone, state)
    if mismatch:
        raise ValueError(
            f"{name}: weights from {source} do not fit this architecture ({mismatch}). "
            f"Check that the file is a {name} checkpoint and that image_size matches the size "
            "it was trained at (ViT position embeddings depend on it)."
        )
    backbone.load_state_dict(state, strict=True)


def state_dict_mismatch(module: nn.Module, state: dict[str, Tensor]) -> str | None:
    """How ``state`` fails to fit ``module`` exactly (missing, unexpected and mis-shaped keys,
    five of each named), or None when it fits: a partial load would leave random layers."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(state) & set(expected)
        if state[k].shape != expected[k].shape
    )
    parts = []
    for label, items in (
        ("missing", missing),
        ("unexpected", unexpected),
        ("shape mismatch", mismatched),
    ):
        if items:
            more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
            parts.append(f"{label}: {', '.join(items[:5])}{more}")
    return "; ".join(parts) or None


def torchvision_weights_path(url: str) -> Path:
    """Where torch hub keeps the file from ``url``: <torch.hub.get_dir()>/checkpoints/<name>."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name


def resolve_torchvision_weights(
    name: str, weights: str | Path, enum_cls: Any
) -> tuple[Any | None, Path]:
    """Map ``weights`` to (torchvision enum or None, local file) without downloading anything.

    "default" -> enum_cls.DEFAULT; an enum member name ("IMAGENET1K_V1") -> that member; both
    are looked up in torch hub's cache.  Anything else is a path to a local file.
    """
    if isinstance(weights, str):
        key = weights.strip()
        member = None
        if key.lower() == "default":
            member = enum_cls.DEFAULT
        elif key.upper() in enum_cls.__members__:
            member = enum_cls[key.upper()]
        if member is not None:
            path = torchvision_weights_path(member.url)
            if not path.is_file():
                raise FileNotFoundError(
                    f"{name}: weights={weights!r} means torchvision's {enum_cls.__name__}."
                    f"{member.name}, expected in torch hub's cache at {path} (torch.hub.get_dir()"
                    f" = {torch.hub.get_dir()}, set by $TORCH_HOME), but that file is missing and "
                    f"gmcert never downloads. Fix: download {member.url} to {path} (e.g. on a "
                    "machine with internet, then copy it), or pass a local file with "
                    "encoder.weights=/path/to/file.pth, or weights=random for a smoke test."
                )
            return member, path
    path = Path(weights).expanduser()
    if not path.exists() and isinstance(weights, str) and not any(c in weights for c in "/\\."):
        raise FileNotFoundError(
            f"{name}: weights={weights!r} is neither an existing file nor a known name; use "
            f"'default', one of {sorted(enum_cls.__members__)}, 'random', or a path "
            "(encoder.weights=/path/to/file.pth)"
        )
    if path.exists() or path.is_symlink():  # a folder, pipe or dangling link: refused up front
        problem = not_a_weight_file(path, "encoder.weights", STATE_DICT_FILE)
        if problem:
            raise ValueError(f"{name}: {problem}")
    return None, path


__all__ = [
    "STATE_DICT_FILE",
    "is_random",
    "load_backbone_weights",
    "not_a_weight_file",
    "read_state_dict",
    "resolve_torchvision_weights",
    "torchvision_weights_path",
    "warn_random",
]

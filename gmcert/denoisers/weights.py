"""Weight files of denoisers: diffusers model folders and state dicts, read locally and safely.

Nothing here downloads. A ``.safetensors`` file holds tensors only; any other file goes
through ``torch.load(weights_only=True)``, which refuses pickled code (a file that would run
code when unpickled is an error, and the code does not run). A missing file is an error that
says what to put where.

A diffusers folder is what ``save_pretrained`` writes, in one of two layouts:

    DIR/config.json                              the UNet2DModel's config
    DIR/diffusion_pytorch_model.safetensors      (or diffusion_pytorch_model.bin)
    DIR/scheduler_config.json                    optional: the noise schedule

or a whole pipeline's, ``DIR/unet/{config.json, diffusion_pytorch_model.*}`` and
``DIR/scheduler/scheduler_config.json``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from torch import Tensor, nn

from gmcert.encoders.weights import not_a_weight_file, state_dict_mismatch

__all__ = [
    "DIFFUSERS_MISSING",
    "FOLDER_HINT",
    "import_diffusers",
    "load_module_weights",
    "load_unet_folder",
    "read_weight_file",
]

DIFFUSERS_MISSING = (
    'denoiser=diffusion needs the optional package diffusers: pip install -e ".[diffusion]"'
)
CHECKPOINT_KEYS = ("state_dict", "model", "ema")
WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
FOLDER_HINT = (
    "denoiser=diffusion reads a diffusers UNet2DModel folder from this machine (nothing is "
    "downloaded): DIR/config.json, DIR/diffusion_pytorch_model.safetensors (or .bin) and "
    "optionally DIR/scheduler_config.json (else DDPM's linear schedule), or a pipeline folder "
    "with DIR/unet/ and DIR/scheduler/. For CIFAR-10, make one on a machine with internet from "
    'the model google/ddpm-cifar10-32: python -c "from diffusers import DDPMPipeline; '
    "DDPMPipeline.from_pretrained('google/ddpm-cifar10-32').save_pretrained('DIR')\", copy DIR "
    "here and pass denoiser.weights=DIR. A checkpoint in another format (e.g. guided-diffusion's "
    "256x256_diffusion_uncond.pt for ImageNet): denoiser.builder=package.module:function "
    "returning the network, with denoiser.weights=/path/to/its/state_dict"
)


def import_diffusers():
    """The diffusers package, imported only when a diffusion denoiser is asked for."""
    try:
        import diffusers
    except ImportError:
        raise ImportError(DIFFUSERS_MISSING) from None
    return diffusers


def read_weight_file(path: str | Path) -> dict[str, Tensor]:
    """A state dict from ``path``: safetensors, or ``torch.load(weights_only=True)``.

    Raises FileNotFoundError when there is no such file and ValueError when it holds
    anything but tensors (pickled code included).
    """
    path = Path(path).expanduser()
    problem = not_a_weight_file(
        path, "denoiser.weights", "a weight file (.safetensors, or a state dict saved by torch)"
    )
    if problem:
        error = FileNotFoundError if not path.exists() and not path.is_symlink() else ValueError
        raise error(problem)
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise ImportError(
                f"reading {path} needs safetensors: pip install safetensors"
            ) from None
        try:
            return load_file(str(path))
        except Exception as err:  # safetensors raises its own error types
            raise ValueError(f"cannot read {path} as a safetensors file: {err}") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise
    except Exception as err:  # a text file fails with KeyError, a damaged one with others
        raise ValueError(
            f"refused {path}: torch.load(weights_only=True) cannot read it ({_reason(err)}); "
            "gmcert never unpickles code from a weight file. Re-save the weights as a plain "
            "state dict, torch.save(module.state_dict(), path), or as .safetensors"
        ) from None
    if isinstance(obj, dict) and not _is_tensor_dict(obj):  # a training checkpoint
        obj = next((obj[k] for k in CHECKPOINT_KEYS if _is_tensor_dict(obj.get(k))), obj)
    if not _is_tensor_dict(obj):
        raise ValueError(
            f"{path} holds no state dict {{name: tensor}} (nor one under {list(CHECKPOINT_KEYS)})"
        )
    return dict(obj)


def _is_tensor_dict(obj) -> bool:
    return (
        isinstance(obj, dict)
        and bool(obj)
        and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())
    )


def _reason(err: Exception) -> str:
    """What torch refused (e.g. the global a pickled payload would have called), without the
    rest of its message, which suggests allowlisting it."""
    found = re.search(r"Unsupported (global: GLOBAL \S+|operand \d+)", str(err))
    if found:
        return found.group(0)
    return next(
        (line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__
    )


def load_module_weights(module: nn.Module, state: dict[str, Tensor], *, source: str) -> None:
    """Load ``state`` into ``module`` strictly: a partial load would leave random layers in a
    "pretrained" denoiser, so any missing, unexpected or mis-shaped key is a ValueError."""
    mismatch = state_dict_mismatch(module, state)
    if mismatch:
        raise ValueError(
            f"denoiser weights from {source} do not fit the network ({mismatch}); check "
            "that the weights and the config (or builder) describe the same model"
        )
    module.load_state_dict(state, strict=True)


def load_unet_folder(weights: str | Path) -> tuple[nn.Module, dict | None]:
    """A diffusers ``UNet2DModel`` and its folder's scheduler config (None if it has none).

    ``weights``: a diffusers folder (module docstring), or a weight file inside one (then that
    file is read instead of the folder's default names). The config is read as JSON and the
    weights by :func:`read_weight_file`; diffusers' own loader, which can fetch from the Hub,
    is never called.
    """
    path = Path(weights).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"denoiser.weights={path}: no such folder or file. {FOLDER_HINT}")
    weight_file = path if path.is_file() else None
    folder = path.parent if weight_file else path
    unet_dir, scheduler_dir = folder, folder
    if weight_file is None and (folder / "unet" / "config.json").is_file():
        unet_dir, scheduler_dir = folder / "unet", folder / "scheduler"
    config_file = unet_dir / "config.json"
    if not config_file.is_file():
        what = "is not a file" if config_file.exists() else "is missing"
        raise FileNotFoundError(f"denoiser.weights={path}: {config_file} {what}. {FOLDER_HINT}")
    if weight_file is None:
        weight_file = next((unet_dir / n for n in WEIGHT_NAMES if (unet_dir / n).is_file()), None)
        if weight_file is None:
            raise FileNotFoundError(
                f"denoiser.weights={path}: no {' or '.join(WEIGHT_NAMES)} in {unet_dir}. "
                f"{FOLDER_HINT}"
            )
    config = _read_json(config_file)
    kind = config.get("_class_name", "UNet2DModel")
    if kind != "UNet2DModel":
        raise ValueError(
            f"{config_file} describes a {kind}; denoiser=diffusion reads UNet2DModel folders "
            "(unconditional pixel-space models). For another network use "
            "denoiser.builder=package.module:function"
        )
    diffusers = import_diffusers()
    network = diffusers.UNet2DModel.from_config(config)
    state = read_weight_file(weight_file)
    # Checkpoints saved by early diffusers versions name attention weights differently;
    # diffusers renames them in place when it loads, and so do we.
    rename = getattr(network, "_fix_state_dict_keys_on_load", None)
    if rename is not None:
        state = rename(dict(state)) or state
    load_module_weights(network, state, source=str(weight_file))
    scheduler_file = scheduler_dir / "scheduler_config.json"
    return network, _read_json(scheduler_file) if scheduler_file.is_file() else None


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read {path} as JSON: {err}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(value).__name__}")
    return value

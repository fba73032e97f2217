"""Before any work: every input a run needs that is not on this machine, named at once.

Each check reads only the file system (no data is decoded, no model built), so a paper-scale
run missing its dataset, its encoder weights and its denoiser says so for all three in its
first second, instead of one per attempt.
"""

from __future__ import annotations

from omegaconf import OmegaConf

from gmcert.data.arrays import check_arrays_present
from gmcert.data.cifar10 import check_cifar10_present
from gmcert.data.folder import check_folder_present
from gmcert.data.idx import check_idx_present
from gmcert.data.imagenet import check_imagenet_present
from gmcert.denoisers import check_denoiser_present
from gmcert.encoders.torchvision_models import check_weights_present

_DATASET_CHECKS = {
    "cifar10": check_cifar10_present,
    "imagenet": check_imagenet_present,
    "fashion_mnist": check_idx_present,
    "mnist": check_idx_present,
    "folder": check_folder_present,
    "arrays": check_arrays_present,
}


def check_inputs_present(cfg) -> None:
    """FileNotFoundError listing each missing input (data, encoder weights, denoiser)."""
    dataset = OmegaConf.to_container(cfg.dataset, resolve=True)
    encoder = OmegaConf.to_container(cfg.encoder, resolve=True)
    checks = [
        lambda: _DATASET_CHECKS.get(dataset["name"], lambda **_: None)(**dataset),
        lambda: check_weights_present(encoder["name"], weights=encoder.get("weights")),
        lambda: check_denoiser_present(cfg.denoiser),
    ]
    missing = []
    for check in checks:
        try:
            check()
        except FileNotFoundError as err:
            missing.append(str(err))
    if len(missing) == 1:
        raise FileNotFoundError(missing[0])
    if missing:
        listed = "\n".join(f"  {i}. {text}" for i, text in enumerate(missing, 1))
        raise FileNotFoundError(f"{len(missing)} inputs of this run are missing:\n{listed}")

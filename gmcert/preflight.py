"""Before any work: every input a run needs that is not on this machine, named at once.

Each check reads only the file system (no data is decoded, no model built), so a paper-scale
run missing its dataset, its encoder weights and its denoiser says so for all three in its
first second, instead of one per attempt.
"""

from __future__ import annotations

from omegaconf import OmegaConf

from gmcert.data.specs import dataset_spec
from gmcert.denoisers import check_denoiser_present
from gmcert.encoders.specs import encoder_spec


def check_inputs_present(cfg) -> None:
    """FileNotFoundError listing each missing input (data, encoder weights, denoiser)."""
    dataset = OmegaConf.to_container(cfg.dataset, resolve=True)
    encoder = OmegaConf.to_container(cfg.encoder, resolve=True)
    checks = [
        lambda: dataset_spec(dataset["name"]).preflight(**dataset),
        lambda: encoder_spec(encoder["name"]).preflight(**encoder),
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

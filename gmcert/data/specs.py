"""One spec per dataset: its name, typed options, builder and preflight check, in one registry.

Everything that needs to know about a dataset reads its :class:`DatasetSpec` from
:data:`DATASETS`: :func:`gmcert.data.build_dataset` builds it, :mod:`gmcert.preflight` checks
its files are there before any work, and :func:`gmcert.config.register_configs` registers its
schema. A dataset's module is imported only when the dataset is built or checked, so reading
the registry (the CLI does, for its help) costs no torchvision or decoder import.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from gmcert.data import schemas

__all__ = ["DATASETS", "DatasetSpec", "dataset_spec"]


def nothing_to_check(**_options) -> None:
    """The preflight of a dataset that is generated or bundled: nothing on disk to look for."""


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset as the rest of gmcert sees it.

    ``build(**options)`` returns its :class:`~gmcert.data.LabelledData` from the options of
    ``schema`` without ``name``; ``preflight(**options)`` (the run's dataset options, ``name``
    included, which the IDX check needs), where the dataset reads files, raises
    ``FileNotFoundError`` naming what is missing and how to get it, reading only the file
    system (generated or bundled data have nothing to check).
    """

    name: str
    schema: type  # its options; configs/dataset/<name>.yaml extends schema_<name>
    build: Callable
    preflight: Callable = nothing_to_check

    @property
    def schema_name(self) -> str:
        return self.name


def _lazy(module: str, function: str) -> Callable:
    """``gmcert.data.<module>.<function>``, imported on the first call."""

    def call(**options):
        return getattr(importlib.import_module(f"gmcert.data.{module}"), function)(**options)

    return call


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec("digits", schemas.DigitsConfig, _lazy("digits", "build_digits")),
        DatasetSpec("synthetic", schemas.SyntheticConfig, _lazy("synthetic", "build_synthetic")),
        DatasetSpec("distorted", schemas.DistortedConfig, _lazy("student_t", "build_distorted")),
        DatasetSpec(
            "cifar10",
            schemas.Cifar10Config,
            _lazy("cifar10", "build_cifar10"),
            preflight=_lazy("cifar10", "check_cifar10_present"),
        ),
        DatasetSpec(
            "imagenet",
            schemas.ImageNetConfig,
            _lazy("imagenet", "build_imagenet"),
            preflight=_lazy("imagenet", "check_imagenet_present"),
        ),
        DatasetSpec(
            "fashion_mnist",
            schemas.FashionMNISTConfig,
            _lazy("idx", "build_fashion_mnist"),
            preflight=_lazy("idx", "check_idx_present"),
        ),
        DatasetSpec(
            "mnist",
            schemas.MNISTConfig,
            _lazy("idx", "build_mnist"),
            preflight=_lazy("idx", "check_idx_present"),
        ),
        DatasetSpec(
            "folder",
            schemas.FolderConfig,
            _lazy("folder", "build_folder"),
            preflight=_lazy("folder", "check_folder_present"),
        ),
        DatasetSpec(
            "arrays",
            schemas.ArraysConfig,
            _lazy("arrays", "build_arrays"),
            preflight=_lazy("arrays", "check_arrays_present"),
        ),
    )
}


def dataset_spec(name: str) -> DatasetSpec:
    """The spec registered as ``name``; ``ValueError`` listing the valid names otherwise."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
    return DATASETS[name]

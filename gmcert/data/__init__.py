"""Datasets: the labelled data every stage reads and one spec per dataset.

:mod:`~gmcert.data.labelled` holds :class:`LabelledData` (its two :class:`Split`, the optional
:class:`GroundTruth`) and :func:`build_dataset`; :mod:`~gmcert.data.specs` the registry
:data:`DATASETS` (each dataset's schema, builder and preflight check), :mod:`~gmcert.data.schemas`
the schemas; one module per source builds it (``digits``, ``synthetic``, ``student_t``,
``cifar10``, ``imagenet``, ``idx``, ``folder``, ``arrays``; ``images`` and ``digest`` serve
them).

The names of :mod:`~gmcert.data.labelled` are imported on first use (PEP 562), so that reading
the registry (the CLI does, to register the schemas) loads neither numpy nor torch.
"""

from __future__ import annotations

from gmcert.data.specs import DATASETS, DatasetSpec, dataset_spec
from gmcert.lazy import lazy_exports

_LABELLED = (
    "GroundTruth",
    "LabelledData",
    "Split",
    "build_dataset",
    "class_log_joint",
    "validate_split",
)


__getattr__, __dir__ = lazy_exports(__name__, dict.fromkeys(_LABELLED, "gmcert.data.labelled"))


__all__ = ["DATASETS", "DatasetSpec", "dataset_spec", *_LABELLED]

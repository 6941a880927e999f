"""Deterministic, torch-free preprocessing driven by a :class:`Plan`.

The same :func:`preprocess_image` runs at training and at inference. The dataset side
(cases, cohorts, fingerprints: it imports :mod:`medai.data` with pandas and
matplotlib) is loaded on first use, so the runtime that only preprocesses one study
starts fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from medai._lazy import load_lazy
from medai.preprocess.pipeline import (
    GridRecord,
    Preprocessed,
    load_preprocessed,
    preprocess_case,
    preprocess_cohort,
    preprocess_image,
)
from medai.preprocess.plan import (
    Architecture,
    InferencePlan,
    LossKind,
    NetworkPlan,
    Normalisation,
    Plan,
    PreprocessPlan,
    TrainPlan,
    apply_overrides,
    load_plan,
    parse_duration,
    parse_overrides,
    save_plan,
)
from medai.preprocess.steps import (
    crop,
    foreground_bbox,
    foreground_mask,
    reorient_to_ras,
    resample_to_grid,
    resample_to_spacing,
    uncrop,
    zscore_in_mask,
)

if TYPE_CHECKING:
    from medai.preprocess.cases import BRATS_REGIONS, SegCase, SegCohort, as_cohort
    from medai.preprocess.fingerprint import ChannelStats, Fingerprint, compute_fingerprint

__all__ = [
    "BRATS_REGIONS",
    "Architecture",
    "ChannelStats",
    "Fingerprint",
    "GridRecord",
    "InferencePlan",
    "LossKind",
    "NetworkPlan",
    "Normalisation",
    "Plan",
    "PreprocessPlan",
    "Preprocessed",
    "SegCase",
    "SegCohort",
    "TrainPlan",
    "apply_overrides",
    "as_cohort",
    "compute_fingerprint",
    "crop",
    "foreground_bbox",
    "foreground_mask",
    "load_plan",
    "load_preprocessed",
    "parse_duration",
    "parse_overrides",
    "preprocess_case",
    "preprocess_cohort",
    "preprocess_image",
    "reorient_to_ras",
    "resample_to_grid",
    "resample_to_spacing",
    "save_plan",
    "uncrop",
    "zscore_in_mask",
]

# the dataset side's names, and the module holding each
_DATASET_SIDE = {
    "BRATS_REGIONS": "medai.preprocess.cases",
    "SegCase": "medai.preprocess.cases",
    "SegCohort": "medai.preprocess.cases",
    "as_cohort": "medai.preprocess.cases",
    "ChannelStats": "medai.preprocess.fingerprint",
    "Fingerprint": "medai.preprocess.fingerprint",
    "compute_fingerprint": "medai.preprocess.fingerprint",
}


def __getattr__(name: str) -> Any:
    """The dataset side's names, imported when first asked for (PEP 562)."""
    return load_lazy(__name__, _DATASET_SIDE, globals(), name)

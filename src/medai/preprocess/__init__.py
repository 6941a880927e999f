"""Deterministic, torch-free preprocessing driven by a :class:`Plan`.

The same :func:`preprocess_image` runs at training and at inference.
"""

from medai.preprocess.cases import BRATS_REGIONS, SegCase, SegCohort, as_cohort
from medai.preprocess.fingerprint import ChannelStats, Fingerprint, compute_fingerprint
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

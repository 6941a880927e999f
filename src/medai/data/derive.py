"""Classification and regression datasets derived from a segmentation cohort.

Every derived dataset keeps the patients, the patient-level splits and the label maps
of its parent, so evaluation can still point at the tumour (pointing game):

- :func:`target_dataset`: the same 3D cases with a target from a clinical column
  (``grade`` HGG/LGG classification, ``age`` regression: the synthetic cohort's
  atrophy grows with age, so age is visible in the images).
- :func:`tumour_location`: the same 3D cases, classed by where the tumour lies.
- :func:`slice_dataset`: 2D axial slices with and without tumour, written to disk.

Example:
    >>> grade = target_dataset(ds, column="grade", task=TaskType.CLASSIFICATION)  # doctest: +SKIP
    >>> slices = slice_dataset(ds, "cohort_slices", slices_per_case=6)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
from numpy.typing import NDArray

from medai.data.derive_slices import nonzero_mask, slice_dataset
from medai.data.manifest import Case, Dataset, TaskType
from medai.errors import ConfigError, DatasetError

__all__ = [
    "LOCATION_CLASSES",
    "location_class",
    "slice_dataset",
    "target_dataset",
    "tumour_location",
]

logger = logging.getLogger(__name__)

#: Classes of :func:`tumour_location`: hemisphere, then front or back half.
LOCATION_CLASSES: tuple[str, ...] = (
    "left-anterior",
    "left-posterior",
    "right-anterior",
    "right-posterior",
)


# -- targets from clinical columns ----------------------------------------------------
def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _column_values(dataset: Dataset, column: str) -> dict[str, Any]:
    """Case id → ``case.clinical[column]``; a :class:`DatasetError` if any is missing."""
    lacking = [c.case_id for c in dataset.cases if _missing(c.clinical.get(column))]
    if lacking or not dataset.cases:
        known = sorted({k for c in dataset.cases for k in c.clinical})
        raise DatasetError(
            f"dataset {dataset.name!r}: clinical column {column!r} is missing or empty for "
            f"{len(lacking)} of {len(dataset.cases)} case(s) (e.g. {lacking[:3]}); "
            f"available columns: {known}; attach a clinical CSV or pick another column"
        )
    return {c.case_id: c.clinical[column] for c in dataset.cases}


def _regression_targets(values: dict[str, Any], column: str) -> dict[str, float]:
    targets: dict[str, float] = {}
    for case_id, value in values.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number):
            raise DatasetError(
                f"case {case_id!r}: clinical {column!r} = {value!r} is not a finite number; "
                "a regression target must be numeric (use task=classification for categories)"
            )
        targets[case_id] = number
    return targets


def _class_targets(
    values: dict[str, Any], column: str, classes: list[str] | None
) -> tuple[dict[str, str], list[str]]:
    targets = {case_id: str(value) for case_id, value in values.items()}
    found = sorted(set(targets.values()))
    chosen = list(classes) if classes is not None else found
    if len(set(chosen)) != len(chosen) or len(chosen) < 2:
        raise ConfigError(f"classes must be at least two distinct names; got {chosen}")
    unknown = sorted(set(found) - set(chosen))
    if unknown:
        raise DatasetError(
            f"clinical {column!r} holds {unknown}, not among classes {chosen}; "
            "add them to classes or leave classes unset (sorted unique values)"
        )
    return targets, chosen


def target_dataset(
    dataset: Dataset,
    *,
    column: str,
    task: TaskType | str,
    classes: list[str] | None = None,
    name: str | None = None,
) -> Dataset:
    """The same 3D cases with ``target`` taken from ``case.clinical[column]``.

    Images, channels, label maps (for the pointing game), labels, regions, clinical
    columns and splits are kept; case ids are unchanged.

    Args:
        dataset: The parent (segmentation) dataset.
        column: Clinical column holding the target (``"grade"``, ``"age"``, ...).
        task: ``classification`` (targets are ``str(value)``) or ``regression``
            (targets are floats).
        classes: Class names in output order (classification only); default the
            sorted unique values.
        name: Name of the new dataset; default ``"<parent>-<column>"``.

    Raises:
        DatasetError: If a case lacks ``column`` (the message lists the columns
            available), a regression value is not numeric, or a class value is not in
            ``classes``.
        ConfigError: If ``task`` is segmentation, or ``classes`` is given for regression
            or holds fewer than two distinct names.
    """
    task = TaskType(task)
    if task is TaskType.SEGMENTATION:
        raise ConfigError("task must be classification or regression; got segmentation")
    if task is TaskType.REGRESSION and classes is not None:
        raise ConfigError(f"classes are for classification; got {classes} with regression")
    values = _column_values(dataset, column)
    chosen: list[str] = []
    targets: dict[str, Any]
    if task is TaskType.CLASSIFICATION:
        targets, chosen = _class_targets(values, column, classes)
    else:
        targets = _regression_targets(values, column)
    cases = [c.model_copy(update={"target": targets[c.case_id]}) for c in dataset.cases]
    what = f"{task.value} of clinical {column!r}"
    return _derived(dataset, name or f"{dataset.name}-{column}", what, task, chosen, cases)


def _derived(
    parent: Dataset, name: str, what: str, task: TaskType, classes: list[str], cases: list[Case]
) -> Dataset:
    return Dataset(
        name=name,
        description=f"{what}, derived from {parent.name!r}",
        task=task,
        channels=list(parent.channels),
        labels=dict(parent.labels),
        regions={k: list(v) for k, v in parent.regions.items()},
        classes=classes,
        cases=cases,
        splits=parent.splits.model_copy(deep=True),
    )


# -- tumour location ------------------------------------------------------------------
def _world_centroid(mask: NDArray[np.bool_], affine: NDArray[np.float64]) -> NDArray[np.float64]:
    ijk = np.argwhere(mask).mean(axis=0)
    return np.asarray(affine[:3, :3] @ ijk + affine[:3, 3], dtype=np.float64)


def location_class(offset_mm: NDArray[np.float64] | list[float]) -> str:
    """The :data:`LOCATION_CLASSES` name of a tumour ``offset_mm`` (RAS+ mm) from the
    brain's centre: right when ``x > 0``, anterior when ``y > 0`` (ties: left, posterior)."""
    side = "right" if offset_mm[0] > 0 else "left"
    half = "anterior" if offset_mm[1] > 0 else "posterior"
    return f"{side}-{half}"


def _location(dataset: Dataset, case: Case) -> tuple[str, list[float]]:
    label = dataset.load_case_label(case)
    if label is None:
        raise DatasetError(f"case {case.case_id!r} has no label map; tumour_location needs one")
    tumour = label.array[0] > 0
    if not tumour.any():
        raise DatasetError(
            f"case {case.case_id!r}: label map {case.label} has no tumour voxel; "
            "drop the case before deriving tumour locations"
        )
    image = dataset.load_case_image(case)
    brain = nonzero_mask(image)
    if brain.all():
        logger.warning(
            "case %s: image has no zero background (not skull-stripped?); the brain's "
            "centre is taken as the centre of the field of view",
            case.case_id,
        )
    offset = _world_centroid(tumour, label.affine) - _world_centroid(brain, image.affine)
    rounded = [round(float(v), 2) for v in offset]  # what is stored decides the class
    return location_class(rounded), rounded


def tumour_location(dataset: Dataset, *, name: str | None = None) -> Dataset:
    """The same 3D cases classed by where the tumour lies (:data:`LOCATION_CLASSES`).

    Convention: the whole tumour's centroid (label > 0) and the brain's centroid (voxels
    non-zero in any image channel) are taken in world RAS+ millimetres (``+x`` is the
    patient's right, ``+y`` anterior), each from its own file's affine; the class is the
    sign of their difference in ``x`` (left/right hemisphere) and ``y`` (posterior/anterior
    half), ties going left and posterior. Head rotation is not corrected. The offset is
    kept in ``clinical["tumour_offset_mm"]`` as ``[x, y, z]``.

    Raises:
        DatasetError: If a case has no label map or an empty one, or a file is missing.
    """
    cases = []
    for case in dataset.cases:
        target, offset = _location(dataset, case)
        clinical = {**case.clinical, "tumour_offset_mm": offset}
        cases.append(case.model_copy(update={"target": target, "clinical": clinical}))
    what = "tumour location (hemisphere, front/back half)"
    return _derived(
        dataset,
        name or f"{dataset.name}-location",
        what,
        TaskType.CLASSIFICATION,
        list(LOCATION_CLASSES),
        cases,
    )

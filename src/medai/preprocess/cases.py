"""The one adapter between the dataset layer and the segmentation pipeline.

:func:`as_cohort` turns a ``medai.data.Dataset``, or any path
:func:`medai.data.import_dataset` reads (an MSD folder, a saved manifest, a BraTS or
nnU-Net folder), into a :class:`SegCohort`: case ids, channel names, labels, regions,
the train/validation/test split, and loaders returning geometry-carrying images.
Parsing and label semantics belong to the data layer: one ``dataset.json`` parser
(:func:`medai.data.import_msd`) and one region rule
(:func:`medai.data.resolve_regions`), used here as everywhere else.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from medai.data import Case, Dataset, TaskType, import_dataset
from medai.data.semantics import MSD_BRAIN_REGIONS
from medai.errors import DatasetError
from medai.fsutil import file_sha256
from medai.image import LabelMap, ScalarImage

__all__ = ["BRATS_REGIONS", "SegCase", "SegCohort", "as_cohort"]

#: The nested WT/TC/ET regions in MSD numbering: the data layer's
#: :data:`medai.data.MSD_BRAIN_REGIONS` under the name this package has exported.
BRATS_REGIONS: dict[str, list[int]] = MSD_BRAIN_REGIONS


@dataclass(frozen=True)
class SegCase:
    """One case: an id, loaders for its image and label, and a content key."""

    case_id: str
    load_image: Callable[[], ScalarImage]
    load_label: Callable[[], LabelMap | None]
    content_key: Callable[[], str]
    has_label: bool = True


@dataclass
class SegCohort:
    """Cases plus what the pipeline needs to know about them."""

    cases: list[SegCase]
    channels: list[str]
    labels: dict[int, str]
    regions: dict[str, list[int]]
    train_ids: list[str] = field(default_factory=list)
    val_ids: list[str] = field(default_factory=list)
    test_ids: list[str] = field(default_factory=list)

    def ids(self) -> list[str]:
        """Every case id, in cohort order."""
        return [c.case_id for c in self.cases]

    def subset(self, ids: list[str]) -> list[SegCase]:
        """The cases whose ids are in ``ids``, in that order."""
        by_id = {c.case_id: c for c in self.cases}
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise DatasetError(f"case ids not in the cohort: {missing[:5]}")
        return [by_id[i] for i in ids]

    def require_labels(self, ids: Sequence[str]) -> None:
        """Check that every case in ``ids`` has a label (before any slow work starts).

        Raises:
            DatasetError: Naming the unlabelled cases and what to do about them.
        """
        unlabelled = [c.case_id for c in self.subset(list(ids)) if not c.has_label]
        if unlabelled:
            raise DatasetError(
                f"{len(unlabelled)} case(s) have no label, e.g. {unlabelled[:5]}; training "
                "needs a label for every training and validation case: add 'label' to those "
                "manifest entries or move them to the test split (`medai data split`)"
            )


def _hash_files(case_id: str, paths: tuple[Path, ...]) -> str:
    """The case's content key: the start of each file's SHA-256."""
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DatasetError(
            f"case {case_id!r}: file {missing[0]} does not exist; fix the path in the "
            "manifest (or run `medai data check` to list every missing file)"
        )
    return "-".join(file_sha256(p)[:16] for p in paths)


def _label_values(label: LabelMap) -> set[int]:
    data = label.array
    if data.dtype.kind in "ui" and data.size and data.min() >= 0 and data.max() < 2**16:
        return {int(v) for v in np.flatnonzero(np.bincount(data.ravel()))}
    return {int(v) for v in np.unique(data)}


def _checked_label(dataset: Dataset, case: Case, declared: frozenset[int]) -> LabelMap | None:
    """The case's label map; its values must be declared labels of the dataset."""
    label = dataset.load_case_label(case)
    if label is None or not declared:
        return label
    unknown = sorted(_label_values(label) - declared)
    if unknown:
        raise DatasetError(
            f"case {case.case_id!r}: label file {case.label} holds values {unknown} that "
            f"dataset {dataset.name!r} does not declare (declared: {sorted(declared)}); "
            "declare them under 'labels' in the manifest, or fix the label file"
        )
    return label


def _dataset_cohort(dataset: Dataset) -> SegCohort:
    """From a ``medai.data.Dataset`` (cases, channels, labels, regions, splits)."""
    if dataset.task is not TaskType.SEGMENTATION:
        raise DatasetError(
            f"dataset {dataset.name!r} is a {dataset.task.value} dataset; segmentation "
            "needs label maps (task: segmentation, with 'label' files and declared 'labels')"
        )
    if not dataset.cases:
        raise DatasetError(f"dataset {dataset.name!r} has no case")
    regions = dataset.segmentation_regions()
    if not regions:
        raise DatasetError(
            f"dataset {dataset.name!r} declares no foreground label; add e.g. "
            "'labels: {0: background, 1: tumour}' to its manifest"
        )
    declared = frozenset(int(k) for k in dataset.labels)
    cases = [
        SegCase(
            case.case_id,
            partial(dataset.load_case_image, case),
            partial(_checked_label, dataset, case, declared),
            partial(_hash_files, case.case_id, tuple(case.files())),
            has_label=case.label is not None,
        )
        for case in dataset.cases
    ]
    splits = dataset.splits
    return SegCohort(
        cases,
        list(dataset.channels),
        {int(k): str(v) for k, v in dataset.labels.items()},
        regions,
        train_ids=list(splits.train),
        val_ids=list(splits.validation),
        test_ids=list(splits.test),
    )


def as_cohort(source: Any) -> SegCohort:
    """A :class:`SegCohort` from a path (MSD folder, a saved ``Dataset`` manifest, or
    any folder :func:`medai.data.import_dataset` understands) or a ``Dataset``.

    Raises:
        DatasetError: If the source is not a dataset, is not a segmentation dataset, or
            declares no foreground label.
        TypeError: If ``source`` is neither a path, a ``Dataset`` nor a ``SegCohort``.
    """
    if isinstance(source, SegCohort):
        return source
    if isinstance(source, str | Path):
        return _dataset_cohort(import_dataset(Path(source)))
    if isinstance(source, Dataset):
        return _dataset_cohort(source)
    raise TypeError(f"source must be a path or a Dataset; got {type(source).__name__}")

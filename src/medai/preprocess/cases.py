"""The one adapter between the dataset layer and the segmentation pipeline.

:func:`as_cohort` turns a ``medai.data.Dataset`` (anything with ``cases`` and
``load_case_image``/``load_case_label``) or an MSD-layout folder (``dataset.json``,
``imagesTr``, ``labelsTr``) into a :class:`SegCohort`: case ids, channel names,
labels, regions, the train/test split, and loaders returning geometry-carrying images.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from medai.errors import DatasetError
from medai.fsutil import file_sha256
from medai.image import LabelMap, ScalarImage
from medai.io import read_nifti

__all__ = ["BRATS_REGIONS", "SegCase", "SegCohort", "as_cohort"]

BRATS_REGIONS: dict[str, list[int]] = {"WT": [1, 2, 3], "TC": [2, 3], "ET": [3]}


@dataclass(frozen=True)
class SegCase:
    """One case: an id, loaders for its image and label, and a content key."""

    case_id: str
    load_image: Callable[[], ScalarImage]
    load_label: Callable[[], LabelMap | None]
    content_key: Callable[[], str]


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


def _paths_key(*paths: Path) -> Callable[[], str]:
    def key() -> str:
        return "-".join(file_sha256(p)[:16] for p in paths)

    return key


def _msd_cohort(root: Path) -> SegCohort:
    meta_path = root / "dataset.json"
    if not meta_path.is_file():
        raise DatasetError(f"{root}: no dataset.json; pass an MSD-layout folder or a Dataset")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    modality = meta.get("modality") or {"0": "image"}
    channels = [str(modality[k]) for k in sorted(modality, key=int)]
    labels = {int(k): str(v) for k, v in (meta.get("labels") or {}).items()}
    cases = []
    for entry in meta.get("training", []):
        image = (root / entry["image"]).resolve()
        label = (root / entry["label"]).resolve()
        case_id = image.name.split(".")[0]
        cases.append(
            SegCase(
                case_id,
                partial(read_nifti, image, kind=ScalarImage),
                partial(read_nifti, label, kind=LabelMap),
                _paths_key(image, label),
            )
        )
    if not cases:
        raise DatasetError(f"{meta_path}: 'training' lists no case")
    return SegCohort(cases, channels, labels, _default_regions(labels))


def _default_regions(labels: dict[int, str]) -> dict[str, list[int]]:
    if sorted(labels) == [0, 1, 2, 3]:
        return {k: list(v) for k, v in BRATS_REGIONS.items()}
    return {name.upper()[:16] or f"L{k}": [k] for k, name in labels.items() if k != 0}


def _dataset_cohort(dataset: Any) -> SegCohort:
    """From a ``medai.data.Dataset`` (cases, channels, labels, regions, splits)."""
    cases = []
    for case in dataset.cases:
        files = [Path(f) for f in case.files()] if hasattr(case, "files") else []
        key = _paths_key(*files) if files else partial(str, case.case_id)
        cases.append(
            SegCase(
                str(case.case_id),
                partial(dataset.load_case_image, case),
                partial(dataset.load_case_label, case),
                key,
            )
        )
    if not cases:
        raise DatasetError(f"dataset {getattr(dataset, 'name', '?')!r} has no case")
    labels = {int(k): str(v) for k, v in dict(dataset.labels).items()}
    regions = dict(dataset.regions or {}) or _default_regions(labels)
    splits = dataset.splits
    return SegCohort(
        cases,
        list(dataset.channels),
        labels,
        {str(k): [int(x) for x in v] for k, v in regions.items()},
        train_ids=[str(i) for i in getattr(splits, "train", [])],
        val_ids=[str(i) for i in getattr(splits, "validation", [])],
        test_ids=[str(i) for i in getattr(splits, "test", [])],
    )


def as_cohort(source: Any) -> SegCohort:
    """A :class:`SegCohort` from a path (MSD folder, a saved ``Dataset`` manifest, or
    any folder :func:`medai.data.import_dataset` understands) or a dataset object.

    Raises:
        DatasetError: If the source holds no usable cases.
    """
    if isinstance(source, SegCohort):
        return source
    if isinstance(source, str | Path):
        root = Path(source)
        if root.is_dir() and (root / "dataset.json").is_file():
            meta = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
            if "training" in meta:
                return _msd_cohort(root)
        from medai.data import Dataset, import_dataset

        if root.is_file():
            return _dataset_cohort(Dataset.load(root))
        return _dataset_cohort(import_dataset(root))
    if hasattr(source, "cases") and hasattr(source, "load_case_image"):
        return _dataset_cohort(source)
    raise TypeError(f"source must be a folder or a Dataset; got {type(source).__name__}")

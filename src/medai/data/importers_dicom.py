"""Importing a DICOM folder whose annotations are DICOM SEG or RTSTRUCT objects.

Each annotated image series becomes one case: the series is converted to NIfTI and its
annotations (all SEG and RTSTRUCT objects referring to it) to a NIfTI label map on the
same grid, both written under ``out_dir``. Labels are declared in the manifest:

- a SEG written by medai records each segment's label values, so its label map comes
  back with the original values and the segments become the declared regions;
- otherwise each segment / ROI name is a label, numbered in segment (ROI) order, with
  names in the order first met across the cases; where segments overlap (nested
  regions), each combination of segments met in the data becomes a label of its own
  (named ``"WT+TC"``) and the segments become regions over those labels.

Example:
    >>> ds = import_dicom_annotations("archive/", out_dir="dataset_images")  # doctest: +SKIP
    >>> ds.save("dataset.yaml")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from numpy.typing import NDArray
from pydicom.dataset import Dataset as DicomDataset
from pydicom.errors import InvalidDicomError

from medai.data.manifest import Case, Dataset, TaskType
from medai.errors import DatasetError
from medai.image import LabelMap
from medai.io import SeriesInfo, find_series, read_dicom_series, write_nifti
from medai.io.dicom import is_dicom_file
from medai.io.dicom_annotations import (
    AnnotationKind,
    annotation_kind,
    read_rtstruct_masks,
    read_seg_masks,
    referenced_series,
    referenced_sop_instances,
)
from medai.io.dicom_source import DERIVED_MODALITIES

__all__ = ["has_dicom_files", "import_dicom_annotations"]

logger = logging.getLogger(__name__)

Masks = dict[str, NDArray[np.bool_]]


@dataclass
class _Annotated:
    """One image series and the masks of every annotation that refers to it."""

    series: SeriesInfo
    kinds: list[AnnotationKind] = field(default_factory=list)
    masks: Masks = field(default_factory=dict)
    label_sets: dict[str, list[int]] | None = None


def _files(folder: Path) -> Iterator[Path]:
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not any(p.startswith(".") for p in path.relative_to(folder).parts):
            yield path


def has_dicom_files(folder: str | Path) -> bool:
    """True when any (non-hidden) file under ``folder`` is a DICOM file."""
    return any(is_dicom_file(p) for p in _files(Path(folder)))


def _annotation_files(folder: Path) -> list[tuple[Path, DicomDataset, AnnotationKind]]:
    found: list[tuple[Path, DicomDataset, AnnotationKind]] = []
    for path in _files(folder):
        if not is_dicom_file(path):
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
            logger.info("skipping %s: %s", path, exc)
            continue
        kind = annotation_kind(ds)
        if kind is not None:
            found.append((path, ds, kind))
    return found


def _target(
    path: Path, ds: DicomDataset, images: Sequence[SeriesInfo], sop_to_series: Mapping[str, str]
) -> SeriesInfo:
    """The image series an annotation refers to: by series UID, cited instances, or the
    only series sharing its frame of reference."""
    by_uid = {s.uid: s for s in images}
    for uid in referenced_series(ds):
        if uid in by_uid:
            return by_uid[uid]
    cited = {sop_to_series[u] for u in referenced_sop_instances(ds) if u in sop_to_series}
    if len(cited) == 1:
        return by_uid[cited.pop()]
    raise DatasetError(
        f"{path}: the {annotation_kind(ds)} refers to series {referenced_series(ds) or '(none)'}, "
        "which is not in the folder; copy the annotated image series next to it"
    )


def _sop_index(images: Sequence[SeriesInfo]) -> dict[str, str]:
    index = {}
    for info in images:
        for path in info.files:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
            index[str(ds.SOPInstanceUID)] = info.uid
    return index


def _merge(entry: _Annotated, masks: Masks, label_sets: dict[str, list[int]] | None) -> None:
    first = not entry.masks
    for name, mask in masks.items():
        if name in entry.masks:
            logger.warning("series %s: %r annotated twice; masks united", entry.series.uid, name)
            entry.masks[name] = entry.masks[name] | mask
        else:
            entry.masks[name] = mask
    entry.label_sets = label_sets if first else None


def _collect(folder: Path) -> tuple[list[_Annotated], dict[str, Any]]:
    annotations = _annotation_files(folder)
    if not annotations:
        raise DatasetError(
            f"{folder}: no DICOM SEG or RTSTRUCT found; a DICOM folder is imported through "
            "its annotations (for images alone, convert them with `medai io convert`)"
        )
    images = [s for s in find_series(folder) if s.modality not in DERIVED_MODALITIES]
    sop_to_series = _sop_index(images)
    cases: dict[str, _Annotated] = {}
    volumes: dict[str, Any] = {}
    for path, ds, kind in annotations:
        info = _target(path, ds, images, sop_to_series)
        if info.uid not in volumes:
            volumes[info.uid] = read_dicom_series(folder, series_uid=info.uid)
        entry = cases.setdefault(info.uid, _Annotated(info))
        entry.kinds.append(kind)
        if kind is AnnotationKind.SEG:
            masks, sets = read_seg_masks(path, volumes[info.uid])
        else:
            masks, sets = read_rtstruct_masks(path, volumes[info.uid]), None
        _merge(entry, masks, sets)
    ordered = sorted(
        cases.values(),
        key=lambda a: (
            a.series.patient_id,
            a.series.study_uid,
            a.series.series_number or 0,
            a.series.uid,
        ),
    )
    return ordered, volumes


# -- label tables -------------------------------------------------------------------------
@dataclass
class _LabelTable:
    """Global labels: each label value and the set of segment names it lies in."""

    patterns: dict[int, frozenset[str]] = field(default_factory=dict)
    frozen: bool = False

    def value_of(self, pattern: frozenset[str], where: str = "") -> int:
        for value, known in self.patterns.items():
            if known == pattern:
                return value
        if self.frozen:
            raise DatasetError(
                f"{where}: voxels lie in segments {sorted(pattern)}, a combination no recorded "
                "label has; was the SEG edited?"
            )
        value = max(self.patterns, default=0) + 1
        self.patterns[value] = pattern
        return value

    def labels(self, order: Sequence[str]) -> dict[int, str]:
        rank = {name: i for i, name in enumerate(order)}
        out = {0: "background"}
        for value, pattern in sorted(self.patterns.items()):
            out[value] = "+".join(sorted(pattern, key=lambda n: rank.get(n, len(rank))))
        return out

    def regions(self) -> dict[str, list[int]]:
        if all(len(p) == 1 for p in self.patterns.values()):
            return {}
        names = dict.fromkeys(n for p in self.patterns.values() for n in sorted(p))
        return {n: sorted(v for v, p in self.patterns.items() if n in p) for n in names}


def _codes(masks: Masks, names: Sequence[str]) -> NDArray[np.int64]:
    """Per voxel, a bit per segment name (bit i: ``names[i]``)."""
    shape = next(iter(masks.values())).shape
    code = np.zeros(shape, dtype=np.int64)
    for i, name in enumerate(names):
        if name in masks:
            code |= masks[name].astype(np.int64) << i
    return code


def _label_array(
    masks: Masks, names: Sequence[str], table: _LabelTable, where: str
) -> NDArray[np.int64]:
    code = _codes(masks, names)
    out = np.zeros(code.shape, dtype=np.int64)
    for value in np.unique(code):
        if value == 0:
            continue
        pattern = frozenset(n for i, n in enumerate(names) if int(value) >> i & 1)
        out[code == value] = table.value_of(pattern, where)
    return out


def _recorded_table(cases: Sequence[_Annotated]) -> _LabelTable | None:
    """The labels medai recorded in its SEGs, when every case has them and they agree."""
    regions: dict[str, list[int]] = {}
    for case in cases:
        if case.label_sets is None:
            return None
        for name, values in case.label_sets.items():
            if regions.setdefault(name, values) != values:
                return None
    values = sorted({v for members in regions.values() for v in members})
    patterns = {v: frozenset(n for n, m in regions.items() if v in m) for v in values}
    table = _LabelTable(patterns, frozen=True)
    if len(set(table.patterns.values())) != len(values):
        return None  # two labels share all their segments: values cannot be recovered
    return table


def _write_case(
    entry: _Annotated,
    image: Any,
    labels: NDArray[np.int64],
    case_id: str,
    out_dir: Path,
) -> Case:
    dtype = np.uint8 if labels.max(initial=0) < 256 else np.uint16
    image_path = write_nifti(image, out_dir / "images" / f"{case_id}.nii.gz")
    label_map = LabelMap(labels.astype(dtype), image.affine)
    label_path = write_nifti(label_map, out_dir / "labels" / f"{case_id}.nii.gz")
    info = entry.series
    return Case(
        patient_id=info.patient_id or case_id,
        case_id=case_id,
        image=image_path.resolve(),
        label=label_path.resolve(),
        clinical={
            "modality": info.modality,
            "series_description": info.description,
            "annotation": "+".join(sorted({k.value for k in entry.kinds})),
        },
    )


def _case_id(info: SeriesInfo, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", info.patient_id or "case").strip("_") or "case"
    stem = f"{base}_S{info.series_number}" if info.series_number is not None else base
    case_id, n = stem, 1
    while case_id in taken:
        n += 1
        case_id = f"{stem}_{n}"
    taken.add(case_id)
    return case_id


def import_dicom_annotations(folder: str | Path, *, out_dir: str | Path | None = None) -> Dataset:
    """Import a DICOM folder annotated with SEG and/or RTSTRUCT objects as a dataset.

    Args:
        folder: Searched recursively for image series and their annotations.
        out_dir: Where the NIfTI images and label maps are written (``images/``,
            ``labels/``); defaults to ``<folder>_medai`` beside ``folder``.

    Raises:
        DatasetError: If there is no annotation, or one refers to a series not present.
        GeometryError: If a SEG does not lie on its image series' grid.
    """
    folder = Path(folder).resolve()
    out = Path(out_dir).resolve() if out_dir else folder.parent / f"{folder.name}_medai"
    cases, volumes = _collect(folder)
    names = list(dict.fromkeys(n for c in cases for n in c.masks))
    if len(names) > 62:
        raise DatasetError(f"{folder}: {len(names)} segment names; at most 62 are supported")
    table = _recorded_table(cases)
    recorded = table is not None
    if table is None:
        table = _LabelTable()
        for name in names:  # one label per segment name, in segment order
            table.value_of(frozenset([name]))
    written: list[Case] = []
    taken: set[str] = set()
    for entry in cases:
        case_id = _case_id(entry.series, taken)
        labels = _label_array(entry.masks, names, table, f"{folder} series {entry.series.uid}")
        written.append(_write_case(entry, volumes[entry.series.uid], labels, case_id, out))
    modalities = {c.series.modality for c in cases}
    return Dataset(
        name=folder.name,
        description=f"DICOM {'/'.join(sorted({k for c in cases for k in c.kinds}))} annotations "
        f"imported from {folder}" + (" (labels recorded by medai)" if recorded else ""),
        task=TaskType.SEGMENTATION,
        channels=[modalities.pop() if len(modalities) == 1 else "image"],
        labels=table.labels(names),
        regions=table.regions(),
        cases=written,
    )

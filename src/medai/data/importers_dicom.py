"""Importing a DICOM folder whose annotations are DICOM SEG or RTSTRUCT objects.

Each annotated image series becomes one case: the series is converted to NIfTI and its
annotations (all SEG and RTSTRUCT objects referring to it) to a NIfTI label map on the
same grid, both written under ``out_dir``. Labels are declared in the manifest:

- a SEG written by medai records each segment's label values, so its label map comes
  back with the original values and the segments become the declared regions;
- otherwise each combination of segments (ROIs) met in the data becomes a label, in
  segment order (names in the order first met across the cases): one label per
  segment where segments do not overlap; where they do (nested regions), labels named
  like ``"WT+TC"`` and the segments declared as regions over those labels.

Example:
    >>> ds = import_dicom_annotations("archive/", out_dir="dataset_images")  # doctest: +SKIP
    >>> ds.save("dataset.yaml")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from numpy.typing import NDArray
from pydicom.dataset import Dataset as DicomDataset
from pydicom.uid import MediaStorageDirectoryStorage

from medai.data.manifest import Case, Dataset, TaskType
from medai.errors import DatasetError, ImageReadError
from medai.image import Image, LabelMap, ScalarImage
from medai.io import SeriesInfo, find_series, read_dicom_series, write_nifti
from medai.io._dicom_common import load_dataset
from medai.io.dicom import is_dicom_file
from medai.io.dicom_annotations import (
    AnnotationKind,
    annotation_kind,
    frames_of_reference,
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
    case_id: str = ""
    image: Path = field(default_factory=Path)  # the NIfTI written, set by _collect
    affine: NDArray[np.float64] = field(default_factory=lambda: np.eye(4))
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


def _media_class(ds: DicomDataset) -> str:
    meta = getattr(ds, "file_meta", None)
    return str(meta.get("MediaStorageSOPClassUID", "")) if meta is not None else ""


def _annotation_files(folder: Path) -> list[tuple[Path, DicomDataset, AnnotationKind]]:
    """Every SEG and RTSTRUCT under ``folder``.

    Raises:
        DatasetError: If a file marked as DICOM cannot be parsed (an annotation could
            be lost without notice).
    """
    found: list[tuple[Path, DicomDataset, AnnotationKind]] = []
    for path in _files(folder):
        if not is_dicom_file(path):
            continue
        try:
            ds = load_dataset(path, pixels=False)
            if "SOPInstanceUID" not in ds and _media_class(ds) != MediaStorageDirectoryStorage:
                raise ImageReadError(
                    path, "DICOM file is truncated or corrupt (no SOP Instance UID)"
                )
        except ImageReadError as exc:
            raise DatasetError(
                f"{path}: {exc.reason}; replace it with an intact copy, or move it out of "
                f"{folder}, and import again"
            ) from exc
        kind = annotation_kind(ds)
        if kind is not None:
            found.append((path, ds, kind))
    return found


@dataclass(frozen=True)
class _Index:
    """Which image series each SOP instance belongs to, and each series' frame of reference."""

    series_of_sop: dict[str, str]
    frame_of_series: dict[str, str]

    @classmethod
    def build(cls, images: Sequence[SeriesInfo]) -> _Index:
        sops: dict[str, str] = {}
        frames: dict[str, str] = {}
        keep = ["SOPInstanceUID", "FrameOfReferenceUID"]
        for info in images:
            for path in info.files:
                ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=keep)
                sops[str(ds.SOPInstanceUID)] = info.uid
                frames.setdefault(info.uid, str(ds.get("FrameOfReferenceUID", "")))
        return cls(sops, frames)


def _target(
    path: Path, ds: DicomDataset, images: Sequence[SeriesInfo], index: _Index
) -> SeriesInfo:
    """The image series an annotation refers to: by series UID, by the instances it
    cites, or as the only series in its frame of reference.

    Raises:
        DatasetError: If that series is not in the folder, or lies in another frame of
            reference than the annotation's coordinates.
    """
    kind = annotation_kind(ds)
    by_uid = {s.uid: s for s in images}
    frames = frames_of_reference(ds)
    found = next((by_uid[u] for u in referenced_series(ds) if u in by_uid), None)
    if found is None:
        cited = {
            index.series_of_sop[u] for u in referenced_sop_instances(ds) if u in index.series_of_sop
        }
        if len(cited) == 1:
            found = by_uid[cited.pop()]
    if found is None:
        same = [s for s in images if index.frame_of_series.get(s.uid) in set(frames.values())]
        if len(same) == 1:
            found = same[0]
    if found is None:
        raise DatasetError(
            f"{path}: the {kind} refers to image series {referenced_series(ds) or '(none named)'} "
            f"in frame of reference {sorted(set(frames.values())) or '(none)'}, and no image "
            "series in the folder is either; copy the annotated image series next to it"
        )
    _check_frame(path, ds, found.uid, index.frame_of_series.get(found.uid, ""))
    return found


def _check_frame(path: Path, ds: DicomDataset, series_uid: str, image_frame: str) -> None:
    """Refuse an annotation whose coordinates lie in another frame of reference."""
    kind = annotation_kind(ds)
    wrong = {
        w: uid for w, uid in frames_of_reference(ds).items() if image_frame and uid != image_frame
    }
    if wrong:
        listing = ", ".join(f"{what}: {uid}" for what, uid in wrong.items())
        raise DatasetError(
            f"{path}: the {kind} annotates series {series_uid} (frame of reference "
            f"{image_frame}), but its coordinates are in an unknown frame of reference "
            f"({listing}), so they cannot be placed on the images; export the {kind} "
            "together with the image series it was drawn on"
        )


def _merge(entry: _Annotated, masks: Masks, label_sets: dict[str, list[int]] | None) -> None:
    first = not entry.masks
    for name, mask in masks.items():
        if name in entry.masks:
            logger.warning("series %s: %r annotated twice; masks united", entry.series.uid, name)
            entry.masks[name] = entry.masks[name] | mask
        else:
            entry.masks[name] = mask
    entry.label_sets = label_sets if first else None


def _read_masks(
    path: Path, kind: AnnotationKind, image: Image, folder: Path
) -> tuple[Masks, dict[str, list[int]] | None]:
    try:
        if kind is AnnotationKind.SEG:
            return read_seg_masks(path, image)
        return read_rtstruct_masks(path, image), None
    except ImageReadError as exc:
        raise DatasetError(
            f"{path}: {exc.reason}; replace it with an intact copy, or move it out of "
            f"{folder}, and import again"
        ) from exc


def _collect(folder: Path, out: Path) -> list[_Annotated]:
    """Every annotated series, in patient / study / series order, its image written to
    ``out/images`` and the masks of its annotations read (one series in memory at a time).
    Every annotation is matched to its series before anything is written."""
    annotations = _annotation_files(folder)
    if not annotations:
        raise DatasetError(
            f"{folder}: no DICOM SEG or RTSTRUCT found; a DICOM folder is imported through "
            "its annotations (for images alone, convert them with `medai io convert`)"
        )
    images = [s for s in find_series(folder) if s.modality not in DERIVED_MODALITIES]
    index = _Index.build(images)
    targets = [(path, kind, _target(path, ds, images, index).uid) for path, ds, kind in annotations]
    by_uid = {s.uid: s for s in images}
    cases = [_Annotated(by_uid[uid]) for uid in dict.fromkeys(uid for *_, uid in targets)]
    cases.sort(
        key=lambda a: (
            a.series.patient_id,
            a.series.study_uid,
            a.series.series_number or 0,
            a.series.uid,
        )
    )
    taken: set[str] = set()
    for entry in cases:
        entry.case_id = _case_id(entry.series, taken)
        image: ScalarImage = read_dicom_series(folder, series_uid=entry.series.uid)
        for path, kind, uid in targets:
            if uid == entry.series.uid:
                entry.kinds.append(kind)
                _merge(entry, *_read_masks(path, kind, image, folder))
        entry.image = write_nifti(image, out / "images" / f"{entry.case_id}.nii.gz").resolve()
        entry.affine = image.affine
    return cases


# -- label tables -------------------------------------------------------------------------
@dataclass
class _LabelTable:
    """Global labels: each label value and the set of segment names it lies in."""

    patterns: dict[int, frozenset[str]] = field(default_factory=dict)

    def value_of(self, pattern: frozenset[str], where: str = "") -> int:
        for value, known in self.patterns.items():
            if known == pattern:
                return value
        raise DatasetError(
            f"{where}: voxels lie in segments {sorted(pattern)}, a combination no recorded "
            "label has; was the SEG edited? Remove its 'medai labels' segment descriptions "
            "to import its segments as plain regions"
        )

    def labels(self, order: Sequence[str]) -> dict[int, str]:
        rank = {name: i for i, name in enumerate(order)}
        out = {0: "background"}
        for value, pattern in sorted(self.patterns.items()):
            out[value] = "+".join(sorted(pattern, key=lambda n: rank.get(n, len(rank))))
        return out

    def regions(self, order: Sequence[str]) -> dict[str, list[int]]:
        """Each segment name's label values, in ``order``; none when no segments overlap."""
        if all(len(p) == 1 for p in self.patterns.values()):
            return {}
        names = [n for n in order if any(n in p for p in self.patterns.values())]
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


def _met_table(cases: Sequence[_Annotated], names: Sequence[str]) -> _LabelTable:
    """One label per combination of segments met in the data, ordered by segment order
    (``WT``, ``WT+TC``, ``WT+TC+ET``...; for non-overlapping segments, one per segment)."""
    met: set[frozenset[str]] = set()
    for case in cases:
        for value in np.unique(_codes(case.masks, names)):
            if value:
                met.add(frozenset(n for i, n in enumerate(names) if int(value) >> i & 1))
    rank = {name: i for i, name in enumerate(names)}
    ordered = sorted(met, key=lambda p: sorted(rank[n] for n in p))
    return _LabelTable(dict(enumerate(ordered, start=1)))


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
    table = _LabelTable(patterns)
    if len(set(table.patterns.values())) != len(values):
        return None  # two labels share all their segments: values cannot be recovered
    return table


def _write_case(entry: _Annotated, labels: NDArray[np.int64], out_dir: Path) -> Case:
    dtype = np.uint8 if labels.max(initial=0) < 256 else np.uint16
    label_map = LabelMap(labels.astype(dtype), entry.affine)
    label_path = write_nifti(label_map, out_dir / "labels" / f"{entry.case_id}.nii.gz")
    info = entry.series
    return Case(
        patient_id=info.patient_id or entry.case_id,
        case_id=entry.case_id,
        image=entry.image,
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
        DatasetError: If there is no annotation; if one refers to a series not in the
            folder or has coordinates in another frame of reference than its series;
            if a DICOM file is truncated or corrupt (each naming the file and the fix).
        GeometryError: If a SEG does not lie on its image series' grid.
    """
    folder = Path(folder).resolve()
    out = Path(out_dir).resolve() if out_dir else folder.parent / f"{folder.name}_medai"
    cases = _collect(folder, out)
    names = list(dict.fromkeys(n for c in cases for n in c.masks))
    if len(names) > 62:
        raise DatasetError(f"{folder}: {len(names)} segment names; at most 62 are supported")
    table = _recorded_table(cases)
    recorded = table is not None
    if table is None:
        table = _met_table(cases, names)
    written = [
        _write_case(entry, _label_array(entry.masks, names, table, entry.case_id), out)
        for entry in cases
    ]
    modalities = {c.series.modality for c in cases}
    return Dataset(
        name=folder.name,
        description=f"DICOM {'/'.join(sorted({k for c in cases for k in c.kinds}))} annotations "
        f"imported from {folder}" + (" (labels recorded by medai)" if recorded else ""),
        task=TaskType.SEGMENTATION,
        channels=[modalities.pop() if len(modalities) == 1 else "image"],
        labels=table.labels(names),
        regions=table.regions(names),
        cases=written,
    )

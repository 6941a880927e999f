"""Data checks: find what would silently spoil training or evaluation.

:func:`check_dataset` reads every case once and returns a :class:`CheckReport`
listing :class:`Anomaly` records: unreadable files, missing channels, channels or
labels not co-registered, label values outside the declared set, empty labels,
intensity outliers (robust z of per-case statistics), duplicate images (hash of the
voxel data) and patients whose cases sit in more than one split.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from collections.abc import Callable
from enum import StrEnum
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from medai.data.manifest import SPLIT_NAMES, Case, Dataset, TaskType
from medai.errors import MedaiError
from medai.image import Image, LabelMap, ScalarImage
from medai.io import read_image, read_label

__all__ = ["Anomaly", "AnomalyKind", "CheckReport", "check_dataset", "robust_z"]

logger = logging.getLogger(__name__)

#: Cases needed before intensity outliers are judged (median/MAD of fewer is noise).
MIN_CASES_FOR_OUTLIERS = 5


class AnomalyKind(StrEnum):
    UNREADABLE_FILE = "unreadable_file"
    MISSING_CHANNEL = "missing_channel"
    NOT_COREGISTERED = "not_coregistered"
    LABEL_VALUES = "label_values"
    EMPTY_LABEL = "empty_label"
    INTENSITY_OUTLIER = "intensity_outlier"
    DUPLICATE_IMAGE = "duplicate_image"
    PATIENT_IN_TWO_SPLITS = "patient_in_two_splits"


class Anomaly(BaseModel):
    """One finding: its kind, the case (or patient) concerned, and what was seen."""

    kind: AnomalyKind
    case: str | None
    detail: str


class CheckReport(BaseModel):
    """The result of :func:`check_dataset`."""

    dataset: str
    cases_checked: int
    anomalies: list[Anomaly] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.anomalies

    def of_kind(self, kind: AnomalyKind | str) -> list[Anomaly]:
        kind = AnomalyKind(kind)
        return [a for a in self.anomalies if a.kind is kind]


def robust_z(values: np.ndarray, *, floor: float = 0.0) -> np.ndarray:
    """``(x - median) / (1.4826 · MAD)``; the scale is at least ``floor``.

    Example:
        >>> robust_z(np.array([1.0, 2.0, 3.0])).round(3).tolist()
        [-0.674, 0.0, 0.674]
    """
    values = np.asarray(values, dtype=np.float64)
    median = np.median(values)
    scale = max(1.4826 * float(np.median(np.abs(values - median))), floor)
    if scale == 0.0:
        return np.zeros_like(values)
    return (values - median) / scale


def _voxel_hash(image: Image) -> str:
    digest = hashlib.sha256()
    digest.update(str((image.array.shape, image.array.dtype.str)).encode())
    digest.update(np.ascontiguousarray(image.array).tobytes())
    return digest.hexdigest()


def _channel_stats(image: ScalarImage, label: LabelMap | None) -> list[tuple[float, float]]:
    """Per channel: (mean, std) of the non-zero voxels outside any labelled structure.

    Air is left out, and so is the labelled lesion when the label map fits the image:
    a scanner's intensity scale shows in normal tissue, while tumour burden (a large
    necrotic core, say) would move a whole-body mean without anything being wrong.
    """
    keep = np.ones(image.shape, dtype=bool)
    if label is not None and label.shape == image.shape:
        keep = label.numpy3d() == 0
    stats = []
    for data in image.array.astype(np.float64):
        body = data[(data != 0) & keep]
        body = body if body.size else data.ravel()
        stats.append((float(body.mean()), float(body.std())))
    return stats


class _CaseReader:
    """Reads one case's files, turning every failure into an anomaly."""

    def __init__(self, ds: Dataset, add: Callable[[AnomalyKind, str | None, str], None]) -> None:
        self.ds, self.add = ds, add

    def image(self, case: Case) -> ScalarImage | None:
        ds, cid = self.ds, case.case_id
        if case.image is not None:
            if not case.image.is_file():
                self.add(AnomalyKind.MISSING_CHANNEL, cid, f"image file not found: {case.image}")
                return None
            img = self._read(case, case.image, ScalarImage)
            if img is not None and img.num_channels != len(ds.channels):
                self.add(
                    AnomalyKind.MISSING_CHANNEL,
                    cid,
                    f"{case.image.name} has {img.num_channels} channel(s); "
                    f"{len(ds.channels)} declared ({', '.join(ds.channels)})",
                )
                return None
            return img
        parts: list[ScalarImage] = []
        for name in ds.channels:
            file = case.channels.get(name)
            if file is None or not file.is_file():
                self.add(AnomalyKind.MISSING_CHANNEL, cid, f"channel {name!r}: no file ({file})")
                continue
            part = self._read(case, file, ScalarImage)
            if part is not None:
                parts.append(part)
        if len(parts) != len(ds.channels):
            return None
        for name, part in zip(ds.channels, parts, strict=True):
            if not part.same_grid(parts[0]):
                detail = _grid_detail(name, part, ds.channels[0], parts[0])
                self.add(AnomalyKind.NOT_COREGISTERED, cid, detail)
                return None
        return ScalarImage(np.concatenate([p.array for p in parts]), parts[0].affine)

    def label(self, case: Case) -> LabelMap | None:
        if case.label is None:
            return None
        if not case.label.is_file():
            detail = f"label file not found: {case.label}"
            self.add(AnomalyKind.UNREADABLE_FILE, case.case_id, detail)
            return None
        return self._read(case, case.label, LabelMap)

    def _read(self, case: Case, path: Any, kind: type[Any]) -> Any:
        try:
            return read_label(path) if kind is LabelMap else read_image(path)
        except (MedaiError, ValueError, TypeError, OSError) as exc:
            self.add(AnomalyKind.UNREADABLE_FILE, case.case_id, f"{path.name}: {exc}")
            return None


def _grid_detail(name: str, part: Image, ref_name: str, ref: Image) -> str:
    if part.shape != ref.shape:
        return f"{name!r} shape {part.shape} differs from {ref_name!r} shape {ref.shape}"
    diff = float(np.abs(part.affine - ref.affine).max())
    return f"{name!r} affine differs from {ref_name!r} by up to {diff:.3g} mm"


def _check_label(
    ds: Dataset,
    case: Case,
    image: ScalarImage | None,
    label: LabelMap,
    add: Callable[[AnomalyKind, str | None, str], None],
) -> set[int]:
    """Check one label map; return the values it holds."""
    cid = case.case_id
    if image is not None and not label.same_grid(image):
        add(AnomalyKind.NOT_COREGISTERED, cid, _grid_detail("label", label, "image", image))
    values = set(np.unique(label.array).tolist())
    if ds.labels:
        undeclared = sorted(values - set(ds.labels))
        if undeclared:
            add(
                AnomalyKind.LABEL_VALUES,
                cid,
                f"label values {undeclared} are not declared (declared {sorted(ds.labels)})",
            )
    if values <= {0}:
        add(AnomalyKind.EMPTY_LABEL, cid, "label holds background only")
    return {int(v) for v in values}


def _check_splits(ds: Dataset, add: Callable[[AnomalyKind, str | None, str], None]) -> None:
    patient_of = {c.case_id: c.patient_id for c in ds.cases}
    where: dict[str, set[str]] = defaultdict(set)
    for split in SPLIT_NAMES:
        for cid in getattr(ds.splits, split):
            where[patient_of[cid]].add(split)
    for patient, splits in sorted(where.items()):
        if len(splits) > 1:
            add(
                AnomalyKind.PATIENT_IN_TWO_SPLITS,
                patient,
                f"patient {patient!r} has cases in {sorted(splits)}",
            )
    fold_of: dict[str, set[int]] = defaultdict(set)
    for i, fold in enumerate(ds.splits.folds):
        for cid in fold:
            fold_of[patient_of[cid]].add(i)
    for patient, folds in sorted(fold_of.items()):
        if len(folds) > 1:
            add(
                AnomalyKind.PATIENT_IN_TWO_SPLITS,
                patient,
                f"patient {patient!r} has cases in folds {sorted(folds)}",
            )


def _flag(
    ids: list[str],
    values: np.ndarray,
    raw: list[float],
    what: str,
    floor: float,
    z_max: float,
    add: Callable[[AnomalyKind, str | None, str], None],
) -> None:
    z = robust_z(values, floor=floor)
    for i in np.flatnonzero(np.abs(z) > z_max):
        add(AnomalyKind.INTENSITY_OUTLIER, ids[i], f"{what} {raw[i]:.4g} has robust z {z[i]:+.1f}")


def _site_groups(ds: Dataset, ids: list[str], site_column: str) -> dict[str, list[int]] | None:
    sites = [ds.case(i).clinical.get(site_column) for i in ids]
    if any(s is None for s in sites):
        return None
    groups: dict[str, list[int]] = defaultdict(list)
    for index, site in enumerate(sites):
        groups[str(site)].append(index)
    return groups


def _check_outliers(
    ds: Dataset,
    stats: dict[str, list[tuple[float, float]]],
    add: Callable[[AnomalyKind, str | None, str], None],
    z_max: float,
    site_column: str,
) -> list[str]:
    """Flag outlying cases; return notes on what could not be judged.

    Two families, in log units: (1) each channel's mean relative to the case's other
    channels (scale-free, so scanners with other units do not matter; floor 0.2);
    (2) raw mean and std, judged within each site when every case names its site
    (floor 0.25: anatomy and per-scan scaling move a mean by tens of %), else across
    all cases with a wide floor (0.5: about 12× off).
    """
    ids = list(stats)
    table = np.log(np.abs(np.asarray([stats[i] for i in ids])) + 1e-6)  # (cases, channels, 2)
    raw = np.asarray([stats[i] for i in ids])
    if len(ds.channels) > 1:
        relative = table[:, :, 0] - table[:, :, 0].mean(axis=1, keepdims=True)
        for c, channel in enumerate(ds.channels):
            what = f"channel {channel!r} mean relative to the other channels, mean"
            _flag(ids, relative[:, c], list(raw[:, c, 0]), what, 0.2, z_max, add)
    groups = _site_groups(ds, ids, site_column)
    floor = 0.25 if groups else 0.5
    groups = groups or {"": list(range(len(ids)))}
    notes = []
    for site, members in sorted(groups.items()):
        if len(members) < MIN_CASES_FOR_OUTLIERS:
            notes.append(f"raw intensity scale not judged at site {site!r}: {len(members)} cases")
            continue
        sub_ids = [ids[m] for m in members]
        for c, channel in enumerate(ds.channels):
            for s, stat in enumerate(("mean", "std")):
                what = f"channel {channel!r} {stat}"
                values, rawv = table[members, c, s], list(raw[members, c, s])
                _flag(sub_ids, values, rawv, what, floor, z_max, add)
    return notes


def check_dataset(
    ds: Dataset,
    *,
    z_max: float = 5.0,
    site_column: str = "site",
    progress: Callable[[int, int], None] | None = None,
) -> CheckReport:
    """Check every case of ``ds`` and return the anomalies found.

    Args:
        ds: The dataset.
        z_max: Robust-z threshold for intensity outliers: per-case per-channel mean
            and std of the non-zero voxels, in log scale, median/MAD across cases
            (see ``_check_outliers``); judged only with at least 5 readable cases.
        site_column: Clinical column naming the scanner site; raw intensity scales
            are compared within a site when every case has it.
        progress: Called as ``progress(done, total)`` after each case.
    """
    anomalies: list[Anomaly] = []

    def add(kind: AnomalyKind, case: str | None, detail: str) -> None:
        anomalies.append(Anomaly(kind=kind, case=case, detail=detail))

    reader = _CaseReader(ds, add)
    hashes: dict[str, list[str]] = defaultdict(list)
    stats: dict[str, list[tuple[float, float]]] = {}
    seen: set[int] = set()
    for done, case in enumerate(ds.cases, start=1):
        image = reader.image(case)
        label = reader.label(case)
        if label is not None and ds.task is TaskType.SEGMENTATION:
            seen |= _check_label(ds, case, image, label, add)
        if image is not None:
            hashes[_voxel_hash(image)].append(case.case_id)
            stats[case.case_id] = _channel_stats(image, label)
        if progress is not None:
            progress(done, len(ds.cases))
    for same in hashes.values():
        for cid in same[1:]:
            add(AnomalyKind.DUPLICATE_IMAGE, cid, f"voxel data identical to case {same[0]!r}")
    notes: list[str] = []
    if len(stats) >= MIN_CASES_FOR_OUTLIERS:
        notes += _check_outliers(ds, stats, add, z_max, site_column)
    else:
        notes.append(
            f"intensity outliers not judged: {len(stats)} readable case(s), "
            f"need {MIN_CASES_FOR_OUTLIERS}"
        )
    unseen = sorted(set(ds.labels) - seen - {0})
    if seen and unseen:
        notes.append(f"declared label(s) {unseen} occur in no label file")
    _check_splits(ds, add)
    logger.info("checked %d cases of %s: %d anomalies", len(ds.cases), ds.name, len(anomalies))
    return CheckReport(
        dataset=ds.name, cases_checked=len(ds.cases), anomalies=anomalies, notes=notes
    )

"""Shared DICOM plumbing: loading a file safely, per-frame geometry, metadata.

Everything here turns pydicom's many exception types into :class:`ImageReadError`
naming the file and the reason, and routes pydicom's warnings to ``logging``.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from numpy.typing import NDArray
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from medai.errors import ImageReadError
from medai.io._dicom_values import header_value
from medai.io._guard import PASS_THROUGH, describe

logger = logging.getLogger(__name__)

#: DICOM attributes copied into ``image.meta`` when present.
META_KEYWORDS = (
    "PatientID",
    "PatientName",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "FrameOfReferenceUID",
    "SOPClassUID",
    "Modality",
    "SeriesDescription",
    "StudyDescription",
    "SeriesNumber",
    "StudyDate",
    "BodyPartExamined",
    "Manufacturer",
    "PhotometricInterpretation",
)

#: Values larger than this many bytes are read lazily when ``defer=True``.
DEFER_SIZE = 4096

#: Default image plane when a file carries no patient geometry: rows along +x (L),
#: columns along +y (P) in DICOM's LPS frame, i.e. the usual radiograph display.
DEFAULT_IOP = np.array([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])


@contextmanager
def pydicom_warnings_to_log(path: Path) -> Iterator[None]:
    """Turn warnings raised by pydicom inside the block into log records."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for item in caught:
        logger.info("%s: %s", path, item.message)


def load_dataset(path: Path, *, pixels: bool = True, defer: bool = False) -> Dataset:
    """Read one DICOM file (with or without its pixel data).

    Files without the 128-byte preamble (old ACR-NEMA style) are accepted when a
    forced read finds an image header in them. With ``defer``, large values (pixel
    data) are read from disk only when first used, so a folder can be scanned once
    and only the chosen series decoded.

    Raises:
        ImageReadError: If the file is missing, not DICOM, or cannot be parsed.
    """
    if not path.is_file():
        raise ImageReadError(path, "file not found")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds: Dataset = pydicom.dcmread(
                path, stop_before_pixels=not pixels, defer_size=DEFER_SIZE if defer else None
            )
        except InvalidDicomError:
            ds = _forced_read(path, pixels=pixels, defer=defer)
        except PASS_THROUGH:
            raise
        except BaseException as exc:  # pydicom raises many types for damaged files
            reason = f"DICOM file is truncated or corrupt ({describe(exc)})"
            raise ImageReadError(path, reason) from exc
    for item in caught:
        message = str(item.message)
        if "End of file reached" in message:
            raise ImageReadError(path, f"DICOM file is truncated ({message})")
        logger.info("%s: %s", path, message)
    return ds


def _forced_read(path: Path, *, pixels: bool, defer: bool) -> Dataset:
    reason = "not a DICOM file (no 'DICM' marker and no readable DICOM header)"
    try:
        ds = pydicom.dcmread(
            path,
            force=True,
            stop_before_pixels=not pixels,
            defer_size=DEFER_SIZE if defer else None,
        )
    except PASS_THROUGH:
        raise
    except BaseException as exc:  # forced parsing of arbitrary bytes fails in many ways
        raise ImageReadError(path, reason) from exc
    needed = ("Rows", "Columns", "PixelData") if pixels else ("Rows", "Columns")
    if not all(keyword in ds for keyword in needed):
        if "SOPClassUID" in ds and "StudyInstanceUID" in ds:
            sop = getattr(ds.SOPClassUID, "name", str(ds.SOPClassUID))
            reason = f"DICOM dataset without file preamble holds no image ({sop})"
        raise ImageReadError(path, reason)
    implicit, _little = ds.original_encoding
    if not hasattr(ds, "file_meta") or ds.file_meta is None:
        ds.file_meta = FileMetaDataset()
    if "TransferSyntaxUID" not in ds.file_meta:
        syntax = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
        ds.file_meta.TransferSyntaxUID = syntax
    return ds


def _floats(value: Any, count: int) -> NDArray[np.float64] | None:
    if value is None:
        return None
    try:
        numbers = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if numbers.shape != (count,) or not np.all(np.isfinite(numbers)):
        return None
    return numbers


@dataclass(frozen=True)
class FrameGeometry:
    """Where one 2D frame sits in the patient (DICOM LPS millimetres).

    ``position`` and ``orientation`` are ``None`` when the file carries no patient
    geometry (ultrasound, secondary capture, radiographs).
    """

    source: Path
    frame: int | None
    rows: int
    columns: int
    position: NDArray[np.float64] | None
    orientation: NDArray[np.float64] | None
    pixel_spacing: tuple[float, float]
    slice_thickness: float | None
    slope: float
    intercept: float

    @property
    def label(self) -> str:
        return self.source.name if self.frame is None else f"{self.source.name}[frame {self.frame}]"


def _first_item(container: Any, keyword: str) -> Any:
    seq = getattr(container, keyword, None) if container is not None else None
    return seq[0] if seq else None


def _functional(ds: Dataset, frame: Any, seq: str, attr: str) -> Any:
    """An attribute from a per-frame functional group, falling back to the shared one."""
    for group in (frame, _first_item(ds, "SharedFunctionalGroupsSequence")):
        item = _first_item(group, seq)
        if item is not None and attr in item:
            return item[attr].value
    return None


def _spacing(value: Any) -> tuple[float, float]:
    pair = _floats(value, 2)
    if pair is None or np.any(pair <= 0):
        return (1.0, 1.0)
    return (float(pair[0]), float(pair[1]))


def _thickness(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) and number > 0 else None


def _rescale(slope: Any, intercept: Any) -> tuple[float, float]:
    try:
        s = float(slope) if slope not in (None, "") else 1.0
        b = float(intercept) if intercept not in (None, "") else 0.0
    except (TypeError, ValueError):
        return (1.0, 0.0)
    if not (np.isfinite(s) and np.isfinite(b)):
        return (1.0, 0.0)
    return (s if s != 0 else 1.0, b)


def frame_geometries(ds: Dataset, path: Path) -> list[FrameGeometry]:
    """The geometry of every frame in ``ds`` (one item for a single-frame file)."""
    rows = int(header_value(ds, "Rows") or 0)
    cols = int(header_value(ds, "Columns") or 0)
    n_frames = int(header_value(ds, "NumberOfFrames") or 1)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame and len(per_frame) == n_frames:
        return [
            _enhanced_frame(ds, path, item, index, rows, cols)
            for index, item in enumerate(per_frame)
        ]
    spacing = header_value(ds, "PixelSpacing") or header_value(ds, "ImagerPixelSpacing")
    between = header_value(ds, "SpacingBetweenSlices") or header_value(ds, "SliceThickness")
    slope, intercept = _rescale(
        header_value(ds, "RescaleSlope"), header_value(ds, "RescaleIntercept")
    )
    base = FrameGeometry(
        source=path,
        frame=None,
        rows=rows,
        columns=cols,
        position=_floats(header_value(ds, "ImagePositionPatient"), 3),
        orientation=_floats(header_value(ds, "ImageOrientationPatient"), 6),
        pixel_spacing=_spacing(spacing),
        slice_thickness=_thickness(between),
        slope=slope,
        intercept=intercept,
    )
    if n_frames == 1:
        return [base]
    return [_shifted(base, index) for index in range(n_frames)]


def _shifted(base: FrameGeometry, index: int) -> FrameGeometry:
    """Frame ``index`` of a classic multi-frame file: stacked along the plane normal."""
    position = base.position
    if position is not None and base.orientation is not None:
        normal = np.cross(base.orientation[:3], base.orientation[3:])
        position = position + normal * (base.slice_thickness or 1.0) * index
    return FrameGeometry(
        base.source,
        index,
        base.rows,
        base.columns,
        position,
        base.orientation,
        base.pixel_spacing,
        base.slice_thickness,
        base.slope,
        base.intercept,
    )


def _enhanced_frame(
    ds: Dataset, path: Path, item: Any, index: int, rows: int, cols: int
) -> FrameGeometry:
    slope, intercept = _rescale(
        _functional(ds, item, "PixelValueTransformationSequence", "RescaleSlope"),
        _functional(ds, item, "PixelValueTransformationSequence", "RescaleIntercept"),
    )
    between = _functional(ds, item, "PixelMeasuresSequence", "SpacingBetweenSlices")
    thick = _functional(ds, item, "PixelMeasuresSequence", "SliceThickness")
    return FrameGeometry(
        source=path,
        frame=index,
        rows=rows,
        columns=cols,
        position=_floats(_functional(ds, item, "PlanePositionSequence", "ImagePositionPatient"), 3),
        orientation=_floats(
            _functional(ds, item, "PlaneOrientationSequence", "ImageOrientationPatient"), 6
        ),
        pixel_spacing=_spacing(_functional(ds, item, "PixelMeasuresSequence", "PixelSpacing")),
        slice_thickness=_thickness(between or thick),
        slope=slope,
        intercept=intercept,
    )


def dataset_meta(ds: Dataset, path: Path) -> dict[str, Any]:
    """JSON-friendly metadata worth keeping from a dataset."""
    meta: dict[str, Any] = {"source": str(path)}
    for keyword in META_KEYWORDS:
        value = ds.get(keyword)
        if value not in (None, ""):
            meta[keyword] = value if isinstance(value, int | float) else str(value)
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is not None:
        meta["TransferSyntaxUID"] = str(syntax)
    return meta

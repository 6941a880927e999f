"""Reading DICOM annotations onto an image grid: SEG segments and RTSTRUCT contours.

Both readers return one boolean ``(x, y, z)`` mask per segment or ROI name, on the grid
of a medai image read from the referenced series.

- **SEG**: each frame is placed by its own plane position and orientation, so frame
  order, omitted empty frames and a flipped in-plane orientation do not matter; a SEG
  whose frames do not coincide with the image's slices and pixels is refused (medai
  does not resample annotations). BINARY, FRACTIONAL (thresholded at one half) and
  LABELMAP segmentations are read.
- **RTSTRUCT**: every CLOSED_PLANAR contour is mapped from patient coordinates to voxel
  indices and filled on the slice it lies in (pixel centres inside the polygon, with
  ``skimage.draw.polygon``); contours of one ROI on one slice combine by the even-odd
  rule, so a contour inside another cuts a hole and disjoint contours add up.

Example:
    >>> image = read_dicom_series("study/", series_uid=referenced_series(seg_ds)[0])
    ... # doctest: +SKIP
    >>> masks, label_sets = read_seg_masks("study/seg.dcm", image)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.uid import RTStructureSetStorage, SegmentationStorage
from skimage.draw import polygon

from medai.errors import GeometryError, ImageReadError
from medai.image import Image
from medai.io._dicom_common import FrameGeometry, frame_geometries
from medai.io._guard import file_errors
from medai.io.dicom_geometry import LPS_TO_RAS

__all__ = [
    "LABELS_PREFIX",
    "AnnotationKind",
    "annotation_kind",
    "frames_of_reference",
    "read_rtstruct_masks",
    "read_seg_masks",
    "referenced_series",
    "referenced_sop_instances",
    "segment_description_labels",
]

logger = logging.getLogger(__name__)

#: Segment Description text with which :func:`medai.io.write_seg` records the label
#: values a segment covers (``"medai labels 2,3"``).
LABELS_PREFIX = "medai labels "

#: Voxel-index tolerance for a SEG frame or contour to count as lying on a slice.
PLANE_TOLERANCE = 0.1


class AnnotationKind(StrEnum):
    """The DICOM objects whose annotations can be imported."""

    SEG = "SEG"
    RTSTRUCT = "RTSTRUCT"


def annotation_kind(ds: Dataset) -> AnnotationKind | None:
    """``SEG``, ``RTSTRUCT``, or ``None`` for any other object."""
    sop = str(ds.get("SOPClassUID", ""))
    if sop == SegmentationStorage:
        return AnnotationKind.SEG
    if sop == RTStructureSetStorage:
        return AnnotationKind.RTSTRUCT
    return None


def referenced_series(ds: Dataset) -> list[str]:
    """The image series a SEG or RTSTRUCT says it annotates (possibly none)."""
    found = [str(item.SeriesInstanceUID) for item in ds.get("ReferencedSeriesSequence", [])]
    for frame_ref in ds.get("ReferencedFrameOfReferenceSequence", []):
        for study in frame_ref.get("RTReferencedStudySequence", []):
            for series in study.get("RTReferencedSeriesSequence", []):
                found.append(str(series.SeriesInstanceUID))
    return list(dict.fromkeys(found))


def frames_of_reference(ds: Dataset) -> dict[str, str]:
    """Where a SEG or RTSTRUCT's coordinates live: what (the object, or an ROI by name)
    -> Frame of Reference UID."""
    found: dict[str, str] = {}
    if ds.get("FrameOfReferenceUID"):
        found["the object"] = str(ds.FrameOfReferenceUID)
    for item in ds.get("ReferencedFrameOfReferenceSequence", []):
        if item.get("FrameOfReferenceUID"):
            found.setdefault("the object", str(item.FrameOfReferenceUID))
    for roi in ds.get("StructureSetROISequence", []):
        if roi.get("ReferencedFrameOfReferenceUID"):
            found[f"ROI {roi.get('ROIName', roi.get('ROINumber', '?'))!r}"] = str(
                roi.ReferencedFrameOfReferenceUID
            )
    return found


def referenced_sop_instances(ds: Dataset) -> set[str]:
    """SOP Instance UIDs of the images a SEG's frames or an RTSTRUCT's contours cite."""
    found: set[str] = set()
    for item in ds.get("ReferencedSeriesSequence", []):
        found.update(
            str(i.ReferencedSOPInstanceUID) for i in item.get("ReferencedInstanceSequence", [])
        )
    for roi in ds.get("ROIContourSequence", []):
        for contour in roi.get("ContourSequence", []):
            found.update(
                str(i.ReferencedSOPInstanceUID) for i in contour.get("ContourImageSequence", [])
            )
    return found


def segment_description_labels(text: str) -> list[int] | None:
    """The label values recorded in a Segment Description by :func:`write_seg`, or None."""
    if not text.startswith(LABELS_PREFIX):
        return None
    try:
        return [int(v) for v in text.removeprefix(LABELS_PREFIX).split(",")]
    except ValueError:
        return None


def _read(source: str | Path | Dataset) -> tuple[Path, Dataset]:
    if isinstance(source, Dataset):
        return Path(str(getattr(source, "filename", "") or "<dataset>")), source
    path = Path(source)
    with file_errors(path, "not a readable DICOM file"):
        return path, pydicom.dcmread(path)


def _unique_names(pairs: Iterable[tuple[int, str]]) -> dict[int, str]:
    names: dict[int, str] = {}
    for number, label in pairs:
        name = label.strip() or f"segment_{number}"
        names[number] = name if name not in names.values() else f"{name}_{number}"
    return names


# -- SEG ----------------------------------------------------------------------------------
def _voxel_map(geometry: FrameGeometry, inverse: NDArray[np.float64]) -> NDArray[np.int64]:
    """Integer ``(origin, column step, row step)`` voxel vectors of a SEG frame.

    Raises:
        GeometryError: If the frame's pixels are not voxels of the image grid.
    """
    if geometry.position is None or geometry.orientation is None:
        raise GeometryError(f"{geometry.label}: SEG frame has no plane position/orientation")
    row_sp, col_sp = geometry.pixel_spacing
    lps = np.stack(
        [
            np.append(geometry.position, 1.0),
            np.append(geometry.orientation[:3] * col_sp, 0.0),
            np.append(geometry.orientation[3:] * row_sp, 0.0),
        ],
        axis=1,
    )
    voxel = (inverse @ LPS_TO_RAS @ lps)[:3]  # columns: origin, +column, +row
    rounded = np.round(voxel)
    if np.max(np.abs(voxel - rounded)) > PLANE_TOLERANCE or not all(
        np.count_nonzero(rounded[:, i]) == 1 and np.abs(rounded[:, i]).sum() == 1 for i in (1, 2)
    ):
        raise GeometryError(
            f"{geometry.label}: SEG frame does not lie on the image grid (voxel map "
            f"{voxel.round(3).tolist()}); the SEG was made on another grid (resampling "
            "annotations is not supported)"
        )
    return rounded.astype(np.int64)


def _place(target: NDArray[np.bool_], plane: NDArray[np.bool_], vmap: NDArray[np.int64]) -> None:
    rows, cols = np.nonzero(plane)
    if rows.size == 0:
        return
    index = vmap[:, :1] + vmap[:, 1:2] * cols + vmap[:, 2:3] * rows  # (3, n)
    inside = np.all((index >= 0) & (index < np.asarray(target.shape)[:, None]), axis=0)
    if not inside.all():
        raise GeometryError(
            f"{int((~inside).sum())} segmented pixels lie outside the image volume "
            f"{target.shape}; the SEG covers another field of view"
        )
    target[index[0], index[1], index[2]] = True


def _frame_segments(ds: Dataset, n_frames: int) -> list[int | None]:
    """The segment number of each frame (``None`` for a LABELMAP SEG)."""
    if str(ds.get("SegmentationType", "")) == "LABELMAP":
        return [None] * n_frames
    shared = ds.get("SharedFunctionalGroupsSequence", [Dataset()])[0]
    out: list[int | None] = []
    for item in ds.get("PerFrameFunctionalGroupsSequence", [Dataset()] * n_frames):
        ident = item.get("SegmentIdentificationSequence") or shared.get(
            "SegmentIdentificationSequence"
        )
        out.append(int(ident[0].ReferencedSegmentNumber))
    return out


def _seg_frames(ds: Dataset) -> NDArray[Any]:
    pixels = ds.pixel_array
    frames = pixels.reshape(-1, int(ds.Rows), int(ds.Columns))
    if str(ds.get("SegmentationType", "")) == "FRACTIONAL":
        top = float(ds.get("MaximumFractionalValue", 255))
        return frames >= top / 2.0
    return frames


def read_seg_masks(
    seg: str | Path | Dataset, image: Image
) -> tuple[dict[str, NDArray[np.bool_]], dict[str, list[int]] | None]:
    """One ``(x, y, z)`` mask per segment (by Segment Label) on ``image``'s grid.

    Returns:
        ``(masks, label_sets)``: ``label_sets`` maps each segment to the label values
        :func:`medai.io.write_seg` recorded for it, or is ``None`` when the SEG was not
        written by medai.

    Raises:
        ImageReadError: If the file cannot be read or is not a SEG.
        GeometryError: If the frames do not lie on ``image``'s grid.
    """
    path, ds = _read(seg)
    if annotation_kind(ds) is not AnnotationKind.SEG:
        raise ImageReadError(path, "not a DICOM Segmentation (SEG)")
    with file_errors(path, "unreadable SEG content"):
        segments = {int(s.SegmentNumber): s for s in ds.SegmentSequence}
        names = _unique_names((n, str(s.get("SegmentLabel", ""))) for n, s in segments.items())
        frames = _seg_frames(ds)
        geometries = frame_geometries(ds, path)
        numbers = _frame_segments(ds, len(frames))
    inverse = np.linalg.inv(image.affine).astype(np.float64)
    masks = {name: np.zeros(image.shape, dtype=bool) for name in names.values()}
    for plane, geometry, number in zip(frames, geometries, numbers, strict=True):
        vmap = _voxel_map(geometry, inverse)
        for value in [number] if number is not None else np.unique(plane[plane > 0]).tolist():
            if value not in names:
                raise ImageReadError(path, f"a frame refers to undefined segment {value}")
            selected = plane != 0 if number is not None else plane == value
            _place(masks[names[value]], selected, vmap)
    recorded = {
        names[n]: segment_description_labels(str(s.get("SegmentDescription", "")))
        for n, s in segments.items()
    }
    label_sets = {k: v for k, v in recorded.items() if v is not None}
    return masks, (label_sets if len(label_sets) == len(names) else None)


# -- RTSTRUCT -----------------------------------------------------------------------------
def _contour_slice(
    points: NDArray[np.float64], inverse: NDArray[np.float64], depth: int, where: str
) -> tuple[int, NDArray[np.float64]] | None:
    """The slice index and in-plane voxel coordinates of one contour, or None."""
    ras = points @ LPS_TO_RAS[:3, :3].T
    voxel = ras @ inverse[:3, :3].T + inverse[:3, 3]
    k = int(np.round(np.median(voxel[:, 2])))
    if np.max(np.abs(voxel[:, 2] - k)) > PLANE_TOLERANCE or not 0 <= k < depth:
        logger.warning("%s: a contour does not lie on an image slice; skipped", where)
        return None
    return k, voxel[:, :2]


def _roi_mask(roi: Dataset, image: Image, where: str) -> NDArray[np.bool_]:
    inverse = np.linalg.inv(image.affine).astype(np.float64)
    nx, ny, nz = image.shape
    mask = np.zeros(image.shape, dtype=bool)
    for contour in roi.get("ContourSequence", []):
        kind = str(contour.get("ContourGeometricType", ""))
        data = np.asarray(contour.get("ContourData", []), dtype=np.float64)
        if kind != "CLOSED_PLANAR" or data.size < 9:
            logger.info("%s: %s contour with %d points skipped", where, kind, data.size // 3)
            continue
        placed = _contour_slice(data.reshape(-1, 3), inverse, nz, where)
        if placed is None:
            continue
        k, xy = placed
        rr, cc = polygon(xy[:, 0], xy[:, 1], shape=(nx, ny))
        filled = np.zeros((nx, ny), dtype=bool)
        filled[rr, cc] = True
        mask[:, :, k] ^= filled  # even-odd: nested contours are holes
    return mask


def read_rtstruct_masks(
    rtstruct: str | Path | Dataset, image: Image
) -> dict[str, NDArray[np.bool_]]:
    """One ``(x, y, z)`` mask per ROI (by ROI Name) of an RT Structure Set, on ``image``'s grid.

    Raises:
        ImageReadError: If the file cannot be read or is not an RTSTRUCT.
    """
    path, ds = _read(rtstruct)
    if annotation_kind(ds) is not AnnotationKind.RTSTRUCT:
        raise ImageReadError(path, "not a DICOM RT Structure Set (RTSTRUCT)")
    with file_errors(path, "unreadable RTSTRUCT content"):
        names = _unique_names(
            (int(r.ROINumber), str(r.get("ROIName", ""))) for r in ds.StructureSetROISequence
        )
        masks = {name: np.zeros(image.shape, dtype=bool) for name in names.values()}
        for roi in ds.get("ROIContourSequence", []):
            number = int(roi.ReferencedROINumber)
            if number not in names:
                raise ImageReadError(path, f"contours refer to undefined ROI number {number}")
            masks[names[number]] |= _roi_mask(roi, image, f"{path.name} ROI {names[number]!r}")
    return masks

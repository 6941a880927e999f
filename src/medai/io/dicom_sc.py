"""A secondary-capture overlay a plain viewer can show: each source slice in grey with the
segmentation outlines in colour, one RGB Secondary Capture instance per slice.

The frames have the source slices' rows and columns (no resampling), instance numbers
follow the slice order along the slice normal, and each instance references the source
instance it was made from. The series appears atomically: files are written into a
hidden staging folder, flushed, and the folder is renamed into place (replacing an
earlier run's folder, whose UIDs are the same).

Example:
    >>> write_overlay_sc(flair, label, "study/flair", regions=regions, algorithm=algo,
    ...                  out_dir="out/overlay")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import shutil
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.uid import UID
from scipy import ndimage

from medai.errors import ImageWriteError
from medai.fsutil import publish_folder
from medai.image import LabelMap, ScalarImage
from medai.io.dicom_derived import AlgorithmInfo, OutputKind, derived_uid, region_colour
from medai.io.dicom_source import SourceLike, SourceSeries

__all__ = ["overlay_rgb", "write_overlay_sc"]

logger = logging.getLogger(__name__)

_LETTERS = (("L", "R"), ("P", "A"), ("H", "F"))  # +x, -x ... of DICOM's LPS axes


def _grey(volume: NDArray[Any]) -> NDArray[np.uint8]:
    """Intensities windowed to the 0.5–99.5 percentiles, as 8-bit grey."""
    finite = volume[np.isfinite(volume)]
    if finite.size == 0:
        return np.zeros(volume.shape, np.uint8)
    lo, hi = (float(v) for v in np.percentile(finite, [0.5, 99.5]))
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    scaled = np.nan_to_num((volume - lo) * scale, nan=0.0)
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)


def overlay_rgb(
    image: NDArray[Any],
    masks: Sequence[NDArray[np.bool_]],
    colours: Sequence[tuple[int, int, int]],
) -> NDArray[np.uint8]:
    """``(x, y, z, 3)`` RGB: ``image`` in grey, each mask's in-slice outline in its colour.

    Later masks are drawn over earlier ones (pass nested regions outermost first).
    """
    grey = _grey(np.asarray(image, dtype=np.float64))
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    cross = np.zeros((3, 3, 3), bool)
    cross[1, :, 1] = cross[:, 1, 1] = True  # in-plane 4-neighbourhood: outlines per slice
    for mask, colour in zip(masks, colours, strict=True):
        outline = mask & ~ndimage.binary_erosion(mask, structure=cross, border_value=0)
        rgb[outline] = colour
    return rgb


def _orientation(vector: NDArray[np.float64]) -> str:
    """Patient Orientation letters of an LPS direction, most significant first."""
    order = np.argsort(-np.abs(vector))
    letters = [
        _LETTERS[axis][0 if vector[axis] > 0 else 1] for axis in order if abs(vector[axis]) > 0.05
    ]
    return "".join(letters)


def _source_reference(ds: Dataset, frame: int | None) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = ds.SOPClassUID
    item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    if frame is not None:
        item.ReferencedFrameNumber = frame + 1
    return item


def _slice_fields(series: SourceSeries, z: int) -> tuple[Dataset, Dataset, list[str], list[float]]:
    """Slice ``z``'s source instance, its reference, Patient Orientation and Pixel Spacing."""
    ref, frame = series.dataset_of_slice(z)
    geometry = series.frames[series.slice_of_frame.index(z)][0]
    iop = geometry.orientation if geometry.orientation is not None else np.array([1, 0, 0, 0, 1, 0])
    orientation = [_orientation(iop[:3]), _orientation(iop[3:])]
    spacing = [float(v) for v in geometry.pixel_spacing]
    return ref, _source_reference(ref, frame), orientation, spacing


def _first_instance(
    series: SourceSeries,
    plane: NDArray[np.uint8],
    algorithm: AlgorithmInfo,
    series_number: int,
    description: str,
) -> hd.sc.SCImage:
    """The overlay instance of slice 0, built (and checked) by highdicom."""
    ref, reference, orientation, spacing = _slice_fields(series, 0)
    seed = series.sop_uids
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=ref,
        pixel_array=plane,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=derived_uid(algorithm, seed, OutputKind.SC, "series"),
        series_number=series_number,
        sop_instance_uid=derived_uid(algorithm, seed, OutputKind.SC, "instance", 0),
        instance_number=1,
        manufacturer=algorithm.manufacturer,
        pixel_spacing=spacing,  # type: ignore[arg-type]
        patient_orientation=(orientation[0][0], orientation[1][0]),
        transfer_syntax_uid=hd.UID("1.2.840.10008.1.2.1"),
    )
    sc.PatientOrientation = orientation
    sc.SourceImageSequence = [reference]
    sc.DerivationDescription = f"{algorithm.name} {algorithm.version} segmentation outlines"[:1024]
    sc.SeriesDescription = description
    algorithm.stamp(sc)
    sc.BurnedInAnnotation = "NO"
    # Type 2C; dciodvfy reports an absent Laterality as an error where it cannot tell
    # whether the body part is paired, and an empty one only as a warning.
    sc.Laterality = ref.get("Laterality", "")
    return sc


def _move_to_slice(
    sc: Dataset,
    series: SourceSeries,
    plane: NDArray[np.uint8],
    z: int,
    algorithm: AlgorithmInfo,
    seed: list[str],
) -> None:
    """Turn the overlay instance ``sc`` (already saved) into slice ``z``'s: its pixels,
    UID, number, orientation, spacing and source reference. All else is the header
    every instance of the series shares, so one highdicom-built instance serves all."""
    _ref, reference, orientation, spacing = _slice_fields(series, z)
    uid = UID(derived_uid(algorithm, seed, OutputKind.SC, "instance", z))
    sc.SOPInstanceUID = sc.file_meta.MediaStorageSOPInstanceUID = uid
    sc.InstanceNumber = z + 1
    sc.PatientOrientation = orientation
    sc.PixelSpacing = spacing
    sc.SourceImageSequence = [reference]
    sc.PixelData = plane.tobytes()


def write_overlay_sc(
    image: ScalarImage,
    labels: LabelMap,
    source: SourceLike | SourceSeries,
    *,
    regions: Mapping[str, Sequence[int]],
    algorithm: AlgorithmInfo,
    out_dir: str | Path,
    series_number: int = 903,
    series_description: str | None = None,
) -> list[Path]:
    """Write one RGB Secondary Capture per source slice: ``image`` with region outlines.

    Args:
        image: One channel of the source series, on its grid (e.g. the FLAIR it was read as).
        labels: Label map on the same grid.
        source: The source series (folder, files, datasets or :class:`SourceSeries`).
        regions: Region name → label values; drawn in this order (outermost first).
        algorithm: The bundle that produced ``labels``.
        out_dir: Folder for the series (``sc_0001.dcm`` ...); replaced if present.
        series_number: Series Number of the overlay series.
        series_description: Defaults to ``"<algorithm name> overlay"``.

    Returns:
        The files, in slice order.

    Raises:
        GeometryError: If ``image`` or ``labels`` is not on the source grid.
        ImageWriteError: If ``out_dir`` exists and is not a folder.
    """
    if not isinstance(image, ScalarImage) or not isinstance(labels, LabelMap):
        raise TypeError("image must be a ScalarImage and labels a LabelMap")
    series = source if isinstance(source, SourceSeries) else SourceSeries.load(source)
    grey = series.on_grid(image, what="image")
    volume = series.on_grid(labels)
    masks = [np.isin(volume, np.asarray(list(v))) for v in regions.values()]
    colours = [region_colour(name, i) for i, name in enumerate(regions)]
    rgb = overlay_rgb(grey, masks, colours)  # (x, y, z, 3)
    folder = Path(out_dir)
    if folder.exists() and not folder.is_dir():
        raise ImageWriteError(f"{folder} exists and is not a folder; choose another out_dir")
    description = (series_description or f"{algorithm.name} overlay")[:64]
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.with_name(f".{folder.name}.tmp-{uuid.uuid4().hex[:8]}")
    staging.mkdir()
    names = [f"sc_{z + 1:04d}.dcm" for z in range(series.shape[2])]
    try:
        seed = series.sop_uids
        sc: Dataset | None = None
        for z, name in enumerate(names):
            plane = np.ascontiguousarray(rgb[:, :, z].transpose(1, 0, 2))  # (rows, columns, 3)
            if sc is None:
                sc = _first_instance(series, plane, algorithm, series_number, description)
            else:
                _move_to_slice(sc, series, plane, z, algorithm, seed)
            sc.save_as(staging / name, enforce_file_format=True)
        publish_folder(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("wrote %d secondary-capture overlay slices to %s", len(names), folder)
    return [folder / name for name in names]

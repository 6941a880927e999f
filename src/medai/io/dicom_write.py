"""Writing a volume as a DICOM MR or CT Image Storage series (one file per z-slice).

Geometry goes into ImagePositionPatient / ImageOrientationPatient / PixelSpacing
(RAS+ converted to DICOM's LPS); intensities into 16-bit integers with a rescale
slope/intercept chosen so the decoded values are within half a step of the input
(exact for integer data that fits in 16 bits). The series appears atomically: the
files are written into a hidden sibling folder, flushed to disk, and the folder is
renamed into place.

Example:
    >>> paths = write_dicom_series(image, "out/series1", patient_id="P1",
    ...                            patient_name="Doe^Jane")  # doctest: +SKIP
"""

from __future__ import annotations

import datetime as dt
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)
from pydicom.valuerep import format_number_as_ds

from medai.errors import ConfigError, ImageWriteError
from medai.fsutil import publish_folder
from medai.image import Image
from medai.io.dicom_geometry import LPS_TO_RAS

__all__ = ["write_dicom_series"]

_SOP_CLASS = {"MR": MRImageStorage, "CT": CTImageStorage}


def _ds(value: float) -> str:
    return str(format_number_as_ds(float(value)))


@dataclass(frozen=True)
class _Encoding:
    values: NDArray[Any]
    slope: str
    intercept: str
    signed: bool


def _encode(data: NDArray[Any]) -> _Encoding:
    """Map ``data`` onto int16/uint16 plus a rescale that decodes back within slope/2."""
    values = np.asarray(data, dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise ImageWriteError("image holds NaN or infinite values; DICOM cannot store them")
    lo, hi = float(values.min()), float(values.max())
    if np.array_equal(values, np.round(values)):
        if lo >= -32768 and hi <= 32767:
            return _Encoding(values.astype(np.int16), "1", "0", True)
        if lo >= 0 and hi <= 65535:
            return _Encoding(values.astype(np.uint16), "1", "0", False)
    slope_str = _ds((hi - lo) / 65534.0 if hi > lo else 1.0)
    slope = float(slope_str)
    intercept_str = _ds(lo + 32767.0 * slope)
    intercept = float(intercept_str)
    ints = np.clip(np.round((values - intercept) / slope), -32768, 32767)
    return _Encoding(ints.astype(np.int16), slope_str, intercept_str, True)


def _date(value: dt.date | str | None) -> str:
    if value is None:
        return dt.date.today().strftime("%Y%m%d")
    if isinstance(value, dt.date):
        return value.strftime("%Y%m%d")
    text = str(value).replace("-", "")
    if len(text) != 8 or not text.isdigit():
        raise ValueError(f"study_date must be a date or 'YYYYMMDD'; got {value!r}")
    return text


def _validate(image: Image, modality: str, patient_id: str, extra: Mapping[str, Any]) -> None:
    if not isinstance(image, Image):
        raise TypeError(f"image must be a ScalarImage or LabelMap; got {type(image).__name__}")
    if image.num_channels != 1:
        raise ImageWriteError(
            f"a DICOM MR/CT series holds one channel; image has {image.num_channels} "
            "(write each with image.channel(i))"
        )
    if modality not in _SOP_CLASS:
        raise ConfigError(f"modality must be one of {sorted(_SOP_CLASS)}; got {modality!r}")
    if not patient_id or len(patient_id) > 64:
        raise ConfigError(f"patient_id must be 1-64 characters; got {patient_id!r}")
    for keyword in extra:
        if tag_for_keyword(keyword) is None:
            raise ValueError(f"extra: {keyword!r} is not a DICOM attribute keyword")


def _series_dataset(
    image: Image, modality: str, common: Mapping[str, Any], extra: Mapping[str, Any]
) -> Dataset:
    """Attributes shared by every slice of the series."""
    lps = LPS_TO_RAS @ image.affine
    sx, sy, sz = (float(np.linalg.norm(lps[:3, i])) for i in range(3))
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL" if modality == "CT" else "OTHER"]
    ds.SOPClassUID = _SOP_CLASS[modality]
    ds.Modality = modality
    ds.Manufacturer = "medai"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyID = "1"
    ds.PatientPosition = "HFS"
    ds.PositionReferenceIndicator = ""
    ds.FrameOfReferenceUID = generate_uid()
    for keyword, value in common.items():
        setattr(ds, keyword, value)
    direction = np.concatenate([lps[:3, 0] / sx, lps[:3, 1] / sy])
    ds.ImageOrientationPatient = [_ds(v) for v in direction]
    ds.PixelSpacing = [_ds(sy), _ds(sx)]
    ds.SliceThickness = _ds(sz)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = image.shape[1], image.shape[0]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    if modality == "MR":
        ds.SpacingBetweenSlices = _ds(sz)
        ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = "RM", "NONE", ""
        ds.MRAcquisitionType, ds.EchoTime, ds.EchoTrainLength = "3D", "", ""
    else:
        ds.KVP, ds.AcquisitionNumber = "", ""
    for keyword, value in extra.items():
        setattr(ds, keyword, value)
    return ds


def _slice_file(base: Dataset, enc: _Encoding, lps: NDArray[np.float64], k: int) -> Dataset:
    ds = Dataset()
    ds.update(base)
    ds.SOPInstanceUID = generate_uid()
    ds.InstanceNumber = k + 1
    position = lps[:3, 3] + k * lps[:3, 2]
    normal = np.cross(lps[:3, 0], lps[:3, 1])
    ds.ImagePositionPatient = [_ds(v) for v in position]
    ds.SliceLocation = _ds(float(position @ normal / np.linalg.norm(normal)))
    ds.PixelRepresentation = 1 if enc.signed else 0
    ds.RescaleIntercept, ds.RescaleSlope = enc.intercept, enc.slope
    ds.RescaleType = "HU" if base.Modality == "CT" else "US"
    plane = np.ascontiguousarray(enc.values[:, :, k].T)
    ds.PixelData = plane.astype(plane.dtype.newbyteorder("<")).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = base.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return ds


def write_dicom_series(
    image: Image,
    folder: str | Path,
    *,
    modality: str = "MR",
    patient_id: str,
    patient_name: str,
    study_uid: str | None = None,
    series_uid: str | None = None,
    series_number: int = 1,
    series_description: str = "",
    study_description: str = "",
    study_date: dt.date | str | None = None,
    extra: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """Write ``image`` as a DICOM MR or CT series, one file per z-slice.

    Args:
        image: Single-channel image; its affine becomes the patient geometry.
        folder: Output folder; must not exist or be empty unless ``overwrite``.
        modality: ``"MR"`` or ``"CT"`` (MR / CT Image Storage).
        patient_id: PatientID. patient_name: PatientName (``Family^Given``).
        study_uid: StudyInstanceUID; new when omitted. series_uid: likewise.
        series_number: SeriesNumber. series_description, study_description: free text.
        study_date: ``datetime.date`` or ``'YYYYMMDD'``; today when omitted.
        extra: More attributes by keyword (``{"PatientSex": "F"}``), set on every file.
        overwrite: Replace an existing non-empty ``folder``.

    Returns:
        The written files, ordered by InstanceNumber (= array index z + 1).

    Raises:
        ConfigError: On a bad modality or patient id.
        ImageWriteError: On multi-channel or non-finite data, or an occupied folder.
        ValueError: On a bad ``extra`` keyword or study date.
    """
    folder = Path(folder)
    extra = dict(extra or {})
    _validate(image, modality, patient_id, extra)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())) and not overwrite:
        raise ImageWriteError(
            f"{folder} exists and is not empty; pass overwrite=True (--overwrite) to replace it"
        )
    date = _date(study_date)
    common: dict[str, Any] = {
        "PatientID": patient_id,
        "PatientName": patient_name,
        "StudyInstanceUID": study_uid or generate_uid(),
        "SeriesInstanceUID": series_uid or generate_uid(),
        "SeriesNumber": int(series_number),
        "SeriesDescription": series_description,
        "StudyDescription": study_description,
        "StudyDate": date,
        "SeriesDate": date,
        "ContentDate": date,
        "StudyTime": "120000",
    }
    data = image.numpy3d()
    enc = _encode(data)
    lo, hi = float(np.min(data)), float(np.max(data))
    common["WindowCenter"] = _ds((lo + hi) / 2)
    common["WindowWidth"] = _ds(max(hi - lo, 1.0))
    base = _series_dataset(image, modality, common, extra)
    lps = LPS_TO_RAS @ image.affine
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.with_name(f".{folder.name}.tmp-{uuid.uuid4().hex[:8]}")
    staging.mkdir()
    try:
        names = [f"slice_{k + 1:04d}.dcm" for k in range(image.shape[2])]
        for k, name in enumerate(names):
            _slice_file(base, enc, lps, k).save_as(staging / name, enforce_file_format=True)
        publish_folder(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [folder / name for name in names]

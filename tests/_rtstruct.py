"""An RT Structure Set written with pydicom from known polygons, for the import tests.

Polygons are given per slice in continuous voxel coordinates ``(i, j)`` of the image grid
(``i`` along columns, ``j`` along rows, pixel centres at integers) and written as
CLOSED_PLANAR contours in patient coordinates (LPS mm) through the image's affine, so the
expected mask is known exactly: the pixel centres inside the polygons (even-odd rule).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pydicom
from matplotlib.path import Path as PolygonPath
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, RTStructureSetStorage, generate_uid

from medai.image import Image
from medai.io.dicom_geometry import LPS_TO_RAS

#: ROI name -> [(slice index k, polygon vertices (n, 2) in voxel (i, j))].
Contours = Mapping[str, Sequence[tuple[int, np.ndarray]]]


def ellipse(centre: tuple[float, float], radii: tuple[float, float], n: int = 48) -> np.ndarray:
    """``n`` vertices of an ellipse, counter-clockwise, in voxel coordinates."""
    t = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    return np.stack([centre[0] + radii[0] * np.cos(t), centre[1] + radii[1] * np.sin(t)], axis=1)


def expected_masks(contours: Contours, shape: tuple[int, int, int]) -> dict[str, np.ndarray]:
    """The pixel centres inside each ROI's polygons, per slice by the even-odd rule."""
    ii, jj = np.indices(shape[:2])
    centres = np.stack([ii.ravel(), jj.ravel()], axis=1).astype(float)
    out = {}
    for name, items in contours.items():
        mask = np.zeros(shape, bool)
        for k, polygon in items:
            inside = PolygonPath(polygon).contains_points(centres).reshape(shape[:2])
            mask[:, :, k] ^= inside
        out[name] = mask
    return out


def _patient_points(image: Image, k: int, polygon: np.ndarray) -> list[float]:
    voxel = np.column_stack([polygon, np.full(len(polygon), float(k)), np.ones(len(polygon))])
    lps = (np.linalg.inv(LPS_TO_RAS) @ image.affine @ voxel.T)[:3].T
    return [round(float(v), 6) for v in lps.ravel()]


def _header(source: Dataset) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RTStructureSetStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = RTStructureSetStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "RTSTRUCT"
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex"):
        setattr(ds, keyword, source.get(keyword, ""))
    for keyword in ("StudyInstanceUID", "StudyDate", "StudyTime", "StudyID"):
        setattr(ds, keyword, source.get(keyword, ""))
    ds.AccessionNumber = source.get("AccessionNumber", "")
    ds.ReferringPhysicianName = source.get("ReferringPhysicianName", "")
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 700
    ds.InstanceNumber = 1
    ds.Manufacturer = "medai tests"
    ds.OperatorsName = ""
    ds.StructureSetLabel = "test contours"
    ds.StructureSetDate = "20240102"
    ds.StructureSetTime = "120000"
    return ds


def write_rtstruct(
    path: Path, series_folder: Path, image: Image, contours: Contours
) -> pydicom.Dataset:
    """Write ``contours`` (on ``image``, read from ``series_folder``) as an RTSTRUCT."""
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(series_folder.glob("*"))]
    inverse = np.linalg.inv(image.affine)
    slice_of = {}
    for src in sources:
        ras = LPS_TO_RAS[:3, :3] @ np.asarray(src.ImagePositionPatient, float)
        slice_of[round(float((inverse[:3, :3] @ ras + inverse[:3, 3])[2]))] = src
    first = sources[0]
    ds = _header(first)
    frame = str(first.FrameOfReferenceUID)
    ds.FrameOfReferenceUID = frame  # Frame of Reference module (in the IOD since 2023)
    ds.PositionReferenceIndicator = ""

    def image_ref(src: Dataset) -> Dataset:
        item = Dataset()
        item.ReferencedSOPClassUID = src.SOPClassUID
        item.ReferencedSOPInstanceUID = src.SOPInstanceUID
        return item

    series = Dataset()
    series.SeriesInstanceUID = first.SeriesInstanceUID
    series.ContourImageSequence = [image_ref(s) for s in sources]
    study = Dataset()
    study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"  # Detached Study Management
    study.ReferencedSOPInstanceUID = first.StudyInstanceUID
    study.RTReferencedSeriesSequence = [series]
    frame_ref = Dataset()
    frame_ref.FrameOfReferenceUID = frame
    frame_ref.RTReferencedStudySequence = [study]
    ds.ReferencedFrameOfReferenceSequence = [frame_ref]
    ds.StructureSetROISequence = []
    ds.ROIContourSequence = []
    ds.RTROIObservationsSequence = []
    for number, (name, items) in enumerate(contours.items(), start=1):
        roi = Dataset()
        roi.ROINumber = number
        roi.ReferencedFrameOfReferenceUID = frame
        roi.ROIName = name
        roi.ROIGenerationAlgorithm = "MANUAL"
        ds.StructureSetROISequence.append(roi)
        roi_contour = Dataset()
        roi_contour.ReferencedROINumber = number
        roi_contour.ROIDisplayColor = [255, 0, 0]
        roi_contour.ContourSequence = []
        for k, polygon in items:
            contour = Dataset()
            contour.ContourImageSequence = [image_ref(slice_of[k])]
            contour.ContourGeometricType = "CLOSED_PLANAR"
            contour.NumberOfContourPoints = len(polygon)
            contour.ContourData = _patient_points(image, k, polygon)
            roi_contour.ContourSequence.append(contour)
        ds.ROIContourSequence.append(roi_contour)
        observation = Dataset()
        observation.ObservationNumber = number
        observation.ReferencedROINumber = number
        observation.RTROIInterpretedType = "GTV"
        observation.ROIInterpreter = ""
        ds.RTROIObservationsSequence.append(observation)
    ds.save_as(path, enforce_file_format=True)
    return ds

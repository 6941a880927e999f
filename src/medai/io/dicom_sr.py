"""Writing measurements as a DICOM Comprehensive 3D SR, TID 1500 Measurement Report.

One TID 1411 volumetric measurement group per SEG segment, referencing that segment
and the source series, holding the region's volume in millilitres (UCUM ``ml``,
sum-of-voxels method) and, on request, radiomics features; the uncertainty score, a
property of the whole prediction, is a TID 1501 group of its own. Every source instance
and the SEG are listed as evidence. Feature names have no standard code, so they are
coded in the private scheme ``99MEDAI`` (declared in the SR's Coding Scheme
Identification), with the feature name as the code meaning (see :func:`feature_concept`).

Example:
    >>> volumes = region_volumes_ml(label, regions)  # doctest: +SKIP
    >>> write_sr(volumes, "study/t1ce", seg="out/seg.dcm", algorithm=algo,
    ...          out_path="out/sr.dcm", uncertainty=0.12)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import SegmentationStorage

from medai.errors import ImageWriteError
from medai.fsutil import atomic_path
from medai.image import LabelMap
from medai.io._guard import file_errors
from medai.io.dicom_derived import AlgorithmInfo, OutputKind, derived_uid
from medai.io.dicom_source import SourceLike, SourceSeries

__all__ = ["PRIVATE_SCHEME", "feature_concept", "region_volumes_ml", "write_sr"]

logger = logging.getLogger(__name__)

#: Coding scheme of medai's feature names and uncertainty score (a "99" scheme is local).
PRIVATE_SCHEME = "99MEDAI"
_CodedConcept = hd.sr.CodedConcept
_ML = _CodedConcept("ml", "UCUM", "milliliter")
_UCUM_MEANINGS = {
    "1": "no units",
    "ml": "milliliter",
    "mm": "millimeter",
    "mm2": "square millimeter",
    "mm3": "cubic millimeter",
    "%": "percent",
}
_UNCERTAINTY = _CodedConcept("uncertainty", PRIVATE_SCHEME, "Segmentation uncertainty score")
_PROCEDURES = {"MR": codes.LN.MRIUnspecifiedBodyRegion, "CT": codes.LN.CTUnspecifiedBodyRegion}


def region_volumes_ml(labels: LabelMap, regions: Mapping[str, Sequence[int]]) -> dict[str, float]:
    """Each region's volume in millilitres (voxel count × voxel volume)."""
    if not isinstance(labels, LabelMap):
        raise TypeError(f"labels must be a LabelMap; got {type(labels).__name__}")
    voxel_ml = abs(float(np.linalg.det(labels.affine[:3, :3]))) / 1000.0
    data = labels.array
    return {
        name: float(np.count_nonzero(np.isin(data, np.asarray(list(members))))) * voxel_ml
        for name, members in regions.items()
    }


def feature_concept(name: str) -> hd.sr.CodedConcept:
    """The ``99MEDAI`` code of a feature: the name itself when it fits a Code Value
    (16 characters), else ``"h"`` + 15 hex digits of its SHA-256; the meaning is the name.

    (A Long Code Value would fit any name, but highdicom 0.28 cannot read measurement
    groups that hold one back.)
    """
    value = name if len(name) <= 16 else "h" + hashlib.sha256(name.encode()).hexdigest()[:15]
    return _CodedConcept(value, PRIVATE_SCHEME, name[:64])


def _unit(code: str) -> hd.sr.CodedConcept:
    return _CodedConcept(code, "UCUM", _UCUM_MEANINGS.get(code, code))


def _concept(item: Dataset) -> hd.sr.CodedConcept:
    """The code of ``item`` alone (without nested modifier sequences)."""
    return _CodedConcept(str(item.CodeValue), str(item.CodingSchemeDesignator), item.CodeMeaning)


def _load_seg(seg: str | Path | Dataset, source: SourceSeries) -> Dataset:
    if isinstance(seg, Dataset):
        ds = seg
    else:
        with file_errors(seg, "not a readable DICOM file; pass the SEG write_seg wrote"):
            ds = pydicom.dcmread(seg, stop_before_pixels=True)
    if str(ds.get("SOPClassUID", "")) != SegmentationStorage:
        raise ImageWriteError("seg must be a DICOM Segmentation (the file write_seg wrote)")
    referenced = {str(item.SeriesInstanceUID) for item in ds.get("ReferencedSeriesSequence", [])}
    if source.series_uid not in referenced:
        raise ImageWriteError(
            f"the SEG refers to series {sorted(referenced)}, not to the source series "
            f"{source.series_uid}; pass the source the SEG was written for"
        )
    return ds


def _segments(seg: Dataset) -> dict[str, Dataset]:
    return {str(item.SegmentLabel): item for item in seg.SegmentSequence}


def _feature_measurements(
    values: Mapping[str, float], units: Mapping[str, str], algorithm: AlgorithmInfo
) -> list[hd.sr.Measurement]:
    out = []
    for name, value in values.items():
        if not math.isfinite(float(value)):
            logger.warning("feature %s is %s; left out of the SR", name, value)
            continue
        out.append(
            hd.sr.Measurement(
                name=feature_concept(name),
                value=float(value),
                unit=_unit(units.get(name, "1")),
                algorithm_id=algorithm.sr_identification(),
            )
        )
    return out


def _region_group(
    name: str,
    segment: Dataset,
    seg: Dataset,
    source: SourceSeries,
    measurements: list[hd.sr.Measurement],
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    reference = hd.sr.ReferencedSegment(
        sop_class_uid=str(seg.SOPClassUID),
        sop_instance_uid=str(seg.SOPInstanceUID),
        segment_number=int(segment.SegmentNumber),
        source_series=hd.sr.SourceSeriesForSegmentation(source.series_uid),
    )
    tracking_uid = str(segment.get("TrackingUID", "") or hd.UID())
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=tracking_uid, identifier=name),
        referenced_segment=reference,
        finding_type=_concept(segment.SegmentedPropertyTypeCodeSequence[0]),
        finding_category=_concept(segment.SegmentedPropertyCategoryCodeSequence[0]),
        measurements=measurements,
    )


def _groups(
    volumes_ml: Mapping[str, float],
    seg: Dataset,
    source: SourceSeries,
    algorithm: AlgorithmInfo,
    features: Mapping[str, Mapping[str, float]],
    units: Mapping[str, str],
) -> list[hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations]:
    segments = _segments(seg)
    unknown = sorted((set(volumes_ml) | set(features)) - set(segments))
    if unknown:
        raise ValueError(
            f"regions {unknown} are not segments of the SEG (its segments: {sorted(segments)})"
        )
    groups = []
    for name, volume in volumes_ml.items():
        volume_measurement = hd.sr.Measurement(
            name=codes.SCT.Volume,
            value=float(volume),
            unit=_ML,
            method=codes.DCM.SumOfSegmentedVoxelMethodForVolume,
            algorithm_id=algorithm.sr_identification(),
        )
        extra = _feature_measurements(features.get(name, {}), units, algorithm)
        groups.append(
            _region_group(name, segments[name], seg, source, [volume_measurement, *extra])
        )
    return groups


def _uncertainty_group(
    value: float, algorithm: AlgorithmInfo, seed: Sequence[str]
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    if not math.isfinite(value):
        raise ValueError(f"uncertainty must be a finite number; got {value}")
    measurement = hd.sr.Measurement(
        name=_UNCERTAINTY,
        value=float(value),
        unit=_unit("1"),
        algorithm_id=algorithm.sr_identification(),
    )
    tracking = hd.sr.TrackingIdentifier(
        uid=derived_uid(algorithm, seed, OutputKind.SR, "uncertainty"), identifier="uncertainty"
    )
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking, measurements=[measurement]
    )


def _observation_context(algorithm: AlgorithmInfo, seed: Sequence[str]) -> hd.sr.ObservationContext:
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=derived_uid(algorithm, [], OutputKind.SR, "device"),
        name=algorithm.name,
        manufacturer_name=algorithm.manufacturer,
        model_name=f"{algorithm.name} {algorithm.version}"[:64],
        serial_number=algorithm.serial_number,
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device, observer_identifying_attributes=device
        )
    )


def _declare_private_scheme(report: Dataset) -> None:
    item = Dataset()
    item.CodingSchemeDesignator = PRIVATE_SCHEME
    item.CodingSchemeName = "medai feature names"
    item.CodingSchemeResponsibleOrganization = "medai"
    report.CodingSchemeIdentificationSequence = [item]


def write_sr(
    volumes_ml: Mapping[str, float],
    source: SourceLike | SourceSeries,
    *,
    seg: str | Path | Dataset,
    algorithm: AlgorithmInfo,
    out_path: str | Path,
    features: Mapping[str, Mapping[str, float]] | None = None,
    units: Mapping[str, str] | None = None,
    uncertainty: float | None = None,
    series_number: int = 902,
    series_description: str | None = None,
) -> Path:
    """Write a TID 1500 Measurement Report (Comprehensive 3D SR) for a SEG, atomically.

    Args:
        volumes_ml: Region (SEG segment label) → volume in mL
            (see :func:`region_volumes_ml`).
        source: The source series the SEG was written for.
        seg: The SEG (path or dataset) whose segments the measurements refer to.
        algorithm: The bundle that produced the results.
        out_path: The ``.dcm`` file to write; replaced if present.
        features: Optional radiomics features per region: ``{region: {name: value}}``.
        units: UCUM unit code per feature name (``"mm2"``, ``"1"``...); default ``"1"``.
        uncertainty: Optional uncertainty score of the prediction.
        series_number: Series Number of the SR.
        series_description: Defaults to ``"<algorithm name> measurements"``.

    Returns:
        ``out_path``.

    Raises:
        ImageWriteError: If ``seg`` is not a SEG of ``source``.
        ValueError: If a region is not a segment of the SEG, or ``uncertainty`` is not finite.
    """
    series = source if isinstance(source, SourceSeries) else SourceSeries.load(source)
    seg_ds = _load_seg(seg, series)
    seed = series.sop_uids
    groups: list[
        hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
        | hd.sr.MeasurementsAndQualitativeEvaluations
    ] = list(_groups(volumes_ml, seg_ds, series, algorithm, features or {}, units or {}))
    if uncertainty is not None:
        groups.append(_uncertainty_group(float(uncertainty), algorithm, seed))
    modality = str(series.first.get("Modality", ""))
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(algorithm, seed),
        procedure_reported=_PROCEDURES.get(modality, codes.SCT.ImagingProcedure),
        imaging_measurements=groups,
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=[seg_ds, *series.datasets],
        content=report[0],
        series_instance_uid=derived_uid(algorithm, seed, OutputKind.SR, "series"),
        series_number=series_number,
        sop_instance_uid=derived_uid(algorithm, seed, OutputKind.SR, "instance"),
        instance_number=1,
        manufacturer=algorithm.manufacturer,
        is_complete=True,
    )
    if features or uncertainty is not None:
        _declare_private_scheme(sr)
    sr.SeriesDescription = (series_description or f"{algorithm.name} measurements")[:64]
    algorithm.stamp(sr)
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        sr.save_as(tmp, enforce_file_format=True)
    logger.info("wrote SR %s (%d measurement groups)", out_path, len(groups))
    return out_path

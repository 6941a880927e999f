"""Writing a label map as a DICOM Segmentation (highdicom, BINARY) of its source series.

One segment per region (WT / TC / ET, or one per label for datasets without nested
regions), coded with SNOMED CT category and type, identified by the algorithm (bundle
name and version), referencing every source instance. Each frame of the SEG is the
region mask on exactly one source frame, with that frame's position and a reference to
that frame's instance, on oblique and anisotropic series alike. By default every
segment has a frame for every source frame, empty or not, so a viewer that pairs SEG
frames with source slices by count cannot shift an overlay; ``omit_empty_frames=True``
drops empty frames and keeps each remaining frame's own position and reference.

Each segment's Segment Description records the label values it covers
(``"medai labels 1,2,3"``), which lets :func:`medai.io.read_seg_masks` rebuild the label map
exactly from overlapping region segments (see
:func:`medai.io.dicom_annotations.segment_description_labels`).

Example:
    >>> write_seg(label, "study/t1ce", regions={"WT": [1, 2, 3], "TC": [2, 3], "ET": [3]},
    ...           algorithm=AlgorithmInfo("glioma", "1.0"), out_path="out/seg.dcm")
    ... # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from medai.errors import ImageWriteError
from medai.fsutil import atomic_path
from medai.image import LabelMap
from medai.io.dicom_annotations import LABELS_PREFIX
from medai.io.dicom_derived import AlgorithmInfo, OutputKind, derived_uid, region_colour
from medai.io.dicom_source import SourceLike, SourceSeries

__all__ = ["SegmentCoding", "default_coding", "write_seg"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SegmentCoding:
    """The coded meaning of a segment: property category, type and optional type modifier."""

    category: Code
    type: Code
    modifier: Code | None = None


_TUMOUR = codes.SCT.MorphologicallyAbnormalStructure
#: WT: the whole abnormal area (oedema included) is a lesion; TC: the tumour mass;
#: ET: the part of the tumour mass that enhances after contrast.
BRAIN_TUMOUR_CODING: dict[str, SegmentCoding] = {
    "WT": SegmentCoding(_TUMOUR, codes.SCT.Lesion),
    "TC": SegmentCoding(_TUMOUR, codes.SCT.Neoplasm),
    "ET": SegmentCoding(_TUMOUR, codes.SCT.Neoplasm, codes.DCM.FocalContrastEnhancement),
}
_GENERIC = SegmentCoding(codes.SCT.Tissue, codes.SCT.Tissue)


def default_coding(region: str) -> SegmentCoding:
    """The brain-tumour codes for WT / TC / ET; "Tissue" for any other region name."""
    return BRAIN_TUMOUR_CODING.get(region, _GENERIC)


def _check_regions(regions: Mapping[str, Sequence[int]]) -> dict[str, list[int]]:
    if not regions:
        raise ValueError("regions must name at least one region (name -> label values)")
    out: dict[str, list[int]] = {}
    for name, members in regions.items():
        values = sorted({int(v) for v in members})
        if not name or len(name) > 64 or "\\" in name:
            raise ValueError(f"region name must be 1-64 characters, no backslash; got {name!r}")
        if not values or 0 in values:
            raise ValueError(
                f"region {name!r} = {list(members)}: a region is a non-empty set of foreground "
                "label values (never 0)"
            )
        out[name] = values
    patterns = {v: tuple(n for n, m in out.items() if v in m) for m in out.values() for v in m}
    seen: dict[tuple[str, ...], int] = {}
    for value, pattern in sorted(patterns.items()):
        if pattern in seen:
            logger.warning(
                "labels %d and %d fall in the same regions %s; the SEG cannot tell them apart",
                seen[pattern],
                value,
                list(pattern),
            )
        seen.setdefault(pattern, value)
    return out


def _descriptions(
    regions: Mapping[str, list[int]],
    algorithm: AlgorithmInfo,
    coding: Mapping[str, SegmentCoding],
    tracking_seed: Sequence[str],
) -> list[hd.seg.SegmentDescription]:
    identification = algorithm.identification()
    out = []
    for number, (name, values) in enumerate(regions.items(), start=1):
        code = coding.get(name) or default_coding(name)
        description = hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=name,
            segmented_property_category=code.category,
            segmented_property_type=code.type,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=identification,
            tracking_uid=derived_uid(algorithm, tracking_seed, OutputKind.SEG, "segment", name),
            tracking_id=name,
            display_color=hd.color.CIELabColor.from_rgb(*region_colour(name, number - 1)),
        )
        if code.modifier is not None:
            modifier = hd.sr.CodedConcept.from_code(code.modifier)
            type_item = description.SegmentedPropertyTypeCodeSequence[0]
            type_item.SegmentedPropertyTypeModifierCodeSequence = [modifier]
        description.SegmentDescription = LABELS_PREFIX + ",".join(str(v) for v in values)
        out.append(description)
    return out


def write_seg(
    labels: LabelMap,
    source: SourceLike | SourceSeries,
    *,
    regions: Mapping[str, Sequence[int]],
    algorithm: AlgorithmInfo,
    out_path: str | Path,
    series_number: int = 901,
    series_description: str | None = None,
    coding: Mapping[str, SegmentCoding] | None = None,
    omit_empty_frames: bool = False,
) -> Path:
    """Write ``labels`` as a BINARY DICOM SEG of its source series, atomically.

    Args:
        labels: Label map on the source series' grid (as :func:`read_dicom_series` reads
            it; a copy stored in another axis order is permuted back).
        source: The source series: folder, files, datasets or a :class:`SourceSeries`.
        regions: Segment name → label values, in segment order (e.g. WT / TC / ET, or
            ``{"liver": [1], "tumour": [2]}``).
        algorithm: The bundle that produced ``labels`` (algorithm identification, UIDs).
        out_path: The ``.dcm`` file to write; replaced if present.
        series_number: Series Number of the SEG.
        series_description: Defaults to ``"<algorithm name> segmentation"``.
        coding: Segment name → :class:`SegmentCoding`; defaults from :func:`default_coding`.
        omit_empty_frames: Leave out frames without any segmented pixel.

    Returns:
        ``out_path``.

    Raises:
        GeometryError: If ``labels`` is not on the source grid.
        ImageWriteError: If the source cannot carry a SEG (see :meth:`SourceSeries.load`).
        ValueError: On empty or malformed ``regions``.
    """
    if not isinstance(labels, LabelMap):
        raise TypeError(f"labels must be a LabelMap; got {type(labels).__name__}")
    regions_ = _check_regions(regions)
    series = source if isinstance(source, SourceSeries) else SourceSeries.load(source)
    volume = series.on_grid(labels)
    planes = series.frame_planes(volume)  # (frames, rows, columns)
    pixels = np.stack([np.isin(planes, v) for v in regions_.values()], axis=-1).astype(np.uint8)
    seed = series.sop_uids
    descriptions = _descriptions(regions_, algorithm, coding or {}, seed)
    omit = omit_empty_frames and bool(pixels.any())  # a SEG keeps at least its frames
    try:
        seg = hd.seg.Segmentation(
            source_images=list(series.datasets),
            pixel_array=pixels,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=derived_uid(algorithm, seed, OutputKind.SEG, "series"),
            series_number=series_number,
            sop_instance_uid=derived_uid(algorithm, seed, OutputKind.SEG, "instance"),
            instance_number=1,
            manufacturer=algorithm.manufacturer,
            manufacturer_model_name=algorithm.name,
            software_versions=algorithm.software_versions[0],
            device_serial_number=algorithm.serial_number,
            content_description=f"{algorithm.name} {algorithm.version}"[:64],
            content_label="SEGMENTATION",
            omit_empty_frames=omit,
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise ImageWriteError(f"cannot build a DICOM SEG from this source: {exc}") from exc
    algorithm.stamp(seg)
    seg.SeriesDescription = (series_description or f"{algorithm.name} segmentation")[:64]
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        seg.save_as(tmp, enforce_file_format=True)
    logger.info(
        "wrote SEG %s (%d frames, %d segments)", out_path, seg.NumberOfFrames, len(regions_)
    )
    return out_path

"""What a ``noop`` task can add for tests and benchmarks: measurements it is given, and a
DICOM Basic Text SR listing its inputs (a small DICOM result to exercise deliveries).

Options (the job's ``options``):

- ``measurements``: ``{name: value}`` or ``{name: {"value": v, "unit": u}}``: reported as
  the task's measurements, as a real bundle's volumes or probabilities would be.
- ``sr``: ``true`` writes ``listing.dcm``, a Basic Text SR in the first input's study,
  its UIDs derived from the inputs (the same inputs give the same bytes).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

__all__ = ["BASIC_TEXT_SR", "given_measurements", "write_listing_sr"]

BASIC_TEXT_SR = UID("1.2.840.10008.5.1.4.1.1.88.11")
_COPIED = (
    "PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
    "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName",
)  # fmt: skip


def given_measurements(options: Mapping[str, Any]) -> list[tuple[str, float, str]]:
    """The ``(name, value, unit)`` of ``options["measurements"]`` (none when absent).

    Raises:
        ValueError: If it is not a mapping of names to numbers or ``{"value", "unit"}``.
    """
    given = options.get("measurements") or {}
    if not isinstance(given, Mapping):
        raise ValueError(
            f"options.measurements must map names to numbers; got {type(given).__name__}"
        )
    found = []
    for name, item in given.items():
        value, unit = (item.get("value"), item.get("unit", "")) if isinstance(item, Mapping) else (
            item, "")  # fmt: skip
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(
                f"options.measurements[{name!r}] = {item!r} is not a number or "
                '{"value": number, "unit": text}'
            )
        found.append((str(name), float(value), str(unit)))
    return found


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = value, scheme, meaning
    return code


def write_listing_sr(path: Path, files: Sequence[str], listing: Mapping[str, Any]) -> str:
    """Write a Basic Text SR at ``path`` whose one TEXT item is ``listing`` as JSON.

    Returns:
        Its SOP Instance UID.

    Raises:
        ValueError: If there is no input instance to take the patient and study from.
    """
    if not files:
        raise ValueError("options.sr needs an input instance (its study gets the SR)")
    source = pydicom.dcmread(files[0], stop_before_pixels=True)
    text = json.dumps(listing, sort_keys=True)
    seed = [text, str(source.SOPInstanceUID)]
    ds = Dataset()
    for keyword in _COPIED:
        setattr(ds, keyword, getattr(source, keyword, ""))
    ds.SOPClassUID = BASIC_TEXT_SR
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[*seed, "instance"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[*seed, "series"])
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber, ds.Manufacturer = "SR", 990, 1, "medai"
    ds.SeriesDescription = "medai noop: input listing"
    ds.ContentDate = getattr(source, "StudyDate", "") or "19700101"
    ds.ContentTime = getattr(source, "StudyTime", "") or "000000"
    ds.ValueType, ds.ContinuityOfContent = "CONTAINER", "SEPARATE"
    ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "UNVERIFIED"
    ds.ConceptNameCodeSequence = DicomSequence([_code("121071", "DCM", "Finding")])
    item = Dataset()
    item.RelationshipType, item.ValueType, item.TextValue = "CONTAINS", "TEXT", text
    item.ConceptNameCodeSequence = DicomSequence([_code("121071", "DCM", "Finding")])
    ds.ContentSequence = DicomSequence([item])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = BASIC_TEXT_SR, ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.save_as(path, enforce_file_format=True)
    return str(ds.SOPInstanceUID)

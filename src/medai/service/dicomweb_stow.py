"""STOW-RS: store the parts of a request and answer as PS3.18 §10.5.3 asks.

The parts are stored as one batch (:meth:`Archive.store_many`), each parsed once; a part
that fails (not DICOM, another study than the request names, a conflicting re-send) is
listed in FailedSOPSequence with its reason, and the others are stored. The status: 200
when every part was stored, 202 when some failed, 409 when none was stored.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError

from medai.service.archive import (
    Archive,
    InstanceRejectedError,
    OtherStudyError,
    Stored,
    StoreResult,
    StoreStatus,
)
from medai.service.db import Project
from medai.service.dicomweb_multipart import Part
from medai.service.dicomweb_query import element

__all__ = ["FailureReason", "StowOutcome", "store_parts"]

log = logging.getLogger(__name__)


class FailureReason:
    """FailureReason (0008,1197) codes used in a STOW-RS answer (PS3.18 Table I.2-1)."""

    PROCESSING_FAILURE = 0x0110
    DUPLICATE_SOP_INSTANCE = 0x0111  # the same SOP Instance UID with other content
    OUT_OF_RESOURCES = 0xA700
    DOES_NOT_MATCH = 0xA900  # another study than the request names
    CANNOT_UNDERSTAND = 0xC000  # not DICOM, or without valid UIDs


@dataclass(frozen=True)
class StowOutcome:
    """The answer to a STOW-RS request: its DICOM JSON body, HTTP status and counts."""

    body: dict[str, Any]
    status: int
    stored: int
    failed: int


def _peek(data: bytes) -> tuple[str, str]:
    """The SOP Class and Instance UIDs a part claims (empty when unreadable)."""
    try:
        ds = pydicom.dcmread(
            io.BytesIO(data), stop_before_pixels=True,
            specific_tags=["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID"],
        )  # fmt: skip
    except (InvalidDicomError, EOFError, ValueError, TypeError, KeyError, AttributeError):
        return "", ""
    return str(ds.get("SOPClassUID", "")), str(ds.get("SOPInstanceUID", ""))


def _failed(data: bytes, reason: int, comment: str) -> dict[str, Any]:
    sop_class, sop_uid = _peek(data)
    values: dict[str, Any] = {"FailureReason": reason, "ErrorComment": comment[:64]}
    if sop_class:
        values["ReferencedSOPClassUID"] = sop_class
    if sop_uid:
        values["ReferencedSOPInstanceUID"] = sop_uid
    return dict(element(k, v) for k, v in values.items())


def _referenced(stored: Stored, sop_class: str, url: str) -> dict[str, Any]:
    retrieve = f"{url}/studies/{stored.study_uid}/series/{stored.series_uid}"
    values = {
        "ReferencedSOPClassUID": sop_class,
        "ReferencedSOPInstanceUID": stored.sop_uid,
        "RetrieveURL": f"{retrieve}/instances/{stored.sop_uid}",
    }
    return dict(element(k, v) for k, v in values.items())


def _item(part: Part, result: StoreResult, url: str) -> tuple[dict[str, Any], bool]:
    """The sequence item for one part's outcome and whether it was stored."""
    if isinstance(result, OtherStudyError):
        return _failed(part.data, FailureReason.DOES_NOT_MATCH, "another study"), False
    if isinstance(result, InstanceRejectedError):
        return _failed(part.data, FailureReason.CANNOT_UNDERSTAND, str(result)), False
    if isinstance(result, OSError):
        return _failed(part.data, FailureReason.OUT_OF_RESOURCES, str(result)), False
    if result.status is StoreStatus.CONFLICT:
        comment = "stored SOP instance has other content"
        return _failed(part.data, FailureReason.DUPLICATE_SOP_INSTANCE, comment), False
    return _referenced(result, result.sop_class_uid, url), True


def _is_dicom(part: Part) -> bool:
    return part.content_type.split(";")[0].strip().lower() in ("", "application/dicom")


def store_parts(
    archive: Archive, project: Project, parts: Sequence[Part], *, study: str | None, url: str
) -> StowOutcome:
    """Store the parts for ``project`` in one batch; ``study`` (from the URL) refuses
    parts of other studies.

    Args:
        archive: Where instances go.
        project: The project the request is for (membership already checked).
        parts: The parts of the request body.
        study: The Study Instance UID the request URL names, or None.
        url: The project's DICOMweb root, for the RetrieveURLs.
    """
    dicom = [part for part in parts if _is_dicom(part)]
    results = iter(archive.store_many(project, [part.data for part in dicom], study=study))
    referenced: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    for part in parts:
        if not _is_dicom(part):
            media = part.content_type.split(";")[0].strip().lower()
            failed.append(_failed(b"", FailureReason.CANNOT_UNDERSTAND, f"part type {media}"))
            continue
        item, ok = _item(part, next(results), url)
        (referenced if ok else failed).append(item)
    body: dict[str, Any] = {}
    if study is not None:
        body.update([element("RetrieveURL", f"{url}/studies/{study}")])
    if referenced:
        body.update([element("ReferencedSOPSequence", referenced)])
    if failed:
        body.update([element("FailedSOPSequence", failed)])
    status = 200 if not failed else 202 if referenced else 409
    return StowOutcome(body, status, len(referenced), len(failed))

"""The folder archive and its index: store an instance atomically, find it, view the tree.

Every instance is written to a temporary file, flushed, renamed into place and its
directory flushed; only then is its row committed, and only a committed row is
acknowledged to the sender. A crash at any point leaves either nothing or a complete
file (a file without a row is rewritten when the sender, never having had its
acknowledgement, sends again). Paths are built from validated UIDs and the project's id,
never from anything a request names.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from medai.errors import MedaiError
from medai.fsutil import atomic_write_bytes
from medai.io.deid import deidentify_dataset
from medai.service.db import Conflict, Instance, Participant, Project, Series, Study, utcnow
from medai.service.tree import ParticipantRecord, SeriesRecord, StudyRecord

__all__ = [
    "SERIES_KEYWORDS",
    "Archive",
    "InstanceRejectedError",
    "StoreStatus",
    "Stored",
    "archive_tree",
    "complete_quiet_studies",
    "valid_uid",
]

log = logging.getLogger(__name__)

_TEMP = re.compile(r"^\..+\.[0-9a-f]{8}\.tmp")  # medai.fsutil._create_temp's names
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
SERIES_KEYWORDS = (
    "Modality", "SeriesDescription", "SeriesNumber", "FrameOfReferenceUID", "BodyPartExamined",
    "ImageType", "ContrastBolusAgent", "MagneticFieldStrength", "Manufacturer",
    "ManufacturerModelName", "ProtocolName", "SequenceName", "ScanningSequence",
    "SliceThickness", "Rows", "Columns", "SeriesDate", "SeriesTime",
)  # fmt: skip
STUDY_KEYWORDS = (
    "StudyDate", "StudyTime", "StudyDescription", "AccessionNumber", "StudyID",
    "ReferringPhysicianName",
)  # fmt: skip
PARTICIPANT_KEYWORDS = ("PatientName", "PatientSex", "PatientAge", "PatientBirthDate")
_BULK_THRESHOLD = 1024  # header values longer than this stay in the file


class InstanceRejectedError(MedaiError, ValueError):
    """An instance that cannot be stored: not DICOM, or missing or malformed UIDs."""


class StoreStatus(StrEnum):
    STORED = "stored"
    DUPLICATE = "duplicate"  # the same bytes again: ignored
    CONFLICT = "conflict"  # the same SOP Instance UID with other bytes: kept aside, reported


@dataclass(frozen=True)
class Stored:
    """What happened to one received instance."""

    status: StoreStatus
    sop_uid: str
    study_uid: str
    series_uid: str
    path: Path


def valid_uid(value: object) -> bool:
    """True for a DICOM UID: digits and dots, at most 64 characters, no empty component."""
    text = str(value or "")
    return 0 < len(text) <= 64 and bool(_UID.match(text))


def _scalar(value: Any) -> str | int | float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value
    if isinstance(value, list | tuple | pydicom.multival.MultiValue):
        return "\\".join(str(v) for v in value)
    return str(value)


def _attributes(ds: Dataset, keywords: Iterable[str]) -> dict[str, str | int | float]:
    out: dict[str, str | int | float] = {}
    for keyword in keywords:
        value = ds.get(keyword)
        if value is not None and value != "":
            out[keyword] = _scalar(value)
    return out


def _header_json(ds: Dataset) -> dict[str, Any]:
    def bulk(_element: Any) -> str:
        return ""  # a placeholder URI; WADO-RS serves bulk data from the file

    return ds.to_json_dict(bulk_data_threshold=_BULK_THRESHOLD, bulk_data_element_handler=bulk)


def _encode(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _parse(data: bytes) -> Dataset:
    try:
        return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    except (InvalidDicomError, EOFError, ValueError, TypeError, KeyError) as error:
        raise InstanceRejectedError(f"not a readable DICOM instance: {error}") from error


def _uids(ds: Dataset) -> tuple[str, str, str, str]:
    meta = getattr(ds, "file_meta", None) or FileMetaDataset()
    names = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
    values = [str(ds.get(name) or meta.get(f"MediaStorage{name}", "") or "") for name in names]
    for name, value in zip(names, values, strict=True):
        if not valid_uid(value):
            raise InstanceRejectedError(f"{name} is missing or not a valid UID: {value!r}")
    return values[0], values[1], values[2], values[3]


class Archive:
    """Stores instances for projects under ``root`` and indexes them through ``factory``.

    Args:
        root: The archive folder (``ServiceConfig.archive``).
        factory: Sessions on the index.
        keys: Folder of the projects' de-identification keys (``<project>.key``).
    """

    def __init__(self, root: Path, factory: sessionmaker[Session], *, keys: Path) -> None:
        self.root = Path(root)
        self.factory = factory
        self.keys = Path(keys)

    def path_of(self, instance: Instance) -> Path:
        """The file of an indexed instance."""
        return self.root / instance.path

    def sweep(self) -> int:
        """Remove temporary files an interrupted write left (``fsutil``'s hidden
        ``.NAME.XXXXXXXX.tmp…`` siblings); call at startup, before anything stores.

        Returns:
            How many were removed. Their instances were never acknowledged.
        """
        removed = 0
        for folder, _dirs, files in os.walk(self.root):
            for name in files:
                if _TEMP.match(name):
                    (Path(folder) / name).unlink(missing_ok=True)
                    removed += 1
        if removed:
            log.warning("removed %d temporary files of interrupted writes", removed)
        return removed

    def key_file(self, project: Project) -> Path:
        return self.keys / f"{project.id}.key"

    def _prepare(self, project: Project, data: bytes) -> tuple[bytes, Dataset]:
        ds = _parse(data)
        if not project.deidentify:
            return data, ds
        full = pydicom.dcmread(io.BytesIO(data))
        key = self.key_file(project).read_text(encoding="utf-8").strip()
        clean, _ = deidentify_dataset(full, key=key)
        encoded = _encode(clean)
        return encoded, _parse(encoded)

    def store(self, project: Project, data: bytes) -> Stored:
        """Store one instance (a DICOM Part 10 file's bytes) for ``project``.

        Raises:
            InstanceRejectedError: ``data`` is not DICOM or lacks valid UIDs.
        """
        data, ds = self._prepare(project, data)
        study_uid, series_uid, sop_uid, _ = _uids(ds)
        digest = hashlib.sha256(data).hexdigest()
        relative = Path(str(project.id), study_uid, series_uid, f"{sop_uid}.dcm")
        for _ in range(3):
            with self.factory() as session:
                known = session.scalar(
                    select(Instance).where(
                        Instance.project_id == project.id, Instance.sop_uid == sop_uid
                    )
                )
                if known is not None:
                    return self._again(session, project, known, data, digest, ds)
                atomic_write_bytes(self.root / relative, data)
                try:
                    self._index(session, project, ds, relative, digest, len(data))
                    session.commit()
                except IntegrityError:
                    session.rollback()  # a concurrent association stored it first
                    continue
            return Stored(StoreStatus.STORED, sop_uid, study_uid, series_uid, relative)
        raise InstanceRejectedError(f"instance {sop_uid} kept colliding with concurrent stores")

    def _again(
        self, session: Session, project: Project, known: Instance, data: bytes, digest: str,
        ds: Dataset,
    ) -> Stored:  # fmt: skip
        study_uid, series_uid, sop_uid, _ = _uids(ds)
        if known.sha256 == digest:
            if not (self.root / known.path).is_file():  # lost file: rewrite it
                atomic_write_bytes(self.root / known.path, data)
            return Stored(StoreStatus.DUPLICATE, sop_uid, study_uid, series_uid, Path(known.path))
        relative = Path(str(project.id), "conflicts", f"{sop_uid}.{digest[:16]}.dcm")
        atomic_write_bytes(self.root / relative, data)
        session.add(
            Conflict(
                project_id=project.id, sop_uid=sop_uid, path=str(relative), sha256=digest,
                stored_sha256=known.sha256,
            )
        )  # fmt: skip
        session.commit()
        log.warning("instance %s re-sent with other content; kept at %s", sop_uid, relative)
        return Stored(StoreStatus.CONFLICT, sop_uid, study_uid, series_uid, relative)

    def _index(
        self, session: Session, project: Project, ds: Dataset, relative: Path, digest: str,
        size: int,
    ) -> None:  # fmt: skip
        study_uid, series_uid, sop_uid, sop_class = _uids(ds)
        now = utcnow()
        patient_id = str(ds.get("PatientID") or "").strip() or "UNKNOWN"
        participant = session.scalar(
            select(Participant).where(
                Participant.project_id == project.id, Participant.patient_id == patient_id
            )
        )
        if participant is None:
            participant = Participant(
                project_id=project.id, patient_id=patient_id,
                attributes=_attributes(ds, PARTICIPANT_KEYWORDS),
            )  # fmt: skip
            session.add(participant)
            session.flush()
        study = session.scalar(
            select(Study).where(Study.project_id == project.id, Study.study_uid == study_uid)
        )
        if study is None:
            study = Study(
                project_id=project.id, participant_id=participant.id, study_uid=study_uid,
                attributes=_attributes(ds, STUDY_KEYWORDS), first_received=now,
            )  # fmt: skip
            session.add(study)
            session.flush()
        study.last_received = now
        study.complete = False
        study.completed_at = None
        series = session.scalar(
            select(Series).where(Series.study_id == study.id, Series.series_uid == series_uid)
        )
        if series is None:
            attributes = _attributes(ds, SERIES_KEYWORDS)
            series = Series(
                study_id=study.id, series_uid=series_uid, attributes=attributes,
                modality=str(attributes.get("Modality", ""))[:16],
                description=str(attributes.get("SeriesDescription", ""))[:64],
            )  # fmt: skip
            session.add(series)
            session.flush()
        number = ds.get("InstanceNumber")
        meta = getattr(ds, "file_meta", None)
        session.add(
            Instance(
                project_id=project.id, series_id=series.id, sop_uid=sop_uid,
                sop_class_uid=sop_class, path=str(relative), sha256=digest, size=size,
                instance_number=int(number) if number not in (None, "") else None,
                transfer_syntax=str(meta.get("TransferSyntaxUID", "")) if meta else "",
                header=_header_json(ds),
            )
        )  # fmt: skip


def complete_quiet_studies(
    session: Session, *, quiet_seconds: float, now: dt.datetime | None = None
) -> list[Study]:
    """Mark complete every study that received nothing for ``quiet_seconds``; return them."""
    now = now or utcnow()
    cutoff = now - dt.timedelta(seconds=quiet_seconds)
    done = []
    for study in session.scalars(select(Study).where(Study.complete.is_(False))):
        last = study.last_received
        if last.tzinfo is None:  # SQLite returns naive datetimes
            last = last.replace(tzinfo=dt.UTC)
        if last <= cutoff:
            study.complete = True
            study.completed_at = now
            done.append(study)
    return done


def archive_tree(session: Session, project_id: int) -> tuple[ParticipantRecord, ...]:
    """The project's archive as records (participants → studies → series), sorted by id."""
    project = session.get(Project, project_id)
    if project is None:
        raise KeyError(f"no project with id {project_id}")
    counts: dict[int, int] = {}
    for series_id in session.scalars(
        select(Instance.series_id).where(Instance.project_id == project_id)
    ):
        counts[series_id] = counts.get(series_id, 0) + 1
    series_of: dict[int, list[SeriesRecord]] = {}
    studies = session.scalars(select(Study).where(Study.project_id == project_id)).all()
    ids = [s.id for s in studies]
    for row in session.scalars(select(Series).where(Series.study_id.in_(ids)).order_by(Series.id)):
        record = SeriesRecord(row.series_uid, counts.get(row.id, 0), dict(row.attributes))
        series_of.setdefault(row.study_id, []).append(record)
    participants = session.scalars(
        select(Participant).where(Participant.project_id == project_id).order_by(Participant.id)
    ).all()
    patient_ids = {p.id: p.patient_id for p in participants}
    studies_of: dict[int, list[StudyRecord]] = {}
    for study in sorted(studies, key=lambda s: s.id):
        studies_of.setdefault(study.participant_id, []).append(
            StudyRecord(
                study.study_uid, patient_ids[study.participant_id],
                tuple(series_of.get(study.id, [])), complete=study.complete,
                attributes=dict(study.attributes),
            )
        )  # fmt: skip
    return tuple(
        ParticipantRecord(p.patient_id, project.name, tuple(studies_of.get(p.id, [])),
                          dict(p.attributes))
        for p in participants
    )  # fmt: skip

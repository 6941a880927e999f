"""The folder archive and its index: store an instance atomically, find it, view the tree.

Every instance is written to a temporary file, flushed, renamed into place and its
directory flushed; only then is its row committed, and only a committed row is
acknowledged to the sender. A crash at any point leaves either nothing or a complete
file (a file without a row is rewritten when the sender, never having had its
acknowledgement, sends again). A batch (:meth:`Archive.store_many`) writes all its files
first, then commits all its rows at once. Paths are built from validated UIDs and the
project's id, never from anything a request names.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import logging
import os
import re
import secrets
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
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
from medai.fsutil import atomic_write_bytes, fsync_dir
from medai.io.deid import deidentify_dataset
from medai.service.archive_index import IdCache, InstanceRow, RowWriter
from medai.service.db import Conflict, Instance, Participant, Project, Series, Study, utcnow
from medai.service.tree import ParticipantRecord, SeriesRecord, StudyRecord

__all__ = [
    "SERIES_KEYWORDS",
    "Archive",
    "InstanceRejectedError",
    "OtherStudyError",
    "StoreResult",
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
_WRITERS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="medai-archive-write")


class InstanceRejectedError(MedaiError, ValueError):
    """An instance that cannot be stored: not DICOM, or missing or malformed UIDs."""


class OtherStudyError(InstanceRejectedError):
    """An instance of another study than the one a request names (STOW-RS to a study)."""


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
    sop_class_uid: str = ""


#: One outcome of :meth:`Archive.store_many`.
StoreResult = Stored | InstanceRejectedError | OSError


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

    Participant, study and series row ids are cached per project and UID (see
    :mod:`medai.service.archive_index`), so storing an instance of a known series costs
    one existence query, one study UPDATE, one INSERT and the commit.

    Args:
        root: The archive folder (``ServiceConfig.archive``).
        factory: Sessions on the index.
        keys: Folder of the projects' de-identification keys (``<project>.key``).
        cache_size: How many participant, study and series ids to keep.
    """

    def __init__(
        self, root: Path, factory: sessionmaker[Session], *, keys: Path, cache_size: int = 8192
    ) -> None:
        self.root = Path(root)
        self.factory = factory
        self.keys = Path(keys)
        self._ids = IdCache(cache_size)

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

    def _receive(self, project: Project, data: bytes, study: str | None = None) -> _Received:
        """Parse (and de-identify) ``data``; ``study`` refuses instances of another study."""
        ds = _parse(data)
        claimed = str(ds.get("StudyInstanceUID") or "")
        if study is not None and claimed not in ("", study):
            raise OtherStudyError(f"instance of study {claimed}, not of {study}")
        if project.deidentify:
            full = pydicom.dcmread(io.BytesIO(data))
            key = self.key_file(project).read_text(encoding="utf-8").strip()
            clean, _ = deidentify_dataset(full, key=key)
            data = _encode(clean)
            ds = _parse(data)
        study_uid, series_uid, sop_uid, sop_class = _uids(ds)
        relative = Path(str(project.id), study_uid, series_uid, f"{sop_uid}.dcm")
        digest = hashlib.sha256(data).hexdigest()
        return _Received(data, ds, study_uid, series_uid, sop_uid, sop_class, digest, relative)

    def store(self, project: Project, data: bytes) -> Stored:
        """Store one instance (a DICOM Part 10 file's bytes) for ``project``.

        Returns:
            What happened; only once the file is on disk and its row committed.

        Raises:
            InstanceRejectedError: ``data`` is not DICOM or lacks valid UIDs.
        """
        return self._store(project, self._receive(project, data))

    def store_many(
        self, project: Project, datas: Sequence[bytes], *, study: str | None = None
    ) -> list[StoreResult]:
        """Store a batch of instances for ``project``: the files, then all rows in one
        transaction. The outcome of each is what :meth:`store` called on each in turn
        gives: a repeated SOP Instance UID is a duplicate or a conflict of the first.

        Args:
            project: The project they are for.
            datas: DICOM Part 10 files' bytes.
            study: When given, an instance of another study is refused with
                :class:`OtherStudyError` (the check is on the received, not the
                de-identified, Study Instance UID).

        Returns:
            One per item of ``datas``, in order: a :class:`Stored`, or the
            :class:`InstanceRejectedError` or ``OSError`` (the file could not be written)
            that kept it out. Nothing is returned before every stored row is committed.
        """
        results: list[StoreResult | None] = [None] * len(datas)
        items: dict[int, _Received] = {}
        for index, data in enumerate(datas):
            try:
                items[index] = self._receive(project, data, study)
            except InstanceRejectedError as error:
                results[index] = error
        one_by_one = self._store_batch(project, items, results)
        for index in sorted(one_by_one):
            try:
                results[index] = self._store(project, items[index])
            except InstanceRejectedError as error:
                results[index] = error
            except OSError as error:
                log.exception("could not store %s", items[index].relative)
                results[index] = error
        return [r for r in results if r is not None]

    def _store_batch(
        self, project: Project, items: dict[int, _Received], results: list[StoreResult | None]
    ) -> list[int]:
        """Store the new instances of ``items`` in one transaction; the indices left to
        store one by one (repeats, known SOP Instance UIDs, or all after an IntegrityError)."""
        first: dict[str, int] = {}
        for index, item in items.items():
            first.setdefault(item.sop_uid, index)
        later = [i for i in items if first[items[i].sop_uid] != i]
        with self.factory() as session:
            known = self._known(session, project, list(first))
            later += [first[uid] for uid in known]
            batch = [i for uid, i in first.items() if uid not in known]
            errors = _write_files([(self.root / items[i].relative, items[i].data) for i in batch])
            written = []
            for index, error in zip(batch, errors, strict=True):
                if error is None:
                    written.append(index)
                else:
                    log.error("could not write %s: %s", items[index].relative, error)
                    results[index] = error
            writer = RowWriter(session, self._ids, project.id, utcnow())
            try:
                writer.add([_row(items[i]) for i in written])
                writer.commit()
            except IntegrityError:
                session.rollback()  # a concurrent store won a race: take them one by one
                self._ids.drop(writer.used)
                return later + written
        for index in written:
            results[index] = items[index].stored(StoreStatus.STORED)
        return later

    @staticmethod
    def _known(session: Session, project: Project, sop_uids: list[str]) -> set[str]:
        known: set[str] = set()
        for start in range(0, len(sop_uids), 500):
            chunk = sop_uids[start : start + 500]
            known.update(
                session.scalars(
                    select(Instance.sop_uid).where(
                        Instance.project_id == project.id, Instance.sop_uid.in_(chunk)
                    )
                )
            )
        return known

    def _store(self, project: Project, item: _Received) -> Stored:
        for _ in range(3):
            with self.factory() as session:
                known = (
                    session.connection()
                    .execute(
                        select(Instance.sha256, Instance.path).where(
                            Instance.project_id == project.id, Instance.sop_uid == item.sop_uid
                        )
                    )
                    .first()
                )
                if known is not None:
                    return self._again(session, project, item, known.sha256, known.path)
                atomic_write_bytes(self.root / item.relative, item.data)
                writer = RowWriter(session, self._ids, project.id, utcnow())
                try:
                    writer.add([_row(item)])
                    writer.commit()
                except IntegrityError:
                    session.rollback()  # a concurrent store won, or a cached id was stale
                    self._ids.drop(writer.used)
                    continue
            return item.stored(StoreStatus.STORED)
        raise InstanceRejectedError(
            f"instance {item.sop_uid} kept colliding with concurrent stores"
        )

    def _again(
        self, session: Session, project: Project, item: _Received, sha256: str, path: str
    ) -> Stored:
        if sha256 == item.digest:
            if not (self.root / path).is_file():  # lost file: rewrite it
                atomic_write_bytes(self.root / path, item.data)
            return replace(item.stored(StoreStatus.DUPLICATE), path=Path(path))
        relative = Path(str(project.id), "conflicts", f"{item.sop_uid}.{item.digest[:16]}.dcm")
        atomic_write_bytes(self.root / relative, item.data)
        session.add(
            Conflict(
                project_id=project.id, sop_uid=item.sop_uid, path=str(relative),
                sha256=item.digest, stored_sha256=sha256,
            )
        )  # fmt: skip
        session.commit()
        log.warning("instance %s re-sent with other content; kept at %s", item.sop_uid, relative)
        return replace(item.stored(StoreStatus.CONFLICT), path=relative)


@dataclass(frozen=True)
class _Received:
    """A received instance, parsed (and de-identified), ready to store."""

    data: bytes
    ds: Dataset
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class: str
    digest: str
    relative: Path

    def stored(self, status: StoreStatus) -> Stored:
        return Stored(
            status, self.sop_uid, self.study_uid, self.series_uid, self.relative, self.sop_class
        )


def _write_files(files: list[tuple[Path, bytes]]) -> list[OSError | None]:
    """Write each file as :func:`medai.fsutil.atomic_write_bytes` does (a flushed hidden
    temporary sibling renamed into place, the names :meth:`Archive.sweep` removes), a few
    at once (their flushes overlap), then flush each folder once; the error of each."""
    errors = list(_WRITERS.map(_write_file, files))
    folders: dict[Path, list[int]] = {}
    for index, ((target, _), error) in enumerate(zip(files, errors, strict=True)):
        if error is None:
            folders.setdefault(target.parent, []).append(index)
    for folder, indices in folders.items():
        try:
            fsync_dir(folder)
        except OSError as error:
            for index in indices:
                errors[index] = error
    return errors


def _write_file(file: tuple[Path, bytes]) -> OSError | None:
    """Write and flush a temporary sibling of the target, rename it onto the target."""
    target, data = file
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp.dcm")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        return error
    return None


def _row(item: _Received) -> InstanceRow:
    ds = item.ds
    number = ds.get("InstanceNumber")
    meta = getattr(ds, "file_meta", None)
    return InstanceRow(
        patient_id=str(ds.get("PatientID") or "").strip() or "UNKNOWN",
        study_uid=item.study_uid,
        series_uid=item.series_uid,
        participant_attributes=_attributes(ds, PARTICIPANT_KEYWORDS),
        study_attributes=_attributes(ds, STUDY_KEYWORDS),
        series_attributes=_attributes(ds, SERIES_KEYWORDS),
        values={
            "sop_uid": item.sop_uid, "sop_class_uid": item.sop_class, "path": str(item.relative),
            "sha256": item.digest, "size": len(item.data),
            "instance_number": int(number) if number not in (None, "") else None,
            "transfer_syntax": str(meta.get("TransferSyntaxUID", "")) if meta else "",
            "header": _header_json(ds),
        },
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

"""The archive's index rows, written with Core statements and a cache of row ids.

Participants, studies and series are looked up by their UIDs once and their ids kept in
an :class:`IdCache` (rows are never deleted while the service runs). An id enters the
cache only after the transaction that found or made it committed; a stale id shows as a
study UPDATE touching no row or as an IntegrityError (a foreign key), and the caller then
drops the ids it used and looks them up again.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import Connection, Table, insert, select, update
from sqlalchemy.orm import Session

from medai.service.db import Instance, Participant, Series, Study

__all__ = ["IdCache", "IdKey", "InstanceRow", "RowWriter"]

_PARTICIPANTS = cast(Table, Participant.__table__)
_STUDIES = cast(Table, Study.__table__)
_SERIES = cast(Table, Series.__table__)
_INSTANCES = cast(Table, Instance.__table__)

#: ``(kind, parent id, uid)``: ``("participant", project id, PatientID)``,
#: ``("study", project id, StudyInstanceUID)``, ``("series", study id, SeriesInstanceUID)``.
IdKey = tuple[str, int, str]


class IdCache:
    """A bounded, thread-safe least-recently-used map of row ids.

    Args:
        size: How many ids to keep at most.
    """

    def __init__(self, size: int = 8192) -> None:
        if size < 1:
            raise ValueError(f"size must be at least 1, got {size}")
        self.size = size
        self._ids: OrderedDict[IdKey, int] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._ids)

    def get(self, key: IdKey) -> int | None:
        with self._lock:
            value = self._ids.get(key)
            if value is not None:
                self._ids.move_to_end(key)
            return value

    def update(self, ids: dict[IdKey, int]) -> None:
        with self._lock:
            for key, value in ids.items():
                self._ids[key] = value
                self._ids.move_to_end(key)
            while len(self._ids) > self.size:
                self._ids.popitem(last=False)

    def drop(self, keys: Iterable[IdKey]) -> None:
        with self._lock:
            for key in keys:
                self._ids.pop(key, None)


@dataclass(frozen=True)
class InstanceRow:
    """What one instance's rows need, taken from its parsed header."""

    patient_id: str
    study_uid: str
    series_uid: str
    participant_attributes: dict[str, Any]
    study_attributes: dict[str, Any]
    series_attributes: dict[str, Any]
    values: dict[str, Any]  # the Instance columns, less project_id, series_id and received


@dataclass
class RowWriter:
    """Writes the index rows of one transaction of one project.

    Ids found or made here are held in ``found`` until :meth:`commit`, which commits the
    session and only then adds them to the cache; ``used`` names every key whose id a row
    referred to, for the caller to drop after an IntegrityError.
    """

    session: Session
    cache: IdCache
    project_id: int
    now: dt.datetime
    found: dict[IdKey, int] = field(default_factory=dict)
    used: set[IdKey] = field(default_factory=set)
    _touched: set[int] = field(default_factory=set)

    def add(self, rows: list[InstanceRow]) -> None:
        """Insert the instances of ``rows`` (and their participants, studies, series)."""
        if not rows:
            return
        values = [
            {**row.values, "project_id": self.project_id, "series_id": self._series(row),
             "received": self.now}
            for row in rows
        ]  # fmt: skip
        self._connection.execute(insert(_INSTANCES), values)

    @property
    def _connection(self) -> Connection:
        """The session's connection: Core statements skip the ORM's bookkeeping."""
        return self.session.connection()

    def commit(self) -> None:
        self.session.commit()
        self.cache.update(self.found)

    def _id(self, key: IdKey) -> int | None:
        self.used.add(key)
        return self.found.get(key) or self.cache.get(key)

    def _participant(self, row: InstanceRow) -> int:
        key = ("participant", self.project_id, row.patient_id)
        known = self._id(key)
        if known is None:
            known = self._connection.scalar(
                select(_PARTICIPANTS.c.id).where(
                    _PARTICIPANTS.c.project_id == self.project_id,
                    _PARTICIPANTS.c.patient_id == row.patient_id,
                )
            )
        if known is None:
            known = self._insert(
                _PARTICIPANTS, project_id=self.project_id, patient_id=row.patient_id,
                attributes=row.participant_attributes,
            )  # fmt: skip
        self.found[key] = known
        return known

    def _study(self, row: InstanceRow) -> int:
        key = ("study", self.project_id, row.study_uid)
        known = self._id(key)
        if known is not None and known not in self._touched and not self._reopen(known):
            self.cache.drop([key])  # stale: look it up
            self.found.pop(key, None)
            known = None
        if known is None:
            known = self._connection.scalar(
                select(_STUDIES.c.id).where(
                    _STUDIES.c.project_id == self.project_id,
                    _STUDIES.c.study_uid == row.study_uid,
                )
            )
            if known is not None:
                self._reopen(known)
        if known is None:
            known = self._insert(
                _STUDIES, project_id=self.project_id, participant_id=self._participant(row),
                study_uid=row.study_uid, attributes=row.study_attributes,
                first_received=self.now, last_received=self.now, complete=False,
                completed_at=None,
            )  # fmt: skip
        self._touched.add(known)
        self.found[key] = known
        return known

    def _reopen(self, study_id: int) -> bool:
        """Mark a study received now and not complete; False when no row has the id."""
        changed = self._connection.execute(
            update(_STUDIES)
            .where(_STUDIES.c.id == study_id)
            .values(last_received=self.now, complete=False, completed_at=None)
        )
        return changed.rowcount > 0

    def _series(self, row: InstanceRow) -> int:
        study_id = self._study(row)
        key = ("series", study_id, row.series_uid)
        known = self._id(key)
        if known is None:
            known = self._connection.scalar(
                select(_SERIES.c.id).where(
                    _SERIES.c.study_id == study_id, _SERIES.c.series_uid == row.series_uid
                )
            )
        if known is None:
            attributes = row.series_attributes
            known = self._insert(
                _SERIES, study_id=study_id, series_uid=row.series_uid, attributes=attributes,
                modality=str(attributes.get("Modality", ""))[:16],
                description=str(attributes.get("SeriesDescription", ""))[:64],
            )  # fmt: skip
        self.found[key] = known
        return known

    def _insert(self, table: Table, **values: Any) -> int:
        """Insert one row; its new id."""
        result = self._connection.execute(insert(table).values(**values))
        (key,) = result.inserted_primary_key or (None,)
        if key is None:
            raise LookupError(f"the database gave no id for the new row of {table.name}")
        return int(key)

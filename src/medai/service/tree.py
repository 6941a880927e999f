"""The archive as the selection language and the job builder see it: plain records.

The database (:mod:`medai.service.db`) stores instances; these frozen records are its
read-only view one level above instances — project → participant → study → series —
so the selection language (:mod:`medai.service.select`) and the scheduler work on
values, not on database sessions, and are tested without one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

__all__ = ["Level", "ParticipantRecord", "SeriesRecord", "StudyRecord"]


class Level(StrEnum):
    """The unit a job runs on: one task per selected unit of this level."""

    PROJECT = "project"
    PARTICIPANT = "participant"
    STUDY = "study"
    SERIES = "series"


@dataclass(frozen=True)
class SeriesRecord:
    """One series: its UID and the DICOM attributes indexed from its first instance.

    ``attributes`` maps DICOM keywords (``Modality``, ``SeriesDescription``,
    ``FrameOfReferenceUID``, ``SeriesNumber``, ``BodyPartExamined``, ``ImageType``,
    ``ContrastBolusAgent``, ``MagneticFieldStrength``, …) to str / int / float values
    (multi-valued ones joined with ``\\``).
    """

    series_uid: str
    instances: int
    attributes: Mapping[str, str | int | float] = field(default_factory=dict)

    @property
    def modality(self) -> str:
        return str(self.attributes.get("Modality", ""))

    @property
    def description(self) -> str:
        return str(self.attributes.get("SeriesDescription", ""))


@dataclass(frozen=True)
class StudyRecord:
    """One study of a participant, with its series; ``complete`` once its quiet period passed."""

    study_uid: str
    participant: str
    series: tuple[SeriesRecord, ...]
    complete: bool = True
    attributes: Mapping[str, str | int | float] = field(default_factory=dict)


@dataclass(frozen=True)
class ParticipantRecord:
    """One participant (DICOM PatientID within a project) with their studies."""

    participant: str
    project: str
    studies: tuple[StudyRecord, ...]
    attributes: Mapping[str, str | int | float] = field(default_factory=dict)

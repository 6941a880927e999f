"""The service's index: SQLAlchemy 2 models, the engine and sessions.

One schema for SQLite (the embedded default, in WAL mode) and PostgreSQL (by URL).
The archive's files live in a folder; rows here say where, with their SHA-256. The
schema is created and upgraded by Alembic (:mod:`medai.service.migrate`), never by
``create_all`` outside tests of the models themselves.

Tables, top down: users and their allocations, projects (AE title, the callers allowed
to send, de-identification on arrival), memberships; participants → studies → series →
instances; conflicts (a re-sent instance whose bytes differ); jobs → tasks (the unit of
scheduling) → outputs and deliveries (DICOM sent to an archive node); measurements (one
number per task and measure, for CSV export and normality ranking); reviews of tasks
(append-only); the audit log.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Engine,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    sessionmaker,
)

__all__ = [
    "AuditEntry",
    "Base",
    "Caller",
    "Conflict",
    "Delivery",
    "Instance",
    "Job",
    "Measurement",
    "Membership",
    "Output",
    "Participant",
    "Project",
    "Review",
    "ReviewState",
    "Series",
    "Study",
    "Task",
    "TaskState",
    "User",
    "make_engine",
    "session_scope",
    "utcnow",
]


def utcnow() -> dt.datetime:
    """The current time, UTC, timezone-aware (what every timestamp column holds)."""
    return dt.datetime.now(dt.UTC)


class Base(DeclarativeBase):
    """Declarative base of every table; JSON columns hold plain dicts and lists."""

    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}  # noqa: RUF012


UID = String(64)
NAME = String(128)
WHEN = DateTime(timezone=True)


class User(Base):
    """A person or system account: a hashed token and a compute allocation."""

    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(NAME, unique=True)
    token_hash: Mapped[str] = mapped_column(String(128), unique=True)
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    cpu_slots: Mapped[int] = mapped_column(Integer, default=1)
    gpu_slots: Mapped[int] = mapped_column(Integer, default=0)
    memory_gb: Mapped[float] = mapped_column(Float, default=8.0)
    created: Mapped[dt.datetime] = mapped_column(WHEN, default=utcnow)


class Project(Base):
    """A project: its own AE title, the calling AE titles it accepts, its policies."""

    __tablename__ = "projects"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(NAME, unique=True)
    ae_title: Mapped[str] = mapped_column(String(16), unique=True)
    deidentify: Mapped[bool] = mapped_column(Boolean, default=False)
    hold_unreviewed: Mapped[bool] = mapped_column(Boolean, default=True)
    ranking: Mapped[dict[str, Any]] = mapped_column(default=dict)  # NormalityConfig as JSON
    created: Mapped[dt.datetime] = mapped_column(WHEN, default=utcnow)
    callers: Mapped[list[Caller]] = relationship(back_populates="project")


class Caller(Base):
    """A calling AE title allowed to open an association with a project's AE title."""

    __tablename__ = "callers"
    __table_args__ = (UniqueConstraint("project_id", "ae_title"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    ae_title: Mapped[str] = mapped_column(String(16))
    project: Mapped[Project] = relationship(back_populates="callers")


class Membership(Base):
    """A user's role in a project: ``member`` (read, submit) or ``reviewer``."""

    __tablename__ = "memberships"
    __table_args__ = (UniqueConstraint("user_id", "project_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    role: Mapped[str] = mapped_column(String(16), default="member")


class Participant(Base):
    """A participant of a project: the DICOM PatientID (a pseudonym when de-identified)."""

    __tablename__ = "participants"
    __table_args__ = (UniqueConstraint("project_id", "patient_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    patient_id: Mapped[str] = mapped_column(String(64))
    attributes: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Study(Base):
    """A study; ``complete`` once no instance arrived for the project's quiet period."""

    __tablename__ = "studies"
    __table_args__ = (UniqueConstraint("project_id", "study_uid"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    participant_id: Mapped[int] = mapped_column(ForeignKey("participants.id"))
    study_uid: Mapped[str] = mapped_column(UID)
    attributes: Mapped[dict[str, Any]] = mapped_column(default=dict)
    first_received: Mapped[dt.datetime] = mapped_column(WHEN, default=utcnow)
    last_received: Mapped[dt.datetime] = mapped_column(WHEN, default=utcnow)
    complete: Mapped[bool] = mapped_column(Boolean, default=False)
    completed_at: Mapped[dt.datetime | None] = mapped_column(WHEN, default=None)


class Series(Base):
    """A series of a study, with the attributes indexed from its first instance."""

    __tablename__ = "series"
    __table_args__ = (UniqueConstraint("study_id", "series_uid"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"))
    series_uid: Mapped[str] = mapped_column(UID)
    modality: Mapped[str] = mapped_column(String(16), default="")
    description: Mapped[str] = mapped_column(String(64), default="")
    attributes: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Instance(Base):
    """One stored instance: where its file is (relative to the archive root), its hash,
    and its header as DICOM JSON without bulk data (what WADO-RS metadata serves)."""

    __tablename__ = "instances"
    __table_args__ = (UniqueConstraint("project_id", "sop_uid"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"))
    sop_uid: Mapped[str] = mapped_column(UID)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    instance_number: Mapped[int | None] = mapped_column(Integer, default=None)
    path: Mapped[str] = mapped_column(String(400))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(Integer)
    transfer_syntax: Mapped[str] = mapped_column(UID, default="")
    header: Mapped[dict[str, Any]] = mapped_column(default=dict)
    received: Mapped[dt.datetime] = mapped_column(WHEN, default=utcnow)


class Conflict(Base):
    """A re-sent instance whose bytes differ from the stored one: kept beside it, reported."""

    __tablename__ = "conflicts"
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    sop_uid: Mapped[str] = mapped_column(UID)
    path: Mapped[str] = mapped_column(String(400))
    sha256: Mapped[str] = mapped_column(String(64))
    stored_sha256: Mapped[str] = mapped_column(String(64))
    received: Mapped[dt.datetime] = mapped_column(WHEN, default=utcnow)


class Job(Base):
    """A job: what to run (bundle or built-in pipeline) on which selection, at which level.

    A ``standing`` job also queues a task for each study that completes later and
    satisfies its selection (the hospital's "run this on every new FLAIR study").
    """

    __tablename__ = "jobs"
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    kind: Mapped[str] = mapped_column(String(32))
    bundle: Mapped[str | None] = mapped_column(String(200), default=None)
    selection: Mapped[str] = mapped_column(Text)
    level: Mapped[str] = mapped_column(String(16))
    options: Mapped[dict[str, Any]] = mapped_column(default=dict)
    standing: Mapped[bool] = mapped_column(Boolean, default=False)
    created: Mapped[dt.datetime] = mapped_column(WHEN, default=utcnow)


class TaskState:
    """The states of a task (strings in the database, so PostgreSQL needs no enum type)."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    FINAL = frozenset({DONE, FAILED, CANCELLED})


class ReviewState:
    """A task's review: ``none`` (not needed), ``pending``, or the reviewer's decision."""

    NONE = "none"
    PENDING = "pending"
    ACCEPTED = "accepted"
    CORRECTED = "corrected"
    REJECTED = "rejected"
    DECIDED = frozenset({ACCEPTED, CORRECTED, REJECTED})


class Task(Base):
    """One selected unit of a job; ``seq`` is the global submission order.

    A done task carries its normality rank (``rank_score`` in robust SDs, ``colour``,
    ``rank_reasons``, ``uncertain``) and its ``review_state`` (:class:`ReviewState`).
    """

    __tablename__ = "tasks"
    __table_args__ = (UniqueConstraint("job_id", "unit"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    seq: Mapped[int] = mapped_column(Integer, index=True)
    unit: Mapped[str] = mapped_column(String(200))
    inputs: Mapped[dict[str, Any]] = mapped_column(default=dict)
    state: Mapped[str] = mapped_column(String(16), default=TaskState.QUEUED, index=True)
    cpu: Mapped[int] = mapped_column(Integer, default=1)
    gpu: Mapped[int] = mapped_column(Integer, default=0)
    memory_gb: Mapped[float] = mapped_column(Float, default=2.0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    not_before: Mapped[float] = mapped_column(Float, default=0.0)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    queued_at: Mapped[dt.datetime] = mapped_column(WHEN, default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(WHEN, default=None)
    finished_at: Mapped[dt.datetime | None] = mapped_column(WHEN, default=None)
    rank_score: Mapped[float | None] = mapped_column(Float, default=None)
    colour: Mapped[str | None] = mapped_column(String(8), default=None)
    rank_reasons: Mapped[list[Any]] = mapped_column(default=list)
    uncertain: Mapped[bool] = mapped_column(Boolean, default=False)
    review_state: Mapped[str] = mapped_column(String(16), default=ReviewState.NONE, index=True)


class Output(Base):
    """A file a task produced (label map, SEG, SR, JSON), relative to the results root.

    A reviewer's correction is a new row of the same name with the next ``version``
    (its file beside the original, never replacing it).
    """

    __tablename__ = "outputs"
    __table_args__ = (
        UniqueConstraint("task_id", "name", "version", name="uq_outputs_task_name_version"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16))
    path: Mapped[str] = mapped_column(String(400))
    sha256: Mapped[str] = mapped_column(String(64))
    sop_uid: Mapped[str | None] = mapped_column(UID, default=None)
    version: Mapped[int] = mapped_column(Integer, default=1)


class Delivery(Base):
    """A DICOM output on its way to an archive node (C-STORE or STOW-RS), with retries."""

    __tablename__ = "deliveries"
    __table_args__ = (UniqueConstraint("output_id", "destination"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    output_id: Mapped[int] = mapped_column(ForeignKey("outputs.id", ondelete="CASCADE"))
    destination: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    not_before: Mapped[float] = mapped_column(Float, default=0.0)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    sent_at: Mapped[dt.datetime | None] = mapped_column(WHEN, default=None)


class Measurement(Base):
    """One number a task measured (a region volume, a radiomics feature, a probability)."""

    __tablename__ = "measurements"
    __table_args__ = (UniqueConstraint("task_id", "name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"))
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    value: Mapped[float] = mapped_column(Float)
    unit: Mapped[str] = mapped_column(String(32), default="")


class Review(Base):
    """One reviewer decision on a task (append-only): accept, correct or reject."""

    __tablename__ = "reviews"
    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    actor: Mapped[str] = mapped_column(NAME)
    decision: Mapped[str] = mapped_column(String(16))
    comment: Mapped[str] = mapped_column(Text, default="")
    at: Mapped[dt.datetime] = mapped_column(WHEN, default=utcnow)
    output_version: Mapped[int | None] = mapped_column(Integer, default=None)


class AuditEntry(Base):
    """Who did what to which object, when: stores, views, exports, submissions, reviews."""

    __tablename__ = "audit"
    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(WHEN, default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(NAME)
    action: Mapped[str] = mapped_column(String(32))
    project_id: Mapped[int | None] = mapped_column(Integer, default=None)
    target: Mapped[str] = mapped_column(String(400), default="")
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets WAL, full sync, foreign keys and a busy timeout.

    ``synchronous=FULL`` makes a commit durable before it returns, so an instance is
    acknowledged to its sender only once its row survives a power cut.
    """
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session committed on success and rolled back on an exception."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()

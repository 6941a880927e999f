"""Jobs and their tasks in the index: submit, dry run, standing jobs, cancel.

A job is a kind of work (:class:`JobKind`) × a selection (:mod:`medai.service.select`);
it gets one :class:`~medai.service.db.Task` per selected unit. ``Task.seq`` is the global
submission order the scheduler keeps within each user: it is taken from the task ids the
database hands out (an autoincrement / sequence), so two submissions in parallel, on
SQLite or PostgreSQL, never share a number and no counter row needs a lock.

A *standing* job also gets a task for every unit that appears later (a study that
completes after submission and satisfies the selection); the unique ``(job, unit)`` of
the tasks table makes that idempotent, so a unit gets one task, once.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from medai.errors import MedaiError
from medai.service.archive import archive_tree
from medai.service.auth import audit
from medai.service.db import Job, Project, Study, Task, TaskState, User, utcnow
from medai.service.scheduler import Allocation, Capacity, Demand, check_demand
from medai.service.select import SelectionResult, Unit, evaluate_selection, parse_selection

__all__ = [
    "BUNDLE_KINDS",
    "JobError",
    "JobKind",
    "bundle_folder",
    "cancel_job",
    "cancel_task",
    "dry_run",
    "queue_for_completed_studies",
    "registered_bundles",
    "submit_job",
]

_BUNDLE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class JobKind(StrEnum):
    """What a job's tasks do (``medai.service.tasks.run_task`` does the work)."""

    SEGMENTATION = "segmentation"
    SEGMENTATION_RADIOMICS = "segmentation+radiomics"
    RADIOMICS = "radiomics"
    CLASSIFICATION = "classification"
    NOOP = "noop"


BUNDLE_KINDS = frozenset(
    {JobKind.SEGMENTATION, JobKind.SEGMENTATION_RADIOMICS, JobKind.CLASSIFICATION}
)


class JobError(MedaiError, ValueError):
    """A job that cannot be submitted or changed as asked; the message says what to do."""


def dry_run(session: Session, project: Project, text: str) -> SelectionResult:
    """What ``text`` selects in ``project`` now: the units and the exclusions with reasons.

    Raises:
        SelectionSyntaxError: The text does not parse (the message points at the token).
    """
    return evaluate_selection(parse_selection(text), archive_tree(session, project.id))


def bundle_folder(bundles: Path, name: str) -> Path:
    """The folder of the registered bundle ``name`` under ``bundles`` (``ROOT/bundles``).

    Raises:
        JobError: ``name`` is not a plain bundle name, or no such bundle is registered.
    """
    if not isinstance(name, str) or not _BUNDLE_NAME.match(name) or name in {".", ".."}:
        raise JobError(
            f"bundle {name!r} is not a registered bundle name: use the name shown by "
            "GET /api/bundles (letters, digits, '_', '.', '-'), never a path"
        )
    folder = bundles / name
    if not (folder / "bundle.json").is_file():
        known = ", ".join(b["name"] for b in registered_bundles(bundles)) or "none"
        raise JobError(
            f"no bundle {name!r} is registered (known: {known}); register it with "
            "`medai serve bundle add ROOT BUNDLE`"
        )
    return folder


def registered_bundles(bundles: Path) -> list[dict[str, Any]]:
    """The registered bundles, by name: ``name``, ``task`` and ``version`` from bundle.json."""
    found: list[dict[str, Any]] = []
    if not bundles.is_dir():
        return found
    for folder in sorted(bundles.iterdir()):
        info_file = folder / "bundle.json"
        if folder.name.startswith(".") or not info_file.is_file():
            continue
        try:
            info = json.loads(info_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        found.append(
            {"name": folder.name, "task": info.get("task"), "version": info.get("version")}
        )
    return found


def _kind(kind: str | JobKind) -> JobKind:
    try:
        return JobKind(kind)
    except ValueError:
        raise JobError(
            f"job kind {kind!r} is not known: use one of {', '.join(k.value for k in JobKind)}"
        ) from None


def _add_tasks(session: Session, job: Job, units: Sequence[Unit], demand: Demand) -> list[Task]:
    """One task per unit, ``seq`` in unit order taken from the ids the database gave them."""
    tasks = [
        Task(
            job_id=job.id, project_id=job.project_id, user_id=job.user_id, seq=0,
            unit=unit.key, inputs=_inputs(unit), cpu=demand.cpu, gpu=demand.gpu,
            memory_gb=demand.memory_gb, queued_at=utcnow(),
        )
        for unit in units
    ]  # fmt: skip
    session.add_all(tasks)
    session.flush()
    for task, seq in zip(tasks, sorted(t.id for t in tasks), strict=True):
        task.seq = seq
    return tasks


def _inputs(unit: Unit) -> dict[str, Any]:
    return {
        "series": {alias: list(uids) for alias, uids in unit.series.items()},
        "study_uid": unit.study_uid,
        "participant": unit.participant,
    }


def submit_job(
    session: Session, user: User, project: Project, kind: str | JobKind, selection_text: str,
    *, bundle: str | None = None, options: Mapping[str, Any] | None = None,
    standing: bool = False, demand: Demand = Demand(), bundles: Path | None = None,
    capacity: Capacity | None = None,
) -> Job:  # fmt: skip
    """Create a job and one queued task per unit its selection picks now (audited).

    Args:
        bundles: ``ROOT/bundles``; needed when the kind runs a bundle.
        capacity: The worker pool; a demand larger than it is refused too.

    Raises:
        JobError: Unknown kind, a missing / unregistered bundle, a demand over the user's
            allocation, or options that are not a JSON object.
        SelectionSyntaxError: The selection does not parse.
    """
    job_kind = _kind(kind)
    if job_kind in BUNDLE_KINDS and bundle is None:
        raise JobError(f"a {job_kind.value} job needs a bundle: give its registered name")
    if bundle is not None:
        if bundles is None:
            raise JobError("bundles folder not given: pass bundles=ROOT/bundles")
        bundle_folder(bundles, bundle)
    opts = dict(options or {})
    try:
        json.dumps(opts)
    except (TypeError, ValueError) as exc:
        raise JobError(f"options must be a JSON object ({exc})") from exc
    try:
        check_demand(demand, Allocation(user.cpu_slots, user.gpu_slots, user.memory_gb), capacity)
    except ValueError as exc:
        raise JobError(str(exc)) from exc
    selection = parse_selection(selection_text)
    result = evaluate_selection(selection, archive_tree(session, project.id))
    job = Job(
        project_id=project.id, user_id=user.id, kind=job_kind.value, bundle=bundle,
        selection=selection_text, level=selection.level.value, options=opts, standing=standing,
    )  # fmt: skip
    session.add(job)
    session.flush()
    tasks = _add_tasks(session, job, result.units, demand)
    audit(
        session, user.name, "submit", project_id=project.id, target=f"job {job.id}",
        kind=job.kind, bundle=bundle, tasks=len(tasks), standing=standing,
    )  # fmt: skip
    return job


def queue_for_completed_studies(session: Session, studies: Sequence[Study]) -> list[Task]:
    """Queue tasks of standing jobs for units that appeared (call after studies complete).

    Every standing job of the studies' projects is evaluated again; each selected unit
    without a task yet gets one (so a unit gets one task, once, however often this runs).
    """
    created: list[Task] = []
    for project_id in sorted({study.project_id for study in studies}):
        jobs = session.scalars(
            select(Job).where(Job.project_id == project_id, Job.standing.is_(True))
        ).all()
        if not jobs:
            continue
        tree = archive_tree(session, project_id)
        for job in sorted(jobs, key=lambda j: j.id):
            result = evaluate_selection(parse_selection(job.selection), tree)
            have = set(session.scalars(select(Task.unit).where(Task.job_id == job.id)))
            new = [unit for unit in result.units if unit.key not in have]
            if not new:
                continue
            first = session.scalars(select(Task).where(Task.job_id == job.id).limit(1)).first()
            demand = (
                Demand(first.cpu, first.gpu, first.memory_gb) if first is not None else Demand()
            )
            created.extend(_add_tasks(session, job, new, demand))
    return created


def cancel_task(session: Session, task: Task, *, actor: str) -> bool:
    """Cancel a queued or running task (the dispatcher stops a running one); audited.

    Returns:
        Whether the task was cancelled now (False when it had already ended).
    """
    if task.state in TaskState.FINAL:
        return False
    task.state = TaskState.CANCELLED
    task.finished_at = utcnow()
    audit(session, actor, "cancel", project_id=task.project_id, target=f"task {task.id}")
    return True


def cancel_job(session: Session, job: Job, *, actor: str) -> int:
    """Cancel every task of ``job`` that has not ended and stop a standing job; audited.

    Returns:
        How many tasks were cancelled.
    """
    job.standing = False
    count = 0
    for task in session.scalars(select(Task).where(Task.job_id == job.id).order_by(Task.seq)):
        if task.state not in TaskState.FINAL:
            task.state = TaskState.CANCELLED
            task.finished_at = utcnow()
            count += 1
    audit(session, actor, "cancel", project_id=job.project_id, target=f"job {job.id}", tasks=count)
    return count

"""API routes for selections, jobs, tasks, their outputs and the measurements export.

Every route is authenticated and checks project membership; files are found through
:class:`~medai.service.db.Output` rows, never through a path in the request.
"""

from __future__ import annotations

import io
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd
from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from medai.service.auth import audit
from medai.service.db import Job, Measurement, Output, Project, Task, TaskState, User
from medai.service.deps import CurrentUser, DbSession, ServiceDep, member_of
from medai.service.dispatcher import pool_capacity, task_queue
from medai.service.jobs import (
    JobError,
    cancel_job,
    cancel_task,
    dry_run,
    registered_bundles,
    submit_job,
)
from medai.service.scheduler import Demand, QueuedTask, blocked_reason
from medai.service.select import SelectionResult, SelectionSyntaxError

__all__ = ["router"]

router = APIRouter(prefix="/api", tags=["jobs"])


class DryRunBody(BaseModel):
    """A selection to evaluate without submitting anything."""

    model_config = ConfigDict(extra="forbid")
    text: str = Field(min_length=1, max_length=20_000)


class JobBody(BaseModel):
    """A job to submit: what to run, on which selection, with what demand per task."""

    model_config = ConfigDict(extra="forbid")
    kind: str
    selection: str = Field(min_length=1, max_length=20_000)
    bundle: str | None = None
    standing: bool = False
    options: dict[str, Any] = Field(default_factory=dict)
    cpu: int = Field(default=1, ge=1)
    gpu: int = Field(default=0, ge=0)
    memory_gb: float = Field(default=2.0, ge=0)


def _selection_json(result: SelectionResult) -> dict[str, Any]:
    return {
        "level": result.level.value,
        "units": [
            {
                "key": u.key, "participant": u.participant, "study_uid": u.study_uid,
                "series": {alias: list(uids) for alias, uids in u.series.items()},
            }
            for u in result.units
        ],
        "excluded": [asdict(e) for e in result.excluded],
    }  # fmt: skip


def _when(value: Any) -> str | None:
    return None if value is None else value.isoformat()


def _job_json(session: Session, job: Job) -> dict[str, Any]:
    counts = dict(
        session.execute(
            select(Task.state, func.count()).where(Task.job_id == job.id).group_by(Task.state)
        ).all()
    )
    user = session.get(User, job.user_id)
    return {
        "id": job.id, "kind": job.kind, "bundle": job.bundle, "selection": job.selection,
        "level": job.level, "standing": job.standing, "options": job.options,
        "user": user.name if user else None, "created": _when(job.created),
        "tasks": sum(counts.values()), "states": counts,
    }  # fmt: skip


def _task_json(task: Task, user: str, blocked: str | None) -> dict[str, Any]:
    return {
        "id": task.id, "job": task.job_id, "unit": task.unit, "seq": task.seq, "user": user,
        "state": task.state, "progress": task.progress, "attempts": task.attempts,
        "max_attempts": task.max_attempts, "error": task.error, "blocked": blocked,
        "queued_at": _when(task.queued_at), "started_at": _when(task.started_at),
        "finished_at": _when(task.finished_at), "rank_score": task.rank_score,
        "colour": task.colour, "uncertain": task.uncertain, "review": task.review_state,
    }  # fmt: skip


def _job_of(session: Session, project: Project, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None or job.project_id != project.id:
        raise HTTPException(404, f"no job {job_id} in project {project.name!r}: list GET …/jobs")
    return job


def _task_of(session: Session, project: Project, task_id: int) -> Task:
    task = session.get(Task, task_id)
    if task is None or task.project_id != project.id:
        raise HTTPException(404, f"no task {task_id} in project {project.name!r}: list GET …/tasks")
    return task


@router.get("/bundles")
def bundles(user: CurrentUser, context: ServiceDep) -> list[dict[str, Any]]:
    """The registered bundles a job can name."""
    return registered_bundles(context.config.root / "bundles")


@router.post("/projects/{project}/selections/dry-run")
def selection_dry_run(
    project: str, body: DryRunBody, user: CurrentUser, session: DbSession
) -> dict[str, Any]:
    """The units a selection picks now and why the others are left out; 422 on a syntax error."""
    row = member_of(session, user, project)
    try:
        result = dry_run(session, row, body.text)
    except SelectionSyntaxError as error:
        raise HTTPException(422, str(error)) from error
    audit(session, user.name, "view", project_id=row.id, target="selection dry run")
    return _selection_json(result)


@router.post("/projects/{project}/jobs", status_code=201)
def submit(
    project: str, body: JobBody, user: CurrentUser, session: DbSession, context: ServiceDep
) -> dict[str, Any]:
    """Submit a job: one queued task per selected unit."""
    row = member_of(session, user, project)
    try:
        job = submit_job(
            session, user, row, body.kind, body.selection, bundle=body.bundle,
            options=body.options, standing=body.standing,
            demand=Demand(body.cpu, body.gpu, body.memory_gb),
            bundles=context.config.root / "bundles", capacity=pool_capacity(context),
        )  # fmt: skip
    except (SelectionSyntaxError, JobError) as error:
        raise HTTPException(422, str(error)) from error
    session.commit()  # before the reply: the session dependency commits only after it
    return _job_json(session, job)


@router.get("/projects/{project}/jobs")
def jobs(project: str, user: CurrentUser, session: DbSession) -> list[dict[str, Any]]:
    """The project's jobs, newest first, with task counts by state."""
    row = member_of(session, user, project)
    audit(session, user.name, "view", project_id=row.id, target="jobs")
    found = session.scalars(select(Job).where(Job.project_id == row.id).order_by(Job.id.desc()))
    return [_job_json(session, job) for job in found]


@router.get("/projects/{project}/jobs/{job_id}")
def job(project: str, job_id: int, user: CurrentUser, session: DbSession) -> dict[str, Any]:
    """One job with its task counts by state."""
    row = member_of(session, user, project)
    audit(session, user.name, "view", project_id=row.id, target=f"job {job_id}")
    return _job_json(session, _job_of(session, row, job_id))


@router.post("/projects/{project}/jobs/{job_id}/cancel")
def job_cancel(project: str, job_id: int, user: CurrentUser, session: DbSession) -> dict[str, Any]:
    """Cancel every task of a job that has not ended (running ones are stopped)."""
    row = member_of(session, user, project)
    count = cancel_job(session, _job_of(session, row, job_id), actor=user.name)
    session.commit()  # before the reply: the session dependency commits only after it
    return {"job": job_id, "cancelled": count}


@router.get("/projects/{project}/tasks")
def tasks(
    project: str, user: CurrentUser, session: DbSession, context: ServiceDep,
    state: str | None = None, job: int | None = None,
) -> list[dict[str, Any]]:  # fmt: skip
    """The project's tasks in submission order, with why a queued one waits."""
    row = member_of(session, user, project)
    states = {TaskState.QUEUED, TaskState.RUNNING} | TaskState.FINAL
    if state is not None and state not in states:
        raise HTTPException(422, f"state {state!r} is not one of {', '.join(sorted(states))}")
    query = select(Task, User.name).join(User, User.id == Task.user_id)
    query = query.where(Task.project_id == row.id).order_by(Task.seq)
    if state is not None:
        query = query.where(Task.state == state)
    if job is not None:
        query = query.where(Task.job_id == job)
    queued, running, allocations = task_queue(session)
    capacity, now = pool_capacity(context), time.time()
    result = []
    for task, name in session.execute(query).all():
        blocked = None
        if task.state == TaskState.QUEUED:
            mine = QueuedTask(task.id, name, task.seq, Demand(task.cpu, task.gpu, task.memory_gb),
                              task.not_before)  # fmt: skip
            blocked = blocked_reason(mine, queued, running, allocations, capacity, now=now)
        result.append(_task_json(task, name, blocked))
    audit(session, user.name, "view", project_id=row.id, target="tasks")
    return result


@router.post("/projects/{project}/tasks/{task_id}/cancel")
def task_cancel(
    project: str, task_id: int, user: CurrentUser, session: DbSession
) -> dict[str, Any]:
    """Cancel a queued or running task."""
    row = member_of(session, user, project)
    cancelled = cancel_task(session, _task_of(session, row, task_id), actor=user.name)
    session.commit()  # before the reply: the session dependency commits only after it
    return {"task": task_id, "cancelled": cancelled}


@router.get("/projects/{project}/tasks/{task_id}/outputs")
def outputs(
    project: str, task_id: int, user: CurrentUser, session: DbSession
) -> list[dict[str, Any]]:
    """The files a task produced."""
    row = member_of(session, user, project)
    _task_of(session, row, task_id)
    audit(session, user.name, "view", project_id=row.id, target=f"task {task_id} outputs")
    query = select(Output).where(Output.task_id == task_id)
    found = session.scalars(query.order_by(Output.name, Output.version))
    return [
        {"name": o.name, "version": o.version, "kind": o.kind, "sha256": o.sha256,
         "sop_uid": o.sop_uid}
        for o in found
    ]  # fmt: skip


def _result_file(results: Path, relative: str) -> Path:
    path = (results / relative).resolve()
    if not path.is_relative_to(results.resolve()) or not path.is_file():
        raise HTTPException(410, "the output's file is gone from the results folder")
    return path


@router.get("/projects/{project}/tasks/{task_id}/outputs/{name}")
def output_file(
    project: str, task_id: int, name: str, user: CurrentUser, session: DbSession,
    context: ServiceDep, version: int | None = None,
) -> FileResponse:  # fmt: skip
    """Download one output, found by its name in the task's output rows: the newest
    version (a reviewer's correction) unless ``version`` asks for another."""
    row = member_of(session, user, project)
    _task_of(session, row, task_id)
    query = select(Output).where(Output.task_id == task_id, Output.name == name)
    if version is not None:
        query = query.where(Output.version == version)
    output = session.scalars(query.order_by(Output.version.desc())).first()
    if output is None:
        raise HTTPException(404, f"task {task_id} has no output {name!r}: list …/outputs")
    path = _result_file(context.config.results, output.path)
    audit(session, user.name, "export", project_id=row.id, target=f"task {task_id}/{name}")
    return FileResponse(path, filename=Path(output.path).name)


@router.get("/projects/{project}/tasks/{task_id}/log", response_class=PlainTextResponse)
def task_log(
    project: str, task_id: int, user: CurrentUser, session: DbSession, context: ServiceDep
) -> str:
    """The task's log (its output and logging, every attempt so far)."""
    row = member_of(session, user, project)
    task = _task_of(session, row, task_id)
    audit(session, user.name, "view", project_id=row.id, target=f"task {task_id} log")
    log = context.config.results / ".logs" / f"{task.id}.log"
    return log.read_text(encoding="utf-8", errors="replace") if log.is_file() else ""


def _measurements_table(session: Session, project: Project) -> pd.DataFrame:
    """One row per finished task, one column per measure (NaN where a task lacks it)."""
    done = session.execute(
        select(Task.id, Task.job_id, Task.unit, Job.kind)
        .join(Job, Job.id == Task.job_id)
        .where(Task.project_id == project.id, Task.state == TaskState.DONE)
        .order_by(Task.seq)
    ).all()
    table = pd.DataFrame(done, columns=["task", "job", "unit", "kind"])
    rows = session.execute(
        select(Measurement.task_id, Measurement.name, Measurement.value).where(
            Measurement.project_id == project.id
        )
    ).all()
    if rows:
        values = pd.DataFrame(rows, columns=["task", "name", "value"])
        wide = values.pivot(index="task", columns="name", values="value").reset_index()
        wide.columns.name = None
        table = table.merge(wide, on="task", how="left")
    return table


@router.get("/projects/{project}/measurements.csv", response_class=PlainTextResponse)
def measurements_csv(project: str, user: CurrentUser, session: DbSession) -> Response:
    """Every measurement of the project: one row per task, one column per measure."""
    row = member_of(session, user, project)
    table = _measurements_table(session, row)
    audit(session, user.name, "export", project_id=row.id, target="measurements.csv")
    return Response(table.to_csv(index=False), media_type="text/csv")


@router.get("/projects/{project}/measurements.parquet")
def measurements_parquet(project: str, user: CurrentUser, session: DbSession) -> Response:
    """The same table as ``measurements.csv``, as Parquet."""
    row = member_of(session, user, project)
    buffer = io.BytesIO()
    _measurements_table(session, row).to_parquet(buffer, index=False)
    audit(session, user.name, "export", project_id=row.id, target="measurements.parquet")
    return Response(buffer.getvalue(), media_type="application/vnd.apache.parquet")

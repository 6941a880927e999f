"""API routes of the review: the queue, decisions, corrected label maps, the measures'
distributions and one task's normality. Every route is authenticated and member-checked;
deciding needs the reviewer (or owner) role; everything is audited."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Form, HTTPException, UploadFile
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from medai.service.auth import AccessDeniedError, audit
from medai.service.db import Measurement, Project, Review, Task
from medai.service.deps import CurrentUser, DbSession, ServiceDep, member_of
from medai.service.review import (
    Decision,
    QueueItem,
    ReviewError,
    measure_distributions,
    record_review,
    review_queue,
)

__all__ = ["router"]

router = APIRouter(prefix="/api", tags=["review"])


class ReviewBody(BaseModel):
    """A decision on a task's result: accept or reject (a correction is uploaded)."""

    model_config = ConfigDict(extra="forbid")
    decision: str
    comment: str = Field(default="", max_length=4000)


def _when(value: Any) -> str | None:
    return None if value is None else value.isoformat()


def _item_json(item: QueueItem) -> dict[str, Any]:
    return {
        "task": item.task_id, "job": item.job_id, "unit": item.unit, "kind": item.kind,
        "colour": item.colour, "rank_score": item.rank_score, "reasons": list(item.reasons),
        "uncertain": item.uncertain, "finished_at": _when(item.finished_at),
    }  # fmt: skip


def _task_of(session: Session, project: Project, task_id: int) -> Task:
    task = session.get(Task, task_id)
    if task is None or task.project_id != project.id:
        raise HTTPException(404, f"no task {task_id} in project {project.name!r}: list GET …/tasks")
    return task


def _review_json(review: Review) -> dict[str, Any]:
    return {
        "id": review.id, "task": review.task_id, "actor": review.actor,
        "decision": review.decision, "comment": review.comment, "at": _when(review.at),
        "output_version": review.output_version,
    }  # fmt: skip


def _decide(
    session: Session, context: Any, user: Any, task: Task, decision: str, comment: str,
    corrected: bytes | None,
) -> dict[str, Any]:  # fmt: skip
    try:
        review = record_review(session, context, user, task, decision, comment, corrected)
    except AccessDeniedError as error:
        raise HTTPException(
            403, f"{error}: deciding a review needs the reviewer or owner role"
        ) from error
    except ReviewError as error:
        raise HTTPException(422, str(error)) from error
    session.commit()  # before the reply: the session dependency commits only after it
    return {**_review_json(review), "review_state": task.review_state}


@router.get("/projects/{project}/review")
def queue(project: str, user: CurrentUser, session: DbSession) -> list[dict[str, Any]]:
    """The tasks waiting for review: red before amber, the oddest first."""
    row = member_of(session, user, project)
    audit(session, user.name, "view", project_id=row.id, target="review queue")
    return [_item_json(item) for item in review_queue(session, row)]


@router.post("/projects/{project}/tasks/{task_id}/review")
def review(
    project: str, task_id: int, body: ReviewBody, user: CurrentUser, session: DbSession,
    context: ServiceDep,
) -> dict[str, Any]:  # fmt: skip
    """Accept (releases held deliveries) or reject (cancels unsent ones) a task's result."""
    row = member_of(session, user, project)
    task = _task_of(session, row, task_id)
    if body.decision == Decision.CORRECT:
        raise HTTPException(
            422, f"upload the corrected label map to POST …/tasks/{task_id}/correction"
        )
    return _decide(session, context, user, task, body.decision, body.comment, None)


@router.post("/projects/{project}/tasks/{task_id}/correction")
def correction(
    project: str, task_id: int, file: Annotated[UploadFile, File()], user: CurrentUser,
    session: DbSession, context: ServiceDep,
    comment: Annotated[str, Form(max_length=4000)] = "",
) -> dict[str, Any]:  # fmt: skip
    """Store a corrected label map as the next version of the task's ``labels.nii.gz``."""
    row = member_of(session, user, project)
    task = _task_of(session, row, task_id)
    data = file.file.read()
    return _decide(session, context, user, task, Decision.CORRECT, comment, data)


@router.get("/projects/{project}/measures")
def measures(project: str, user: CurrentUser, session: DbSession) -> dict[str, Any]:
    """Per measure: values by task, histogram edges and counts, opacity per bin."""
    row = member_of(session, user, project)
    audit(session, user.name, "view", project_id=row.id, target="measures")
    return {
        name: {
            "unit": d.unit, "values": {str(k): v for k, v in d.values.items()},
            "edges": list(d.edges), "counts": list(d.counts), "opacity": list(d.opacity),
        }
        for name, d in measure_distributions(session, row).items()
    }  # fmt: skip


@router.get("/projects/{project}/tasks/{task_id}/normality")
def normality(project: str, task_id: int, user: CurrentUser, session: DbSession) -> dict[str, Any]:
    """One task's rank, colour and reasons, its measures' bins, its review history."""
    row = member_of(session, user, project)
    task = _task_of(session, row, task_id)
    audit(session, user.name, "view", project_id=row.id, target=f"task {task_id} normality")
    distributions = measure_distributions(session, row)
    own = session.scalars(
        select(Measurement).where(Measurement.task_id == task.id).order_by(Measurement.name)
    )
    reviews = session.scalars(select(Review).where(Review.task_id == task.id).order_by(Review.id))
    return {
        "task": task.id, "state": task.state, "colour": task.colour,
        "rank_score": task.rank_score, "reasons": list(task.rank_reasons or ()),
        "uncertain": task.uncertain, "review_state": task.review_state,
        "measures": [
            {"name": m.name, "value": m.value, "unit": m.unit,
             "bin": distributions[m.name].bin_of(task.id) if m.name in distributions else None}
            for m in own
        ],
        "reviews": [_review_json(r) for r in reviews],
    }  # fmt: skip

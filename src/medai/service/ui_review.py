"""The review queue page of the web UI: accept, correct (upload a label map) or reject.

The work is :mod:`medai.service.review`'s (``review_queue``, ``record_review``: the
reviewer role, releasing or cancelling deliveries, the audit); this module renders the
queue and passes a decision on. Keyboard: ``j``/``k`` move,
``a`` accepts, ``c`` opens the correction upload, ``r`` rejects (``static/ui.js``).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from medai.service.auth import AccessDeniedError, audit
from medai.service.deps import DbSession, ServiceDep
from medai.service.review import record_review, review_queue
from medai.service.ui import UiPageError, UiUser, page, ui_project, ui_task

__all__ = ["router"]

router = APIRouter(prefix="/ui", include_in_schema=False)
_DECISIONS = ("accept", "correct", "reject")
_MAX_CORRECTION = 256 * 1024 * 1024


@router.get("/p/{project}/review")
def queue_page(
    request: Request, project: str, user: UiUser, session: DbSession, selected: int | None = None
) -> HTMLResponse:
    """The pending reviews, most unusual first; the selected one (or the first) expanded."""
    row = ui_project(session, user, project)
    items = list(review_queue(session, row))
    audit(session, user.name, "view", project_id=row.id, target="ui review queue")
    ids = [int(item.task_id) for item in items]
    current = selected if selected in ids else (ids[0] if ids else None)
    return page(
        request, "review.html", user=user, project=row, items=items, current=current,
        message=request.query_params.get("done"),
    )  # fmt: skip


@router.post("/p/{project}/tasks/{task_id}/review")
def decision_form(
    request: Request, project: str, task_id: int, user: UiUser, session: DbSession,
    context: ServiceDep, decision: Annotated[str, Form()],
    comment: Annotated[str, Form()] = "", file: Annotated[UploadFile | None, File()] = None,
) -> Response:  # fmt: skip
    """Record a decision (with the corrected label map for ``correct``); back to the queue."""
    row = ui_project(session, user, project)
    task = ui_task(session, row, task_id)
    if decision not in _DECISIONS:
        raise UiPageError(f"decision {decision!r} is not one of {', '.join(_DECISIONS)}", 422)
    corrected = None
    if decision == "correct":
        corrected = file.file.read(_MAX_CORRECTION + 1) if file is not None else b""
        if not corrected or len(corrected) > _MAX_CORRECTION:
            raise UiPageError("a correction needs a NIfTI label map file (at most 256 MB)", 422)
    try:
        record_review(session, context, user, task, decision, comment, corrected)
    except AccessDeniedError as error:
        raise UiPageError(str(error)) from error
    except (ValueError, TypeError) as error:
        raise UiPageError(f"{error}", status=422) from error
    session.commit()
    target = f"/ui/p/{row.name}/review?done={decision}ed+task+{task.id}"
    return RedirectResponse(target, status_code=303)

"""The web UI of ``medai serve``: server-rendered pages under ``/ui`` (Jinja2 + htmx).

Login takes a token and sets an HttpOnly, SameSite=Strict cookie (Secure over https);
every other page needs it — without it a page answers 303 to the login form and renders
nothing — and checks project membership (a 403 page otherwise). Views are audited like
the API's. Files are found through index rows (series → instances, task → outputs),
never through a path in the request. The JavaScript (htmx, NiiVue) is vendored under
``static/vendor`` with its licence; nothing is fetched at run time.

Pages: projects; the archive browser with thumbnails; the selection editor (dry run,
submit); the job list (polled); per-measure distributions; the result viewer (NiiVue:
input, label map overlay with per-region toggles, uncertainty map); the review queue
(:mod:`medai.service.ui_review`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Form, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy import select
from sqlalchemy.orm import Session

from medai.errors import MedaiError
from medai.service.archive import archive_tree
from medai.service.auth import AccessDeniedError, audit, authenticate, project_for, projects_of
from medai.service.db import Job, Output, Project, Task, User
from medai.service.deps import SESSION_COOKIE, DbSession, ServiceDep
from medai.service.dispatcher import pool_capacity
from medai.service.jobs import (
    JobError,
    JobKind,
    bundle_folder,
    dry_run,
    registered_bundles,
    submit_job,
)
from medai.service.scheduler import Demand
from medai.service.select import SelectionSyntaxError
from medai.service.ui_views import (
    input_volume,
    label_focus,
    measure_strips,
    series_thumbnail,
    task_rank,
    task_rows,
)

__all__ = [
    "UiLoginRequiredError",
    "UiPageError",
    "UiUser",
    "install_ui",
    "page",
    "router",
    "templates",
    "ui_project",
    "ui_task",
    "ui_user",
]

_HERE = Path(__file__).parent
templates = Jinja2Templates(directory=_HERE / "templates")
router = APIRouter(prefix="/ui", include_in_schema=False)
_NIFTI = {"nifti"}


class UiLoginRequiredError(Exception):
    """A UI page asked for without a valid login cookie: answered by a 303 to the login."""


class UiPageError(Exception):
    """A UI request refused: a project the user is not a member of (403), a missing object
    (404), a bad form (422); answered by the error page with ``status``."""

    def __init__(self, message: str, status: int = 403) -> None:
        super().__init__(message)
        self.status = status


def ui_user(request: Request, session: DbSession) -> User:
    """The user of the login cookie; :class:`UiLoginRequiredError` otherwise."""
    user = authenticate(session, request.cookies.get(SESSION_COOKIE))
    if user is None:
        raise UiLoginRequiredError
    return user


UiUser = Annotated[User, Depends(ui_user)]


def ui_project(session: Session, user: User, name: str, *, role: str | None = None) -> Project:
    """The project ``name`` if ``user`` may use it; :class:`UiPageError` (403) otherwise."""
    try:
        return project_for(session, user, name, role=role)
    except AccessDeniedError as error:
        raise UiPageError(str(error)) from error


def ui_task(session: Session, project: Project, task_id: int) -> Task:
    """The task ``task_id`` of ``project``; :class:`UiPageError` (404) otherwise."""
    task = session.get(Task, task_id)
    if task is None or task.project_id != project.id:
        raise UiPageError(f"no task {task_id} in project {project.name!r}", status=404)
    return task


def page(request: Request, name: str, status: int = 200, **values: Any) -> HTMLResponse:
    """Render template ``name`` with ``values`` (and the request) as an HTML response."""
    return templates.TemplateResponse(request, name, values, status_code=status)


def install_ui(app: FastAPI) -> None:
    """Add the UI's routes, its static files under ``/ui/static`` and its error pages."""
    app.mount("/ui/static", StaticFiles(directory=_HERE / "static"), name="ui-static")
    app.include_router(router)
    from medai.service.ui_review import router as review_router

    app.include_router(review_router)

    async def _login(request: Request, _error: Exception) -> Response:
        return RedirectResponse("/ui/login", status_code=303)

    async def _denied(request: Request, error: Exception) -> Response:
        status = error.status if isinstance(error, UiPageError) else 403
        return page(request, "error.html", status=status, message=str(error), user=None)

    app.add_exception_handler(UiLoginRequiredError, _login)
    app.add_exception_handler(UiPageError, _denied)


# -- login ----------------------------------------------------------------------------------
@router.get("/login")
def login_form(request: Request) -> HTMLResponse:
    return page(request, "login.html", user=None, error=None)


@router.post("/login")
def login(request: Request, session: DbSession, token: Annotated[str, Form()] = "") -> Response:
    """Check the token; set the session cookie and go to the projects."""
    user = authenticate(session, token.strip())
    if user is None:
        message = "unknown token: paste the token `medai serve user add NAME` printed"
        return page(request, "login.html", status=401, user=None, error=message)
    audit(session, user.name, "login", target="ui")
    response = RedirectResponse("/ui/", status_code=303)
    response.set_cookie(
        SESSION_COOKIE, token.strip(), httponly=True, samesite="strict",
        secure=request.url.scheme == "https", path="/",
    )  # fmt: skip
    return response


@router.post("/logout")
def logout() -> Response:
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


# -- projects and the archive ---------------------------------------------------------------
@router.get("/")
def projects(request: Request, user: UiUser, session: DbSession) -> HTMLResponse:
    return page(request, "projects.html", user=user, projects=projects_of(session, user))


@router.get("/p/{project}")
def archive(request: Request, project: str, user: UiUser, session: DbSession) -> HTMLResponse:
    """The archive browser: participants → studies → series, with thumbnails."""
    row = ui_project(session, user, project)
    audit(session, user.name, "view", project_id=row.id, target="ui archive")
    tree = archive_tree(session, row.id)
    return page(request, "archive.html", user=user, project=row, tree=tree)


@router.get("/p/{project}/series/{series_uid}/thumbnail.png")
def thumbnail(
    project: str, series_uid: str, user: UiUser, session: DbSession, context: ServiceDep
) -> Response:
    """The middle slice of a series as a small PNG (found through its instance rows)."""
    row = ui_project(session, user, project)
    png = series_thumbnail(session, context, row, series_uid)
    if png is None:
        raise UiPageError(f"no image series {series_uid!r} in {row.name!r}", status=404)
    audit(session, user.name, "view", project_id=row.id, target=f"series {series_uid} thumbnail")
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=600"})


# -- selection and jobs ---------------------------------------------------------------------
@router.get("/p/{project}/select")
def selection_editor(
    request: Request, project: str, user: UiUser, session: DbSession, context: ServiceDep
) -> HTMLResponse:
    row = ui_project(session, user, project)
    bundles = registered_bundles(context.config.root / "bundles")
    kinds = [k.value for k in JobKind]
    return page(request, "select.html", user=user, project=row, bundles=bundles, kinds=kinds)


@router.post("/p/{project}/select/dry-run")
def selection_dry_run(
    request: Request, project: str, user: UiUser, session: DbSession,
    text: Annotated[str, Form()] = "",
) -> HTMLResponse:  # fmt: skip
    """The dry run as an HTML fragment: units and exclusions, or the caret error."""
    row = ui_project(session, user, project)
    try:
        result = dry_run(session, row, text)
    except SelectionSyntaxError as error:
        return page(request, "_dryrun.html", result=None, error=str(error))
    audit(session, user.name, "view", project_id=row.id, target="selection dry run")
    return page(request, "_dryrun.html", result=result, error=None)


@router.post("/p/{project}/jobs")
def submit(
    request: Request, project: str, user: UiUser, session: DbSession, context: ServiceDep,
    kind: Annotated[str, Form()], text: Annotated[str, Form()] = "",
    bundle: Annotated[str, Form()] = "", standing: Annotated[bool, Form()] = False,
) -> Response:  # fmt: skip
    """Submit the selection as a job; on success go to the job list."""
    row = ui_project(session, user, project)
    try:
        submit_job(
            session, user, row, kind, text, bundle=bundle or None, standing=standing,
            demand=Demand(), bundles=context.config.root / "bundles",
            capacity=pool_capacity(context),
        )  # fmt: skip
    except (SelectionSyntaxError, JobError) as error:
        return page(request, "_dryrun.html", status=422, result=None, error=str(error))
    session.commit()
    response = Response(status_code=204)
    response.headers["HX-Redirect"] = f"/ui/p/{row.name}/jobs"
    return response


@router.get("/p/{project}/jobs")
def jobs(request: Request, project: str, user: UiUser, session: DbSession) -> HTMLResponse:
    """The job list; its table is refreshed by htmx polling :func:`job_rows`."""
    row = ui_project(session, user, project)
    audit(session, user.name, "view", project_id=row.id, target="ui jobs")
    return page(request, "jobs.html", user=user, project=row, rows=task_rows(session, row))


@router.get("/p/{project}/jobs/rows")
def job_rows(request: Request, project: str, user: UiUser, session: DbSession) -> HTMLResponse:
    row = ui_project(session, user, project)
    return page(request, "_job_rows.html", project=row, rows=task_rows(session, row))


@router.get("/p/{project}/measures")
def measures(request: Request, project: str, user: UiUser, session: DbSession) -> HTMLResponse:
    """Every measure's distribution over the project's finished tasks."""
    row = ui_project(session, user, project)
    audit(session, user.name, "view", project_id=row.id, target="ui measures")
    strips = measure_strips(session, row)
    return page(request, "measures.html", user=user, project=row, strips=strips, task=None)


# -- results --------------------------------------------------------------------------------
@router.get("/p/{project}/tasks/{task_id}")
def result_viewer(
    request: Request, project: str, task_id: int, user: UiUser, session: DbSession,
    context: ServiceDep,
) -> HTMLResponse:  # fmt: skip
    """A task's result: NiiVue (input + label overlay + uncertainty), outputs, measures."""
    row = ui_project(session, user, project)
    task = ui_task(session, row, task_id)
    job = session.get(Job, task.job_id)
    outputs = session.scalars(
        select(Output).where(Output.task_id == task.id).order_by(Output.name, Output.version)
    ).all()
    latest = {o.name: o for o in outputs}  # the newest version of each name
    volumes = sorted(n for n, o in latest.items() if o.kind in _NIFTI)
    regions = _regions(context.config.root / "bundles", job)
    audit(session, user.name, "view", project_id=row.id, target=f"task {task.id} result")
    focus = None
    if "labels.nii.gz" in latest:
        focus = label_focus(context.config.results / latest["labels.nii.gz"].path)
    return page(
        request, "task.html", user=user, project=row, task=task, job=job,
        outputs=list(latest.values()), volumes=volumes, regions=regions, focus=focus,
        strips=measure_strips(session, row, task_id=task.id), **task_rank(task),
    )  # fmt: skip


def _regions(bundles: Path, job: Job | None) -> list[dict[str, Any]]:
    """The label values and names of the job's bundle (for the per-region toggles)."""
    if job is None or job.bundle is None:
        return []
    try:
        folder = bundle_folder(bundles, job.bundle)
        labels = json.loads((folder / "plan.json").read_text(encoding="utf-8")).get("labels", {})
        pairs = sorted((int(value), str(name)) for value, name in labels.items())
    except (JobError, OSError, ValueError, AttributeError):
        return []
    return [{"value": value, "name": name} for value, name in pairs if value != 0]


@router.get("/p/{project}/tasks/{task_id}/volumes/{name}")
def task_volume(
    project: str, task_id: int, name: str, user: UiUser, session: DbSession,
    context: ServiceDep,
) -> Response:  # fmt: skip
    """A NIfTI output of the task (by its Output row's name), or ``input.nii.gz``: the first
    input channel converted from the archived series (cached)."""
    row = ui_project(session, user, project)
    task = ui_task(session, row, task_id)
    if name == "input.nii.gz":
        try:
            path = input_volume(session, context, task)
        except MedaiError as error:
            message = f"the input of task {task_id} cannot be shown: {error}"
            raise UiPageError(message, status=422) from error
    else:
        output = session.scalars(
            select(Output)
            .where(Output.task_id == task.id, Output.name == name, Output.kind.in_(_NIFTI))
            .order_by(Output.version.desc())
        ).first()
        path = None if output is None else context.config.results / output.path
    if path is None or not path.is_file():
        raise UiPageError(f"task {task_id} has no volume {name!r}", status=404)
    audit(session, user.name, "view", project_id=row.id, target=f"task {task_id}/{name}")
    return FileResponse(path, media_type="application/gzip", filename=name)

"""DICOMweb for ``medai serve``: STOW-RS, QIDO-RS and WADO-RS per project (PS3.18).

Every route sits under ``/dicomweb/projects/{project}``, needs a bearer token and the
user's membership of the project, validates every UID it is given, and finds files only
through index rows. Searches and metadata are answered from the index (no file is read);
retrieval streams the stored files as they are.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.responses import StreamingResponse
from sqlalchemy import Text, cast, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from medai.service.archive import valid_uid
from medai.service.auth import audit
from medai.service.db import Instance, Project, Series, Study
from medai.service.deps import CurrentUser, DbSession, ServiceDep, member_of
from medai.service.dicomweb_multipart import (
    BodyTooLargeError,
    MultipartError,
    boundary_of,
    media_parameters,
    multipart_stream,
    read_parts,
)
from medai.service.dicomweb_query import (
    SERIES_MATCHING,
    STUDY_MATCHING,
    DicomJson,
    QueryError,
    instance_records,
    parse_query,
    run_query,
    series_records,
    study_records,
)
from medai.service.dicomweb_stow import store_parts

__all__ = ["DICOM_JSON", "router"]

log = logging.getLogger(__name__)

DICOM_JSON = "application/dicom+json"
router = APIRouter(prefix="/dicomweb/projects/{project}", tags=["dicomweb"])


def _project(project: str, user: CurrentUser, session: DbSession) -> Project:
    return member_of(session, user, project)


ProjectDep = Annotated[Project, Depends(_project)]


def _uid(name: str, value: str) -> str:
    if not valid_uid(value):
        raise HTTPException(
            status_code=400,
            detail=f"{name} {value[:80]!r} is not a valid DICOM UID (digits and dots, at most "
            "64 characters); check the URL",
        )
    return value


def base_url(request: Request, project: Project) -> str:
    """The DICOMweb root of ``project`` as the client reached it (for RetrieveURL)."""
    return f"{str(request.base_url).rstrip('/')}/dicomweb/projects/{project.name}"


def _json(body: Any, *, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    text = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
    return Response(text.encode(), status_code=status_code, media_type=DICOM_JSON, headers=headers)


# --- STOW-RS ---------------------------------------------------------------------------


async def _stow(
    request: Request, context: ServiceDep, user: CurrentUser, session: Session, project: Project,
    study: str | None,
) -> Response:  # fmt: skip
    limit = int(context.config.max_upload_mb * 1024 * 1024)
    try:
        boundary = boundary_of(request.headers.get("content-type", ""))
        _, parameters = media_parameters(request.headers.get("content-type", ""))
        if parameters.get("type", "application/dicom").lower() != "application/dicom":
            raise MultipartError(
                f"multipart/related type {parameters['type']!r} is not supported: send "
                "application/dicom parts"
            )
        parts = await read_parts(request.stream(), boundary, limit=limit)
    except BodyTooLargeError as error:
        raise HTTPException(
            status_code=413,
            detail=f"request body over the {context.config.max_upload_mb:g} MB limit "
            "(max_upload_mb in service.yaml); send fewer instances at once",
        ) from error
    except MultipartError as error:
        status = 415 if "not supported" in str(error) else 400
        raise HTTPException(status_code=status, detail=str(error)) from error
    if not parts:
        raise HTTPException(status_code=400, detail="the body holds no parts: send at least one")
    outcome = await run_in_threadpool(
        store_parts, context.archive, project, parts, study=study, url=base_url(request, project)
    )
    audit(
        session, user.name, "store", project_id=project.id, target=study or "studies",
        stored=outcome.stored, failed=outcome.failed, via="stow-rs",
    )  # fmt: skip
    return _json(outcome.body, status_code=outcome.status)


@router.post("/studies", summary="STOW-RS: store instances")
async def stow(
    request: Request, context: ServiceDep, user: CurrentUser, session: DbSession,
    project: ProjectDep,
) -> Response:  # fmt: skip
    """Store the application/dicom parts of a multipart/related body (PS3.18 §10.5)."""
    return await _stow(request, context, user, session, project, None)


@router.post("/studies/{study}", summary="STOW-RS: store instances of one study")
async def stow_study(
    study: str, request: Request, context: ServiceDep, user: CurrentUser, session: DbSession,
    project: ProjectDep,
) -> Response:  # fmt: skip
    """Store instances of ``study``; a part of another study fails (FailedSOPSequence)."""
    return await _stow(request, context, user, session, project, _uid("study", study))


# --- QIDO-RS ---------------------------------------------------------------------------


def _search(
    request: Request, user: CurrentUser, session: Session, project: Project, target: str,
    records: Callable[..., list[DicomJson]], supported: frozenset[str] | None,
    **scope: str,
) -> Response:  # fmt: skip
    try:
        query = parse_query(request.query_params.multi_items())
        found = records(session, project.id, base_url(request, project), **scope)
        matched, unsupported = run_query(found, query, supported=supported)
    except QueryError as error:
        raise HTTPException(status_code=400, detail=str(error)) from error
    audit(session, user.name, "view", project_id=project.id, target=target, n=len(matched))
    headers = {}
    if unsupported:
        headers["Warning"] = (
            f'299 medai "not supported for matching at this level, ignored: '
            f'{", ".join(unsupported)}"'
        )
    return _json(matched, headers=headers)


def _exists(session: Session, project: Project, study: str, series: str | None = None) -> None:
    query = select(Study.id).where(Study.project_id == project.id, Study.study_uid == study)
    if series is not None:
        query = (
            select(Series.id)
            .join(Study, Study.id == Series.study_id)
            .where(
                Study.project_id == project.id,
                Study.study_uid == study,
                Series.series_uid == series,
            )
        )
    if session.scalar(query.limit(1)) is None:
        what = f"series {series} of study {study}" if series else f"study {study}"
        raise HTTPException(status_code=404, detail=f"no {what} in project {project.name!r}")


@router.get("/studies", summary="QIDO-RS: search studies")
def search_studies(
    request: Request, user: CurrentUser, session: DbSession, project: ProjectDep
) -> Response:
    """Studies matching the query (keywords or tags, ``*``/``?`` wildcards, date ranges)."""
    return _search(request, user, session, project, "studies", study_records, STUDY_MATCHING)


@router.get("/series", summary="QIDO-RS: search series of all studies")
def search_series(
    request: Request, user: CurrentUser, session: DbSession, project: ProjectDep
) -> Response:
    """Series of any study matching the query, with their study's attributes."""
    return _search(request, user, session, project, "series", series_records, SERIES_MATCHING)


@router.get("/studies/{study}/series", summary="QIDO-RS: search series of a study")
def search_study_series(
    study: str, request: Request, user: CurrentUser, session: DbSession, project: ProjectDep
) -> Response:
    """Series of ``study`` matching the query."""
    _exists(session, project, _uid("study", study))
    return _search(
        request, user, session, project, study, series_records, SERIES_MATCHING, study_uid=study
    )


@router.get("/instances", summary="QIDO-RS: search instances of all studies")
def search_instances(
    request: Request, user: CurrentUser, session: DbSession, project: ProjectDep
) -> Response:
    """Instances of any study matching the query (any attribute of their headers)."""
    return _search_instances(request, user, session, project, "instances")


@router.get("/studies/{study}/instances", summary="QIDO-RS: search instances of a study")
def search_study_instances(
    study: str, request: Request, user: CurrentUser, session: DbSession, project: ProjectDep
) -> Response:
    """Instances of ``study`` matching the query."""
    _exists(session, project, _uid("study", study))
    return _search_instances(request, user, session, project, study, study_uid=study)


@router.get(
    "/studies/{study}/series/{series}/instances", summary="QIDO-RS: search instances of a series"
)
def search_series_instances(
    study: str, series: str, request: Request, user: CurrentUser, session: DbSession,
    project: ProjectDep,
) -> Response:  # fmt: skip
    """Instances of ``series`` matching the query."""
    _exists(session, project, _uid("study", study), _uid("series", series))
    return _search_instances(
        request, user, session, project, f"{study}/{series}", study_uid=study, series_uid=series
    )


def _search_instances(
    request: Request, user: CurrentUser, session: Session, project: Project, target: str,
    **scope: str,
) -> Response:  # fmt: skip
    try:
        query = parse_query(request.query_params.multi_items())
    except QueryError as error:
        raise HTTPException(status_code=400, detail=str(error)) from error

    def records(session: Session, project_id: int, url: str, **kw: str) -> list[DicomJson]:
        return instance_records(session, project_id, url, query=query, **kw)

    return _search(request, user, session, project, target, records, None, **scope)


# --- WADO-RS ---------------------------------------------------------------------------


def _scope(project: Project, study: str, series: str | None, instance: str | None) -> list[Any]:
    conditions = [
        Instance.project_id == project.id,
        Study.study_uid == _uid("study", study),
    ]
    if series is not None:
        conditions.append(Series.series_uid == _uid("series", series))
    if instance is not None:
        conditions.append(Instance.sop_uid == _uid("instance", instance))
    return conditions


def _not_found(project: Project, study: str, series: str | None, instance: str | None) -> None:
    what = " / ".join(
        f"{name} {uid}"
        for name, uid in (("study", study), ("series", series), ("instance", instance))
        if uid
    )
    raise HTTPException(status_code=404, detail=f"no {what} in project {project.name!r}")


def _metadata(
    user: CurrentUser, session: Session, project: Project, study: str,
    series: str | None = None, instance: str | None = None,
) -> Response:  # fmt: skip
    """The stored headers as one JSON array: one query, the JSON text passed through."""
    query = (
        select(cast(Instance.header, Text))
        .join(Series, Series.id == Instance.series_id)
        .join(Study, Study.id == Series.study_id)
        .where(*_scope(project, study, series, instance))
        .order_by(Series.id, Instance.instance_number, Instance.id)
    )
    headers: Sequence[str] = session.scalars(query).all()
    if not headers:
        _not_found(project, study, series, instance)
    target = "/".join(uid for uid in (study, series, instance) if uid)
    audit(session, user.name, "view", project_id=project.id, target=target, n=len(headers))
    return Response(b"[" + ",".join(headers).encode() + b"]", media_type=DICOM_JSON)


def _retrieve(
    request: Request, user: CurrentUser, session: Session, context: Any, project: Project,
    study: str, series: str | None = None, instance: str | None = None,
) -> Response:  # fmt: skip
    accept = request.headers.get("accept", "*/*").lower()
    if not any(m in accept for m in ("*/*", "multipart/*", "multipart/related")) or (
        "type=" in accept and "application/dicom" not in accept and "*/*" not in accept
    ):
        raise HTTPException(
            status_code=406,
            detail=f"cannot answer Accept: {accept!r}; ask for "
            "'multipart/related; type=\"application/dicom\"'",
        )
    query = (
        select(Instance.path, Instance.transfer_syntax)
        .join(Series, Series.id == Instance.series_id)
        .join(Study, Study.id == Series.study_id)
        .where(*_scope(project, study, series, instance))
        .order_by(Series.id, Instance.instance_number, Instance.id)
    )
    rows = session.execute(query).all()
    if not rows:
        _not_found(project, study, series, instance)
    files = [(context.archive.root / path, syntax) for path, syntax in rows]
    missing = [str(path.name) for path, _ in files if not path.is_file()]
    if missing:
        log.error("indexed files missing from the archive: %s", missing[:5])
        raise HTTPException(
            status_code=500,
            detail=f"{len(missing)} stored file(s) are missing from the archive; ask the "
            "administrator to check the archive folder",
        )
    target = "/".join(uid for uid in (study, series, instance) if uid)
    audit(session, user.name, "retrieve", project_id=project.id, target=target, n=len(files))
    boundary, chunks = multipart_stream(files)
    media = f'multipart/related; type="application/dicom"; boundary={boundary}'
    return StreamingResponse(chunks, media_type=media)


@router.get("/studies/{study}", summary="WADO-RS: retrieve a study")
def retrieve_study(
    study: str, request: Request, context: ServiceDep, user: CurrentUser, session: DbSession,
    project: ProjectDep,
) -> Response:  # fmt: skip
    """Every instance of ``study`` as multipart/related application/dicom."""
    return _retrieve(request, user, session, context, project, study)


@router.get("/studies/{study}/series/{series}", summary="WADO-RS: retrieve a series")
def retrieve_series(
    study: str, series: str, request: Request, context: ServiceDep, user: CurrentUser,
    session: DbSession, project: ProjectDep,
) -> Response:  # fmt: skip
    """Every instance of ``series``."""
    return _retrieve(request, user, session, context, project, study, series)


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}", summary="WADO-RS: retrieve an instance"
)
def retrieve_instance(
    study: str, series: str, instance: str, request: Request, context: ServiceDep,
    user: CurrentUser, session: DbSession, project: ProjectDep,
) -> Response:  # fmt: skip
    """One stored instance, as it was stored."""
    return _retrieve(request, user, session, context, project, study, series, instance)


@router.get("/studies/{study}/metadata", summary="WADO-RS: metadata of a study")
def study_metadata(
    study: str, user: CurrentUser, session: DbSession, project: ProjectDep
) -> Response:
    """The headers (no bulk data) of every instance of ``study``, from the index."""
    return _metadata(user, session, project, study)


@router.get("/studies/{study}/series/{series}/metadata", summary="WADO-RS: metadata of a series")
def series_metadata(
    study: str, series: str, user: CurrentUser, session: DbSession, project: ProjectDep
) -> Response:
    """The headers of every instance of ``series``."""
    return _metadata(user, session, project, study, series)


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/metadata",
    summary="WADO-RS: metadata of an instance",
)
def instance_metadata(
    study: str, series: str, instance: str, user: CurrentUser, session: DbSession,
    project: ProjectDep,
) -> Response:  # fmt: skip
    """The header of one instance."""
    return _metadata(user, session, project, study, series, instance)

"""The FastAPI application of ``medai serve``: every route authenticated, OpenAPI at /docs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from medai import __version__
from medai.service.context import ServiceContext
from medai.service.dicomweb import router as dicomweb_router
from medai.service.guard import install_guard
from medai.service.routes_archive import router as archive_router
from medai.service.routes_jobs import router as jobs_router
from medai.service.routes_review import router as review_router
from medai.service.ui import install_ui

__all__ = ["create_app"]


def create_app(context: ServiceContext) -> FastAPI:
    """The API over ``context``: archive browsing, DICOMweb, selections, jobs, results."""
    app = FastAPI(
        title="medai serve",
        version=__version__,
        description="DICOM in, selection, jobs under per-user allocations, results out.",
    )
    app.state.context = context
    limit = int(context.config.max_upload_mb * 1024 * 1024)

    @app.middleware("http")
    async def _upload_limit(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            return JSONResponse(
                status_code=413,
                content={"detail": f"request body over the {context.config.max_upload_mb:g} MB "
                         "limit (max_upload_mb in service.yaml); send fewer instances at once"},
            )  # fmt: skip
        return await call_next(request)

    install_guard(app, context)
    app.include_router(archive_router)
    app.include_router(dicomweb_router)
    app.include_router(jobs_router)
    app.include_router(review_router)
    install_ui(app)
    return app

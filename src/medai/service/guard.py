"""Refusals that must come before anything else a request could be answered with.

FastAPI reads and validates a request (path parameters, the JSON body) before or beside
its dependencies, and a route checks project membership in its body; so a malformed
request from a stranger would get a 422 describing the route's expectations rather than
the 401/403 it deserves. :func:`install_guard` makes authentication and membership win:

- a request whose path or query holds a NUL or another control character is refused with
  400 before any route sees it (such a value never names anything the service stores, and
  some databases reject it with an error);
- a validation error (422) is answered with 401 when the request carries no valid token
  (bearer header or the web UI's login cookie) and with 403 when it names a ``{project}``
  the user may not use; only an authorised caller learns what was wrong with the request.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from urllib.parse import unquote_to_bytes

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.exception_handlers import (
    http_exception_handler,
    request_validation_exception_handler,
)
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from medai.service.auth import AccessDeniedError, authenticate, project_for
from medai.service.context import ServiceContext
from medai.service.deps import SESSION_COOKIE

__all__ = ["access_refusal", "install_guard"]

_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")
_UNAUTHENTICATED = HTTPException(
    status_code=401,
    detail="missing or unknown token: send 'Authorization: Bearer <token>' "
    "(create one with `medai serve user add NAME`)",
    headers={"WWW-Authenticate": "Bearer"},
)


def _token(request: Request) -> str | None:
    """The bearer token, else the web UI's login cookie (as :func:`deps.current_user`)."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.cookies.get(SESSION_COOKIE)


def access_refusal(context: ServiceContext, request: Request) -> HTTPException | None:
    """The 401 or 403 ``request`` deserves before anything else, or None if it may proceed.

    Args:
        context: The service (its index holds users, projects and memberships).
        request: A request that matched a route (its ``project`` path parameter, if any,
            is checked against the user's memberships).
    """
    with context.factory() as session:
        user = authenticate(session, _token(request))
        if user is None:
            return _UNAUTHENTICATED
        project = request.path_params.get("project")
        if project is None:
            return None
        try:
            project_for(session, user, str(project))
        except AccessDeniedError as error:
            return HTTPException(status_code=403, detail=str(error))
    return None


def _has_control(request: Request) -> bool:
    raw = request.scope.get("raw_path") or request.scope.get("path", "").encode()
    query = request.scope.get("query_string", b"")
    return any(_CONTROL.search(unquote_to_bytes(part)) for part in (raw, query))


def install_guard(app: FastAPI, context: ServiceContext) -> None:
    """Refuse control characters in URLs and let 401/403 win over validation errors."""

    @app.middleware("http")
    async def _no_control_characters(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        if _has_control(request):
            return JSONResponse(
                status_code=400,
                content={"detail": "the URL holds a NUL or control character; "
                         "names, ids and UIDs never do: check the URL"},
            )  # fmt: skip
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def _auth_before_validation(request: Request, error: Exception) -> Response:
        refusal = await run_in_threadpool(access_refusal, context, request)
        if refusal is not None:
            return await http_exception_handler(request, refusal)
        if not isinstance(error, RequestValidationError):  # registered for that type only
            raise error
        return await request_validation_exception_handler(request, error)

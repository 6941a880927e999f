"""FastAPI dependencies every route uses: the context, a session, the authenticated user,
and the project the user asks for (refused unless they are a member)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from medai.service.auth import AccessDeniedError, authenticate, project_for
from medai.service.context import ServiceContext
from medai.service.db import Project, User, session_scope

__all__ = [
    "SESSION_COOKIE",
    "CurrentUser",
    "DbSession",
    "ServiceDep",
    "current_user",
    "get_session",
    "member_of",
]

#: The cookie the web UI's login sets (HttpOnly, SameSite=Strict); it holds the token.
SESSION_COOKIE = "medai_token"

_bearer = HTTPBearer(auto_error=False, description="The token `medai serve user add` printed.")


def get_context(request: Request) -> ServiceContext:
    context: ServiceContext = request.app.state.context
    return context


ServiceDep = Annotated[ServiceContext, Depends(get_context)]


def get_session(context: ServiceDep) -> Iterator[Session]:
    """A session per request, committed when the route returns without an exception."""
    with session_scope(context.factory) as session:
        yield session


DbSession = Annotated[Session, Depends(get_session, scope="function")]


def current_user(
    request: Request,
    session: DbSession,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> User:
    """The user whose bearer token (or web UI login cookie) came with the request; 401
    otherwise."""
    token = credentials.credentials if credentials else request.cookies.get(SESSION_COOKIE)
    user = authenticate(session, token)
    if user is None:
        raise HTTPException(
            status_code=401,
            detail="missing or unknown token: send 'Authorization: Bearer <token>' "
            "(create one with `medai serve user add NAME`)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return user


CurrentUser = Annotated[User, Depends(current_user)]


def member_of(session: Session, user: User, project: str, *, role: str | None = None) -> Project:
    """The project named in the path, if ``user`` may use it; 403 otherwise."""
    try:
        return project_for(session, user, project, role=role)
    except AccessDeniedError as error:
        raise HTTPException(status_code=403, detail=str(error)) from error

"""API routes for who is asking and what they may see: the user, projects, the archive tree."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter

from medai.service.archive import archive_tree
from medai.service.auth import audit, projects_of
from medai.service.deps import CurrentUser, DbSession, member_of

__all__ = ["router"]

router = APIRouter(prefix="/api", tags=["archive"])


@router.get("/me")
def me(user: CurrentUser, session: DbSession) -> dict[str, Any]:
    """The authenticated user, their allocation and projects."""
    return {
        "name": user.name,
        "admin": user.admin,
        "allocation": {
            "cpu_slots": user.cpu_slots,
            "gpu_slots": user.gpu_slots,
            "memory_gb": user.memory_gb,
        },
        "projects": [p.name for p in projects_of(session, user)],
    }


@router.get("/projects")
def projects(user: CurrentUser, session: DbSession) -> list[dict[str, Any]]:
    """The projects the user is a member of."""
    return [
        {"name": p.name, "ae_title": p.ae_title, "deidentify": p.deidentify}
        for p in projects_of(session, user)
    ]


@router.get("/projects/{project}/tree")
def tree(project: str, user: CurrentUser, session: DbSession) -> list[dict[str, Any]]:
    """The project's archive: participants → studies → series (with instance counts)."""
    row = member_of(session, user, project)
    audit(session, user.name, "view", project_id=row.id, target="tree")
    return [asdict(p) for p in archive_tree(session, row.id)]

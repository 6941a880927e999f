"""Users, tokens, projects, membership and the audit log.

A token is shown once, when it is made; the index keeps only its SHA-256 (tokens are
32 random bytes, so a fast hash is enough: there is nothing to brute-force). Every
query, file and DICOM association goes through :func:`project_for` /
:func:`project_for_ae`, which refuse what the caller is not allowed to see.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from medai.errors import ConfigError, MedaiError
from medai.fsutil import write_secret_text
from medai.io.deid import generate_key
from medai.service.db import AuditEntry, Caller, Membership, Project, User

__all__ = [
    "ROLES",
    "AccessDeniedError",
    "add_member",
    "add_project",
    "add_user",
    "audit",
    "authenticate",
    "check_ae_title",
    "hash_token",
    "project_for",
    "project_for_ae",
    "projects_of",
]

ROLES = ("member", "reviewer", "owner")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_AE = re.compile(r"^[A-Za-z0-9_.-][A-Za-z0-9_. -]{0,15}$")


class AccessDeniedError(MedaiError, PermissionError):
    """The user may not see or change this project (or it does not exist: the same answer)."""


def hash_token(token: str) -> str:
    """The stored form of a token: hex SHA-256."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _check_name(kind: str, name: str) -> str:
    if not _NAME.match(name):
        raise ConfigError(
            f"{kind} name {name!r} is not allowed: use letters, digits, '_', '.', '-' "
            "(1–64 characters, starting with a letter or digit)"
        )
    return name


def check_ae_title(ae_title: str) -> str:
    """An AE title: 1–16 characters, no backslash or control characters."""
    if not _AE.match(ae_title) or ae_title != ae_title.strip():
        raise ConfigError(
            f"AE title {ae_title!r} is not valid: 1–16 letters, digits, '_', '.', '-' or spaces, "
            "no leading or trailing space"
        )
    return ae_title


def add_user(
    session: Session, name: str, *, cpu_slots: int = 1, gpu_slots: int = 0,
    memory_gb: float = 8.0, admin: bool = False,
) -> tuple[User, str]:  # fmt: skip
    """Create a user; returns the user and their token (shown once, stored hashed).

    Raises:
        ConfigError: A bad name or allocation, or a user of that name already exists.
    """
    _check_name("user", name)
    if cpu_slots < 1 or gpu_slots < 0 or memory_gb <= 0:
        raise ConfigError(
            f"allocation cpu_slots={cpu_slots}, gpu_slots={gpu_slots}, memory_gb={memory_gb} "
            "is not valid: at least 1 CPU slot, no negative GPUs, positive memory"
        )
    if session.scalar(select(User).where(User.name == name)) is not None:
        raise ConfigError(f"user {name!r} exists already")
    token = "medai_" + secrets.token_urlsafe(32)
    user = User(
        name=name, token_hash=hash_token(token), admin=admin, cpu_slots=cpu_slots,
        gpu_slots=gpu_slots, memory_gb=memory_gb,
    )  # fmt: skip
    session.add(user)
    session.flush()
    return user, token


def authenticate(session: Session, token: str | None) -> User | None:
    """The user holding ``token``, or None."""
    if not token or len(token) > 200:
        return None
    return session.scalar(select(User).where(User.token_hash == hash_token(token)))


def add_project(
    session: Session, name: str, *, ae_title: str, callers: list[str] = [],  # noqa: B006
    deidentify: bool = False, hold_unreviewed: bool = True, keys: Any = None,
) -> Project:  # fmt: skip
    """Create a project with its AE title and the calling AE titles it accepts.

    With ``deidentify`` a fresh key is written to ``keys/<project id>.key`` (mode 0600).

    Raises:
        ConfigError: A bad name or AE title, one in use, or ``deidentify`` without ``keys``.
    """
    _check_name("project", name)
    check_ae_title(ae_title)
    for caller in callers:
        check_ae_title(caller)
    if session.scalar(select(Project).where(Project.name == name)) is not None:
        raise ConfigError(f"project {name!r} exists already")
    if session.scalar(select(Project).where(Project.ae_title == ae_title)) is not None:
        raise ConfigError(f"AE title {ae_title!r} is used by another project; pick another")
    if deidentify and keys is None:
        raise ConfigError("a de-identifying project needs the service's keys folder")
    project = Project(
        name=name, ae_title=ae_title, deidentify=deidentify, hold_unreviewed=hold_unreviewed
    )
    session.add(project)
    session.flush()
    for caller in sorted(set(callers)):
        session.add(Caller(project_id=project.id, ae_title=caller))
    if deidentify:
        write_secret_text(keys / f"{project.id}.key", generate_key())
    return project


def add_member(session: Session, user: User, project: Project, role: str = "member") -> None:
    """Give ``user`` a role in ``project`` (replacing an earlier one)."""
    if role not in ROLES:
        raise ConfigError(f"role {role!r} is not one of {', '.join(ROLES)}")
    row = session.scalar(
        select(Membership).where(Membership.user_id == user.id, Membership.project_id == project.id)
    )
    if row is None:
        session.add(Membership(user_id=user.id, project_id=project.id, role=role))
    else:
        row.role = role


def projects_of(session: Session, user: User) -> list[Project]:
    """The projects ``user`` may see (all for an admin), by name."""
    query = select(Project).order_by(Project.name)
    if not user.admin:
        query = query.join(Membership, Membership.project_id == Project.id).where(
            Membership.user_id == user.id
        )
    return list(session.scalars(query))


def project_for(session: Session, user: User, name: str, *, role: str | None = None) -> Project:
    """The project ``name`` if ``user`` is a member (with ``role`` or higher, if given).

    Raises:
        AccessDeniedError: Not a member, too low a role, or no such project (one answer
            for all three, so a caller learns nothing about projects they cannot see).
    """
    project = session.scalar(select(Project).where(Project.name == name))
    if project is not None and user.admin:
        return project
    if project is not None:
        membership = session.scalar(
            select(Membership).where(
                Membership.user_id == user.id, Membership.project_id == project.id
            )
        )
        if membership is not None and (
            role is None or ROLES.index(membership.role) >= ROLES.index(role)
        ):
            return project
    raise AccessDeniedError(f"no access to project {name!r}")


def project_for_ae(session: Session, called: str, calling: str) -> Project | None:
    """The project whose AE title is ``called`` if it accepts ``calling``; else None."""
    project = session.scalar(select(Project).where(Project.ae_title == called.strip()))
    if project is None:
        return None
    allowed = session.scalar(
        select(Caller).where(Caller.project_id == project.id, Caller.ae_title == calling.strip())
    )
    return project if allowed is not None else None


def audit(
    session: Session, actor: str, action: str, *, project_id: int | None = None,
    target: str = "", **detail: Any,
) -> None:  # fmt: skip
    """Append one audit entry (committed with the caller's transaction)."""
    session.add(
        AuditEntry(
            actor=actor, action=action, project_id=project_id, target=target[:400],
            detail=detail,
        )
    )  # fmt: skip

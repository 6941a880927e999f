"""``medai serve``: run the service, and set up its users, projects and bundles.

``medai serve ROOT`` runs the service on the root folder (``medai serve run ROOT`` is the
same); ``medai serve user add``, ``project add`` and ``bundle add`` work on the root's
index and folders while the service runs or not.
"""

from __future__ import annotations

import logging
import re
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperGroup

from medai.cli.console import console, err_console, user_errors
from medai.errors import ConfigError
from medai.fsutil import fsync_dir, fsync_tree
from medai.service.config import ServiceConfig, load_config

_HELP = ("--help", "-h")
_BUNDLE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class _RunByDefault(TyperGroup):
    """``medai serve ROOT …`` means ``medai serve run ROOT …``."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:  # typer's vendored Context
        if args and args[0] not in self.commands and args[0] not in _HELP:
            args = ["run", *args]
        return super().parse_args(ctx, args)


serve_app = typer.Typer(
    cls=_RunByDefault,
    help="The hospital service: `medai serve ROOT` runs it; user/project/bundle set it up.",
    no_args_is_help=True,
)
user_app = typer.Typer(help="Users: tokens and compute allocations.", no_args_is_help=True)
project_app = typer.Typer(help="Projects: AE titles and policies.", no_args_is_help=True)
bundle_app = typer.Typer(help="Model bundles the service may run.", no_args_is_help=True)
serve_app.add_typer(user_app, name="user")
serve_app.add_typer(project_app, name="project")
serve_app.add_typer(bundle_app, name="bundle")

_ROOT = typer.Argument(..., help="The service's root folder (created if missing).")
_DB = typer.Option(None, "--database-url", help="Index URL (default: ROOT/index.sqlite).")


def _config(root: Path, **overrides: Any) -> ServiceConfig:
    return load_config(root, **overrides)


@serve_app.command("run")
def run(
    root: Path = _ROOT,
    host: str | None = typer.Option(None, "--host", help="Interface (default 127.0.0.1)."),
    port: int | None = typer.Option(None, "--port", help="API port (0: any free one)."),
    dicom_port: int | None = typer.Option(
        None, "--dicom-port", help="DICOM listener port (0: any free one)."
    ),
    ae_title: str | None = typer.Option(None, "--ae-title", help="The service's own AE title."),
    quiet_seconds: float | None = typer.Option(
        None, "--quiet-seconds", help="A study is complete after this long without instances."
    ),
    workers: int | None = typer.Option(None, "--workers", help="Local worker processes."),
    executor: str | None = typer.Option(
        None, "--executor", help="Where tasks run: local (worker processes) or ray."
    ),
    ray_address: str | None = typer.Option(
        None, "--ray-address", help="A Ray cluster to join (default: a private local one)."
    ),
    database_url: str | None = _DB,
) -> None:
    """Run the service until Ctrl-C / SIGTERM; ROOT/server.json says where it listens."""
    from medai.service.server import serve

    with user_errors():
        config = _config(
            root, host=host, port=port, dicom_port=dicom_port, ae_title=ae_title,
            quiet_seconds=quiet_seconds, workers=workers, executor=executor,
            ray_address=ray_address, database_url=database_url,
        )  # fmt: skip
        logging.getLogger("medai.service").setLevel(logging.INFO)
        serve(config)


@user_app.command("add")
def user_add(
    root: Path = _ROOT,
    name: str = typer.Argument(..., help="User name (letters, digits, _ . -)."),
    cpu: int = typer.Option(1, "--cpu", help="Concurrent CPU task slots."),
    gpu: int = typer.Option(0, "--gpu", help="Concurrent GPU task slots."),
    memory_gb: float = typer.Option(8.0, "--memory-gb", help="Memory for concurrent tasks."),
    admin: bool = typer.Option(False, "--admin", help="Sees and manages every project."),
    projects: list[str] = typer.Option([], "--project", help="Member of this project (repeat)."),
    role: str = typer.Option("member", "--role", help="Role in those projects."),
    database_url: str | None = _DB,
) -> None:
    """Create a user and print their token (shown once: only its hash is stored)."""
    from medai.service.auth import add_member, add_user

    with user_errors(), _index(root, database_url) as (session, _):
        user, token = add_user(
            session, name, cpu_slots=cpu, gpu_slots=gpu, memory_gb=memory_gb, admin=admin
        )
        for project_name in projects:
            add_member(session, user, _project(session, project_name), role)
    console.print(f"user [bold]{name}[/] created; token:")
    console.print(token, highlight=False, soft_wrap=True)
    err_console.print(
        "[yellow]keep this token safe: it is shown only this once (only its hash is stored)[/]"
    )


@contextmanager
def _index(root: Path, database_url: str | None) -> Iterator[tuple[Any, ServiceConfig]]:
    """A session on ROOT's index (schema brought up to date), committed if the block succeeds."""
    from medai.service.context import open_context
    from medai.service.db import session_scope

    context = open_context(_config(root, database_url=database_url))
    try:
        with session_scope(context.factory) as session:
            yield session, context.config
    finally:
        context.close()


def _project(session: Any, name: str) -> Any:
    from sqlalchemy import select

    from medai.service.db import Project

    project = session.scalar(select(Project).where(Project.name == name))
    if project is None:
        raise ConfigError(f"no project {name!r}; create it first with `medai serve project add`")
    return project


@project_app.command("add")
def project_add(
    root: Path = _ROOT,
    name: str = typer.Argument(..., help="Project name (letters, digits, _ . -)."),
    ae: str = typer.Option(..., "--ae", help="The project's AE title (senders call it)."),
    callers: list[str] = typer.Option([], "--caller", help="A calling AE title allowed (repeat)."),
    deidentify: bool = typer.Option(
        False, "--deidentify", help="De-identify instances on arrival (a new project key)."
    ),
    hold_unreviewed: bool = typer.Option(
        True, "--hold-unreviewed/--no-hold-unreviewed", help="Hold results until reviewed."
    ),
    database_url: str | None = _DB,
) -> None:
    """Create a project with its AE title and the callers it accepts."""
    from medai.service.auth import add_project

    with user_errors(), _index(root, database_url) as (session, config):
        add_project(
            session, name, ae_title=ae, callers=list(callers), deidentify=deidentify,
            hold_unreviewed=hold_unreviewed, keys=config.keys,
        )  # fmt: skip
    accepted = ", ".join(callers) or "nobody yet (add --caller)"
    console.print(f"project [bold]{name}[/] created: AE title {ae}, accepts {accepted}")


@bundle_app.command("add")
def bundle_add(
    root: Path = _ROOT,
    bundle: Path = typer.Argument(..., help="A bundle folder or .zip (`medai export`)."),
    name: str | None = typer.Option(None, "--name", help="Registered name (default: its own)."),
) -> None:
    """Verify a bundle and copy it to ROOT/bundles/NAME (jobs name it by NAME)."""
    with user_errors():
        target = register_bundle(root, bundle, name=name)
    console.print(f"bundle registered as [bold]{target.name}[/]")


def register_bundle(root: Path, source: Path, *, name: str | None = None) -> Path:
    """Verify ``source``, then copy it atomically to ``ROOT/bundles/<name>``.

    Raises:
        BundleError: ``source`` is not a valid bundle (nothing is copied).
        ConfigError: A bad name, or a bundle of that name is registered already.
    """
    from medai.runtime import load_bundle
    from medai.runtime.bundle import read_bundle_files

    load_bundle(source)
    name = name or (source.stem if source.is_file() else source.name)
    if not _BUNDLE_NAME.match(name):
        raise ConfigError(
            f"bundle name {name!r} is not allowed: use letters, digits, '_', '.', '-' "
            "(1–64 characters); pass --name"
        )
    folder = Path(root).expanduser().resolve() / "bundles"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    if target.exists():
        raise ConfigError(f"a bundle {name!r} is registered already; pass another --name")
    staging = folder / f".{name}.{secrets.token_hex(4)}.staging"
    try:
        staging.mkdir()
        for file_name, data in read_bundle_files(source).items():
            (staging / file_name).write_bytes(data)
        load_bundle(staging)  # the copy verifies too
        fsync_tree(staging)
        staging.rename(target)  # fails if another registration won the race
        fsync_dir(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target

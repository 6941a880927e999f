"""Shared pieces of the service tests: a service root with users and a project, and a
small four-series MR study (the world phantom of :mod:`_seg_cohort`) written as DICOM.

- :func:`service_context`: an opened :class:`ServiceContext` on a fresh root (SQLite, or
  the PostgreSQL URL in ``MEDAI_TEST_PG`` when set, on a fresh schema).
- :func:`populate`: project ``glioma`` (AE ``GLIOMA``, callers ``SCANNER`` and
  ``STORESCU``), project ``other`` (AE ``OTHER``), users ``alice`` (1 CPU slot, member of
  glioma), ``bob`` (2 slots, member of glioma), ``eve`` (member of other only), ``root``
  (admin); returns their tokens.
- :func:`phantom_study`: one study, one series per contrast, sharing a frame of reference.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import uvicorn
from sqlalchemy import create_engine, make_url, text

from _seg_cohort import grid_affine, world_phantom
from medai.io import write_dicom_series
from medai.service.app import create_app
from medai.service.auth import add_member, add_project, add_user
from medai.service.config import load_config
from medai.service.context import ServiceContext, open_context

CHANNELS = ["FLAIR", "T1w", "t1gd", "T2w"]
SHAPE = (24, 26, 22)
STUDY_UID = "1.2.826.0.1.3680043.8.498.77"
FOR_UID = "1.2.826.0.1.3680043.8.498.78"


def fresh_database_url() -> str | None:
    """A new, empty PostgreSQL database on the server ``MEDAI_TEST_PG`` names, or None."""
    admin_url = os.environ.get("MEDAI_TEST_PG")
    if not admin_url:
        return None
    name = f"medai_test_{uuid.uuid4().hex[:12]}"
    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def service_context(root: Path, **overrides: object) -> ServiceContext:
    """Open a service on ``root`` (created), with settings ``overrides``."""
    overrides.setdefault("database_url", fresh_database_url())
    return open_context(load_config(root, **overrides))


@contextmanager
def api_server(context: ServiceContext) -> Iterator[httpx.Client]:
    """The service's API served by uvicorn on a free loopback port, in a thread; yields a
    client on its base URL (real HTTP, no test transport)."""
    config = uvicorn.Config(
        create_app(context), host="127.0.0.1", port=0, log_level="warning", lifespan="off"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def populate(context: ServiceContext) -> dict[str, str]:
    """Create the test projects and users; returns ``{user name: token}``."""
    tokens: dict[str, str] = {}
    with context.factory() as session:
        glioma = add_project(
            session, "glioma", ae_title="GLIOMA", callers=["SCANNER", "STORESCU"],
            keys=context.config.keys,
        )  # fmt: skip
        other = add_project(session, "other", ae_title="OTHER", callers=["SCANNER"])
        for name, cpu, project in (("alice", 1, glioma), ("bob", 2, glioma), ("eve", 1, other)):
            user, tokens[name] = add_user(session, name, cpu_slots=cpu)
            add_member(session, user, project)
        _, tokens["root"] = add_user(session, "root", admin=True)
        session.commit()
    return tokens


def phantom_study(
    folder: Path, *, patient_id: str = "P001", study_uid: str = STUDY_UID,
    shape: tuple[int, int, int] = SHAPE,
) -> dict[str, list[Path]]:  # fmt: skip
    """Write the phantom as one DICOM MR series per contrast under ``folder/<contrast>``."""
    image, _ = world_phantom(shape, grid_affine(shape, (2.0, 2.0, 2.0), np.eye(3)))
    files = {}
    for c, name in enumerate(CHANNELS):
        files[name] = write_dicom_series(
            image.channel(c), folder / name, patient_id=patient_id, patient_name="Test^Phantom",
            study_uid=study_uid, series_number=c + 1, series_description=name,
            extra={"FrameOfReferenceUID": FOR_UID},
        )  # fmt: skip
    return files

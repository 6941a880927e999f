"""Shared pieces of the service tests: a service root with users and a project, and a
small four-series MR study (the world phantom of :mod:`_seg_cohort`) written as DICOM.

- :func:`service_context`: an opened :class:`ServiceContext` on a fresh root (SQLite, or
  the PostgreSQL URL in ``MEDAI_TEST_PG`` when set, on a fresh schema).
- :func:`populate`: project ``glioma`` (AE ``GLIOMA``, callers ``SCANNER`` and
  ``STORESCU``), project ``other`` (AE ``OTHER``), users ``alice`` (1 CPU slot, member of
  glioma), ``bob`` (2 slots, member of glioma), ``eve`` (member of other only), ``root``
  (admin); returns their tokens.
- :func:`phantom_study`: one study, one series per contrast, sharing a frame of reference.
- :func:`export_seg_bundle`, :func:`export_cls_bundle`: stand-in segmentation and
  classification bundles (fixed rules, no training) with parity checked on that study.
- :class:`StorageSCP`: a pynetdicom storage SCP (a destination archive node) in a thread.
- :class:`Server`: `medai serve ROOT --port 0 --dicom-port 0` in a child process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest
import uvicorn
from pynetdicom import AE, AllStoragePresentationContexts, evt
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
    shape: tuple[int, int, int] = SHAPE, study_description: str | None = None,
) -> dict[str, list[Path]]:  # fmt: skip
    """Write the phantom as one DICOM MR series per contrast under ``folder/<contrast>``."""
    image, _ = world_phantom(shape, grid_affine(shape, (2.0, 2.0, 2.0), np.eye(3)))
    extra = {"FrameOfReferenceUID": FOR_UID}
    if study_description is not None:
        extra["StudyDescription"] = study_description
    files = {}
    for c, name in enumerate(CHANNELS):
        files[name] = write_dicom_series(
            image.channel(c), folder / name, patient_id=patient_id, patient_name="Test^Phantom",
            study_uid=study_uid, series_number=c + 1, series_description=name,
            extra=extra,
        )  # fmt: skip
    return files


def export_seg_bundle(out: Path, study_folder: Path) -> Path:
    """The stand-in segmentation bundle (one 32³ window; TTA flips give an uncertainty)
    exported to ``out``, with parity on the phantom study under ``study_folder``."""
    import torch

    from _standin import NeighbourRule, standin_plan
    from medai.export import export_bundle
    from medai.inference import LoadedRun
    from medai.inference.study import read_study

    plan = standin_plan(["network.depth=3", "inference.tta_flips=true"])
    run = LoadedRun(plan, NeighbourRule(list(plan.regions)).eval(), torch.device("cpu"))
    export_bundle(run, out, parity_cases=[read_study(study_folder, CHANNELS)], reference_cases=[])
    return out


def export_cls_bundle(out: Path, study_folder: Path) -> Path:
    """A binary classification bundle on FLAIR whose logit is 4 × (channel mean − 0.1),
    exported to ``out`` with parity on the phantom study under ``study_folder``."""
    import torch

    from medai.export import export_image_bundle
    from medai.inference import LoadedRun
    from medai.inference.study import read_study
    from medai.preprocess.plan import Plan, TaskKind
    from medai.runtime import fixed_input_of

    class MeanRule(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 4.0 * (x[:, :1].mean(dim=(2, 3, 4)) - 0.1)

    plan = Plan.model_validate({
        "task": TaskKind.BINARY, "channels": ["FLAIR"], "classes": ["low", "high"],
        "network": {"architecture": "resnet18"}, "input": {"size": [16, 16, 16]},
        "target": {"threshold": 0.5},
    })  # fmt: skip
    arrays = fixed_input_of(read_study(study_folder, ["FLAIR"]), plan)[None]
    run = LoadedRun(plan, MeanRule().eval(), torch.device("cpu"))
    export_image_bundle(run, out, parity_inputs=arrays, reference_inputs=arrays,
                        reference_ids=["a"])  # fmt: skip
    return out


class StorageSCP:
    """A pynetdicom storage SCP on a free loopback port that keeps what it receives."""

    def __init__(self, ae_title: str) -> None:
        self.received: list[pydicom.Dataset] = []
        self.callers: list[str] = []
        self.lock = threading.Lock()
        ae = AE(ae_title=ae_title)
        ae.supported_contexts = AllStoragePresentationContexts
        handlers: list[Any] = [(evt.EVT_C_STORE, self._store)]
        server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
        if server is None:
            raise RuntimeError("the storage SCP did not start")
        self.server = server
        self.port = int(server.server_address[1])

    def _store(self, event: Any) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        with self.lock:
            self.received.append(ds)
            self.callers.append(str(event.assoc.requestor.ae_title))
        return 0x0000


START_TIMEOUT = 90.0  # a loaded CI machine starts the process, the index and the pool slowly


class Server:
    """``medai serve ROOT --port 0 --dicom-port 0 …`` started in a child process."""

    def __init__(self, root: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.root = root
        self.log = root.with_name(root.name + ".log")
        command = [sys.executable, "-m", "medai.cli.main", "serve", str(root), "--port", "0",
                   "--dicom-port", "0", *args]  # fmt: skip
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=log, env={**os.environ, **(env or {})}
            )
        self.info: dict[str, Any] = {}
        self.http = httpx.Client(timeout=30)

    def wait(self) -> Server:
        """Wait (bounded) until the server announced its ports in ``ROOT/server.json``."""
        self.info = self._announced()
        self.http.base_url = httpx.URL(f"http://127.0.0.1:{self.info['http_port']}")
        return self

    def _announced(self) -> dict[str, Any]:
        deadline = time.monotonic() + START_TIMEOUT
        path = self.root / "server.json"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"medai serve exited with {self.process.returncode}: {self.tail()}")
            if path.is_file():
                info: dict[str, Any] = json.loads(path.read_text())
                if info["pid"] == self.process.pid:
                    return info
            time.sleep(0.1)
        self.process.kill()
        pytest.fail(f"medai serve did not write server.json in time: {self.tail()}")

    @property
    def dicom_port(self) -> int:
        return int(self.info["dicom_port"])

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def stop(self) -> int:
        self.http.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)

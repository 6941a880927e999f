"""The DICOM listener of ``medai serve`` in a real server process on loopback: C-ECHO,
C-STORE from dcmtk's ``storescu`` and from pynetdicom, per-project AE titles (unknown
callers and unknown called AE titles refused), and kill -9 during an ingest."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, StoragePresentationContexts
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from sqlalchemy import create_engine, select
from sqlalchemy.orm import sessionmaker
from typer.testing import CliRunner

from _dicom_outputs import dicom_tool
from _seg_cohort import grid_affine, world_phantom
from _service import CHANNELS, bearer, phantom_study
from _standin import standin_run
from medai.cli.main import app
from medai.export import export_bundle
from medai.fsutil import _create_temp
from medai.io import write_dicom_series
from medai.runtime import load_bundle, read_bundle_files
from medai.service.archive import Archive
from medai.service.db import AuditEntry, Conflict, Instance, User

START_TIMEOUT = 90.0  # a loaded CI machine starts the process, the index and the pool slowly


def _cli(*args: str) -> str:
    result = CliRunner().invoke(app, ["serve", *args])
    assert result.exit_code == 0, result.output
    return result.output


def _setup_root(root: Path) -> str:
    """Project glioma (AE GLIOMA, callers SCANNER and STORESCU) and a user; their token."""
    _cli("project", "add", str(root), "glioma", "--ae", "GLIOMA", "--caller", "SCANNER",
         "--caller", "STORESCU")  # fmt: skip
    output = _cli("user", "add", str(root), "alice", "--project", "glioma")
    return next(line for line in output.split() if line.startswith("medai_"))


class Server:
    """``medai serve ROOT --port 0 --dicom-port 0`` in a child process."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "server.json").unlink(missing_ok=True)
        self.log = root.with_name(root.name + ".stderr")
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "medai.cli.main", "serve", str(root), "--port", "0",
                 "--dicom-port", "0", "--workers", "1"],
                stdout=subprocess.DEVNULL, stderr=log,
            )  # fmt: skip
        self.info = self._wait()

    def _wait(self) -> dict[str, Any]:
        deadline = time.monotonic() + START_TIMEOUT
        path = self.root / "server.json"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                stderr = self.log.read_text(errors="replace")
                pytest.fail(f"medai serve exited with {self.process.returncode}: {stderr}")
            if path.is_file():
                info: dict[str, Any] = json.loads(path.read_text())
                if info["pid"] == self.process.pid:
                    return info
            time.sleep(0.1)
        self.process.kill()
        pytest.fail("medai serve did not write server.json in time")

    @property
    def dicom_port(self) -> int:
        return int(self.info["dicom_port"])

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=f"http://127.0.0.1:{self.info['http_port']}", timeout=30)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)

    def kill(self) -> None:
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)


def _sender(calling: str) -> AE:
    """A sender offering the files' own transfer syntax only (so nothing is re-encoded)."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    for cx in StoragePresentationContexts[:100]:
        ae.add_requested_context(str(cx.abstract_syntax), ExplicitVRLittleEndian)
    return ae


def _send(port: int, files: list[Path], *, calling: str = "SCANNER") -> list[int]:
    """C-STORE each file over one association; the statuses."""
    assoc = _sender(calling).associate("127.0.0.1", port, ae_title="GLIOMA")
    assert assoc.is_established
    statuses = [int(assoc.send_c_store(pydicom.dcmread(f)).Status) for f in files]
    assoc.release()
    return statuses


def _rows(root: Path, model: Any) -> list[Any]:
    engine = create_engine(f"sqlite:///{root / 'index.sqlite'}")
    try:
        with engine.connect() as connection:
            return list(connection.execute(select(model)))
    finally:
        engine.dispose()


def _audited(root: Path, action: str, expected: int) -> list[Any]:
    """The audit rows of ``action`` once there are ``expected`` (written at association end)."""
    deadline = time.monotonic() + 10
    while True:
        rows = [r for r in _rows(root, AuditEntry) if r.action == action]
        if len(rows) >= expected or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


def _dataset_bytes(path: Path) -> bytes:
    """A Part 10 file's bytes after its preamble and file meta group."""
    data = path.read_bytes()
    group_length = struct.unpack("<I", data[140:144])[0]  # (0002,0000) UL, explicit VR LE
    return data[144 + group_length :]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    root = tmp_path_factory.mktemp("served")
    token = _setup_root(root)
    server = Server(root)
    try:
        yield server, token
    finally:
        assert server.stop() == 0  # SIGTERM: a clean stop
        assert not (root / "server.json").exists()


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    return phantom_study(tmp_path_factory.mktemp("phantom"))


def test_echo_and_both_senders_index_every_instance(
    served: tuple[Server, str], study: dict[str, list[Path]]
) -> None:
    server, token = served
    assoc = _sender("SCANNER").associate("127.0.0.1", server.dicom_port, ae_title="GLIOMA")
    assert assoc.is_established
    assert int(assoc.send_c_echo().Status) == 0x0000
    assoc.release()

    by_storescu = [str(p) for name in CHANNELS[:2] for p in study[name]]
    run = subprocess.run(
        [dicom_tool("storescu"), "-aet", "STORESCU", "-aec", "GLIOMA", "127.0.0.1",
         str(server.dicom_port), *by_storescu],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    by_pynetdicom = [p for name in CHANNELS[2:] for p in study[name]]
    assert set(_send(server.dicom_port, by_pynetdicom)) == {0x0000}

    with server.client() as client:
        response = client.get("/api/projects/glioma/tree", headers=bearer(token))
    assert response.status_code == 200, response.text
    (participant,) = response.json()
    (found,) = participant["studies"]
    counts = {s["attributes"]["SeriesDescription"]: s["instances"] for s in found["series"]}
    assert counts == {name: len(study[name]) for name in CHANNELS}
    stores = _audited(server.root, "store", 2)
    stored = sorted((r.actor, r.detail["stored"]) for r in stores)
    assert stored == [("SCANNER", len(by_pynetdicom)), ("STORESCU", len(by_storescu))]


@pytest.mark.parametrize(
    ("calling", "called", "reason"),
    [("INTRUDER", "GLIOMA", 0x03), ("SCANNER", "NOWHERE", 0x07)],
    ids=["unknown-calling", "unknown-called"],
)
def test_unknown_ae_titles_are_rejected_and_nothing_stored(
    served: tuple[Server, str], study: dict[str, list[Path]], calling: str, called: str,
    reason: int,
) -> None:  # fmt: skip
    server, _ = served
    before = len(_rows(server.root, Instance))
    assoc = _sender(calling).associate("127.0.0.1", server.dicom_port, ae_title=called)
    assert assoc.is_rejected
    assert assoc.acceptor.primitive is not None
    assert (assoc.acceptor.primitive.result, assoc.acceptor.primitive.diagnostic) == (1, reason)
    run = subprocess.run(
        [dicom_tool("storescu"), "-aet", calling, "-aec", called, "127.0.0.1",
         str(server.dicom_port), str(study["FLAIR"][0])],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert run.returncode != 0
    assert "Association Rejected" in run.stdout + run.stderr
    assert len(_rows(server.root, Instance)) == before
    refusals = [r for r in _rows(server.root, AuditEntry) if r.action == "refuse"]
    assert any(r.actor == calling and r.target == f"dicom:{called}" for r in refusals)


def test_store_statuses_for_a_conflict_and_a_refused_instance(
    served: tuple[Server, str], study: dict[str, list[Path]]
) -> None:
    server, _ = served
    changed = pydicom.dcmread(study["FLAIR"][0])
    changed.SeriesDescription = "FLAIR edited"  # same SOP Instance UID, other bytes
    broken = pydicom.dcmread(study["FLAIR"][1])
    del broken.StudyInstanceUID  # the archive needs it to file the instance
    assoc = _sender("SCANNER").associate("127.0.0.1", server.dicom_port, ae_title="GLIOMA")
    assert assoc.is_established
    conflict = assoc.send_c_store(changed)
    refused = assoc.send_c_store(broken)
    assoc.release()
    assert int(conflict.Status) == 0x0000  # kept aside and reported, see scp.py
    assert int(refused.Status) == 0xA900
    assert "StudyInstanceUID" in str(refused.ErrorComment)
    conflicts = _rows(server.root, Conflict)
    assert [row.sop_uid for row in conflicts] == [str(changed.SOPInstanceUID)]


def test_sweep_removes_only_temporary_files_of_interrupted_writes(tmp_path: Path) -> None:
    archive = Archive(tmp_path / "archive", sessionmaker(), keys=tmp_path / "keys")
    folder = tmp_path / "archive" / "1" / "1.2.3" / "1.2.3.4"
    folder.mkdir(parents=True)
    kept = folder / "1.2.3.4.5.dcm"
    kept.write_bytes(b"stored")
    fd, temp = _create_temp(folder / "1.2.3.4.6.dcm", 0o600)  # what a killed write leaves
    os.close(fd)
    assert archive.sweep() == 1
    assert not temp.exists()
    assert sorted(p.name for p in folder.iterdir()) == [kept.name]


def _long_series(folder: Path, slices: int = 200) -> list[Path]:
    shape = (32, 32, slices)
    image, _ = world_phantom(shape, grid_affine(shape, (2.0, 2.0, 1.0), np.eye(3)))
    return write_dicom_series(
        image.channel(0), folder, patient_id="P200", patient_name="Kill^Nine",
        series_description="FLAIR",
    )  # fmt: skip


def _send_until_killed(port: int, files: list[Path], acked: dict[str, Path]) -> None:
    assoc = _sender("SCANNER").associate("127.0.0.1", port, ae_title="GLIOMA")
    raw = assoc.dul.socket.socket if assoc.dul.socket is not None else None
    try:
        for path in files:
            ds = pydicom.dcmread(path)
            status = assoc.send_c_store(ds)
            if "Status" not in status:  # the peer is gone
                return
            if int(status.Status) == 0x0000:
                acked[str(ds.SOPInstanceUID)] = path
    finally:
        if assoc.is_established:
            assoc.release()
        if raw is not None:  # pynetdicom's close skips it when shutdown() fails on a reset
            raw.close()


@pytest.mark.slow
def test_kill_9_during_ingest_loses_no_acknowledged_instance(tmp_path: Path) -> None:
    files = _long_series(tmp_path / "series")
    root = tmp_path / "root"
    _setup_root(root)
    server = Server(root)
    acked: dict[str, Path] = {}
    sender = threading.Thread(
        target=_send_until_killed, args=(server.dicom_port, files, acked), daemon=True
    )
    sender.start()
    deadline = time.monotonic() + 60
    while len(acked) < 60 and sender.is_alive() and time.monotonic() < deadline:
        time.sleep(0.005)
    server.kill()
    sender.join(timeout=60)
    assert 60 <= len(acked) < len(files), "the kill should land in the middle of the ingest"

    server = Server(root)  # restart: sweeps what the killed write left
    try:
        leftovers = [p for p in (root / "archive").rglob("*") if ".tmp" in p.name]
        assert leftovers == []
        stored = {row.sop_uid: row for row in _rows(root, Instance)}
        assert set(acked) <= set(stored)
        for sop_uid, sent in acked.items():
            path = root / "archive" / stored[sop_uid].path
            assert pydicom.dcmread(path).SOPInstanceUID == sop_uid
            assert _dataset_bytes(path) == _dataset_bytes(sent)

        statuses = _send(server.dicom_port, files)
        assert set(statuses) == {0x0000}
        assert len(_rows(root, Instance)) == len(files)
        (again,) = _audited(root, "store", 1)
        assert again.detail["duplicate"] >= len(acked)  # also any committed but unacknowledged
        assert again.detail["stored"] + again.detail["duplicate"] == len(files)
    finally:
        assert server.stop() == 0


def _fails(*args: str) -> str:
    result = CliRunner().invoke(app, ["serve", *args])
    assert result.exit_code == 2, result.output
    return " ".join(result.output.split())


def test_setup_commands_refuse_bad_input_in_one_line(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _setup_root(root)
    assert "no project 'nope'" in _fails("user", "add", str(root), "bob", "--project", "nope")
    assert "is used by another project" in _fails(
        "project", "add", str(root), "second", "--ae", "GLIOMA"
    )
    assert "user 'alice' exists already" in _fails("user", "add", str(root), "alice")
    assert "port" in _fails(str(root), "--port", "70000")  # `medai serve ROOT` validates first
    output = _cli("user", "add", str(root), "bob", "--project", "glioma", "--cpu", "2")
    assert "keep this token safe" in output
    users = [row.name for row in _rows(root, User)]
    assert users == ["alice", "bob"]  # the refused bob was not half-created


def test_bundle_add_verifies_and_registers_by_name(tmp_path: Path) -> None:
    root = tmp_path / "root"
    shape = (24, 26, 22)
    image, _ = world_phantom(shape, grid_affine(shape, (2.0, 2.0, 2.0), np.eye(3)))
    zipped = tmp_path / "standin.zip"
    export_bundle(standin_run(), zipped, parity_cases=[image], as_zip=True)
    _cli("bundle", "add", str(root), str(zipped), "--name", "seg")
    registered = load_bundle(root / "bundles" / "seg")
    assert registered.digest == load_bundle(zipped).digest
    assert "registered already" in _fails("bundle", "add", str(root), str(zipped), "--name", "seg")
    assert "not allowed" in _fails("bundle", "add", str(root), str(zipped), "--name", "../x")

    tampered = tmp_path / "tampered"
    tampered.mkdir()
    for name, data in read_bundle_files(zipped).items():
        (tampered / name).write_bytes(data)
    (tampered / "plan.json").write_bytes(b"{}")
    _fails("bundle", "add", str(root), str(tampered))
    assert sorted(p.name for p in (root / "bundles").iterdir()) == ["seg"]

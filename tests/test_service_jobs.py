"""Jobs, the dispatcher and the jobs API: dry runs, submission order, restart safety (a
task left running is queued again and runs once; a finished one never re-runs, also after
kill -9), retries with back-off, cancel, outputs and the measurements export, and 403 for
a user of another project on every jobs route."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from _service import STUDY_UID, api_server, bearer, phantom_study, populate, service_context
from medai.service.archive import complete_quiet_studies
from medai.service.context import ServiceContext
from medai.service.db import Delivery, Job, Output, Project, Task, TaskState, User
from medai.service.dispatcher import Dispatcher, StepReport
from medai.service.executor import Finished
from medai.service.jobs import JobError, cancel_job, submit_job
from medai.service.scheduler import Demand

ALL_MR = 'select series where Modality = "MR"'
FLAIR_STUDIES = 'select study where has series flair (SeriesDescription = "FLAIR")'
Service = tuple[ServiceContext, dict[str, str]]


def _open(folder: Path, **overrides: object) -> Service:
    """A service with the phantom study (4 series, 6 slices each) stored and complete."""
    context = service_context(folder / "svc", workers=3, quiet_seconds=0.0, **overrides)
    tokens = populate(context)
    files = phantom_study(folder / "dicom", shape=(24, 26, 6))
    with context.factory() as session:
        project = _project(session)
    for paths in files.values():
        for path in paths:
            context.archive.store(project, path.read_bytes())
    with context.factory() as session:
        complete_quiet_studies(session, quiet_seconds=0.0)
        session.commit()
    return context, tokens


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    context, tokens = _open(tmp_path)
    yield context, tokens
    context.close()


def _user(session: Session, name: str) -> User:
    return session.scalars(select(User).where(User.name == name)).one()


def _project(session: Session, name: str = "glioma") -> Project:
    return session.scalars(select(Project).where(Project.name == name)).one()


def _submit(context: ServiceContext, user: str = "bob", **options: object) -> list[int]:
    """Submit a noop job on every MR series as ``user``; returns its task ids by seq."""
    with context.factory() as session:
        job = submit_job(
            session, _user(session, user), _project(session), "noop", ALL_MR,
            options=options,
        )  # fmt: skip
        session.commit()
        return list(
            session.scalars(select(Task.id).where(Task.job_id == job.id).order_by(Task.seq))
        )


def _tasks(context: ServiceContext) -> dict[int, Task]:
    with context.factory() as session:
        return {t.id: t for t in session.scalars(select(Task))}


def _run_until(
    dispatcher: Dispatcher, done: object, *, timeout: float = 15.0, now: float | None = None
) -> list[StepReport]:
    """Step ``dispatcher`` until ``done()`` is true; returns the reports."""
    reports: list[StepReport] = []
    deadline = time.monotonic() + timeout
    while not done():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out; last steps: {reports[-3:]}")
        reports.append(dispatcher.step(now))
        time.sleep(0.02)
    return reports


def _retried(context: ServiceContext, task_id: int, attempts: int) -> bool:
    task = _tasks(context)[task_id]
    return task.state == TaskState.QUEUED and task.attempts == attempts


def _all_final(context: ServiceContext) -> bool:
    return all(t.state in TaskState.FINAL for t in _tasks(context).values())


def test_dry_run_lists_units_and_exclusions(service: Service) -> None:
    context, tokens = service
    with api_server(context) as client:
        reply = client.post(
            "/api/projects/glioma/selections/dry-run", headers=bearer(tokens["alice"]),
            json={"text": 'select series where SeriesDescription = "FLAIR"'},
        )  # fmt: skip
    assert reply.status_code == 200
    body = reply.json()
    assert body["level"] == "series"
    assert len(body["units"]) == 1
    assert len(body["excluded"]) == 3
    assert all("SeriesDescription" in e["reason"] for e in body["excluded"])


def test_a_syntax_error_is_422_with_a_caret(service: Service) -> None:
    context, tokens = service
    bad = 'select series wher Modality = "MR"'
    with api_server(context) as client:
        headers = bearer(tokens["alice"])
        dry = client.post("/api/projects/glioma/selections/dry-run", headers=headers,
                          json={"text": bad})  # fmt: skip
        job = client.post("/api/projects/glioma/jobs", headers=headers,
                          json={"kind": "noop", "selection": bad})  # fmt: skip
    for reply in (dry, job):
        assert reply.status_code == 422
        assert "^^^^" in reply.json()["detail"]
        assert "wher" in reply.json()["detail"]


def test_submit_creates_tasks_in_submission_order(service: Service) -> None:
    context, tokens = service
    with api_server(context) as client:
        headers = bearer(tokens["bob"])
        first = client.post("/api/projects/glioma/jobs", headers=headers,
                            json={"kind": "noop", "selection": ALL_MR})  # fmt: skip
        standing = {"kind": "noop", "selection": ALL_MR, "standing": True}
        second = client.post("/api/projects/glioma/jobs", headers=headers, json=standing)
        units = client.post("/api/projects/glioma/selections/dry-run", headers=headers,
                            json={"text": ALL_MR}).json()["units"]  # fmt: skip
        listed = client.get("/api/projects/glioma/tasks", headers=headers).json()
        jobs = client.get("/api/projects/glioma/jobs", headers=headers).json()
    assert first.status_code == second.status_code == 201
    assert first.json()["tasks"] == 4
    assert [t["seq"] for t in listed] == sorted(t["seq"] for t in listed)
    assert len({t["seq"] for t in listed}) == 8
    assert [t["job"] for t in listed] == [first.json()["id"]] * 4 + [second.json()["id"]] * 4
    assert [t["unit"] for t in listed[:4]] == [u["key"] for u in units]
    assert listed[0]["blocked"] is None
    assert listed[2]["blocked"] == f"waiting for user bob's earlier task {listed[0]['id']}"
    assert [j["id"] for j in jobs] == [second.json()["id"], first.json()["id"]]


def test_submit_refuses_what_could_never_run(service: Service) -> None:
    context, _ = service
    with context.factory() as session:
        alice, glioma = _user(session, "alice"), _project(session)
        with pytest.raises(JobError, match="allocation"):
            submit_job(session, alice, glioma, "noop", ALL_MR, demand=Demand(cpu=2))
        with pytest.raises(JobError, match="needs a bundle"):
            submit_job(session, alice, glioma, "segmentation", ALL_MR)
        with pytest.raises(JobError, match="never a path"):
            submit_job(session, alice, glioma, "segmentation", ALL_MR, bundle="../x",
                       bundles=context.config.root / "bundles")  # fmt: skip
        with pytest.raises(JobError, match="no bundle 'brain'"):
            submit_job(session, alice, glioma, "segmentation", ALL_MR, bundle="brain",
                       bundles=context.config.root / "bundles")  # fmt: skip
        with pytest.raises(JobError, match="job kind 'train'"):
            submit_job(session, alice, glioma, "train", ALL_MR)


def test_tasks_run_to_outputs_and_the_measurements_export(service: Service) -> None:
    context, tokens = service
    ids = _submit(context)
    dispatcher = Dispatcher(context)
    try:
        _run_until(dispatcher, lambda: _all_final(context))
    finally:
        dispatcher.stop()
    tasks = _tasks(context)
    assert {tasks[i].state for i in ids} == {TaskState.DONE}
    assert all(tasks[i].attempts == 1 for i in ids)
    assert sorted(p.name for p in context.config.results.iterdir()) == sorted(
        [".logs", ".staging", *map(str, ids)]
    )
    with api_server(context) as client:
        headers = bearer(tokens["alice"])
        outputs = client.get(f"/api/projects/glioma/tasks/{ids[0]}/outputs", headers=headers)
        names = [o["name"] for o in outputs.json()]
        assert "inputs.json" in names
        download = client.get(f"/api/projects/glioma/tasks/{ids[0]}/outputs/inputs.json",
                              headers=headers)  # fmt: skip
        missing = client.get(f"/api/projects/glioma/tasks/{ids[0]}/outputs/..%2Fx",
                             headers=headers)  # fmt: skip
        csv = client.get("/api/projects/glioma/measurements.csv", headers=headers)
        parquet = client.get("/api/projects/glioma/measurements.parquet", headers=headers)
    assert download.status_code == 200
    assert download.content == (context.config.results / str(ids[0]) / "inputs.json").read_bytes()
    assert missing.status_code == 404
    table = pd.read_csv(io.StringIO(csv.text))
    assert table["task"].tolist() == ids
    assert pd.read_parquet(io.BytesIO(parquet.content))["task"].tolist() == ids


def test_a_task_left_running_is_queued_again_and_runs_once(service: Service) -> None:
    context, _ = service
    ids = _submit(context)
    with context.factory() as session:  # as a crash leaves it: running, one attempt used
        task = session.get_one(Task, ids[0])
        task.state, task.attempts = TaskState.RUNNING, 1
        session.commit()
    (context.config.results / ".staging" / f"{ids[0]}-1").mkdir(parents=True)
    dispatcher = Dispatcher(context)
    try:
        assert _tasks(context)[ids[0]].state == TaskState.QUEUED
        assert not any((context.config.results / ".staging").iterdir())
        reports = _run_until(dispatcher, lambda: _all_final(context))
    finally:
        dispatcher.stop()
    started = [i for report in reports for i in report.started]
    assert sorted(started) == ids
    assert _tasks(context)[ids[0]].attempts == 2
    with context.factory() as session:
        count = session.scalar(
            select(func.count()).select_from(Output).where(Output.task_id == ids[0])
        )
    assert count == 2  # inputs.json and task.log, once


def test_a_task_running_in_the_index_only_is_queued_again(service: Service) -> None:
    context, _ = service
    ids = _submit(context)
    executor = _CannedExecutor()
    dispatcher = Dispatcher(context, executor)
    with context.factory() as session:  # e.g. a step that died between commit and submit
        task = session.get_one(Task, ids[3])
        task.state, task.attempts = TaskState.RUNNING, 1
        session.commit()
    _run_until(dispatcher, lambda: _all_final(context))
    assert [p["task_id"] for p in executor.submitted] == ids
    assert {t.state for t in _tasks(context).values()} == {TaskState.DONE}


def test_a_finished_task_is_never_run_again_after_a_restart(service: Service) -> None:
    context, _ = service
    ids = _submit(context)
    first = Dispatcher(context)
    try:
        _run_until(first, lambda: _all_final(context))
    finally:
        first.stop()
    before = _tasks(context)
    again = Dispatcher(context)
    try:
        reports = [again.step() for _ in range(3)]
        assert again.executor.running() == set()
    finally:
        again.stop()
    assert all(not r.started and not r.done for r in reports)
    after = _tasks(context)
    for task_id in ids:
        assert after[task_id].state == TaskState.DONE
        assert after[task_id].finished_at == before[task_id].finished_at


def test_a_failing_task_is_retried_with_back_off_then_failed(service: Service) -> None:
    context, _ = service
    ids = _submit(context, user="alice")[:1]
    with context.factory() as session:  # the other three are not needed here
        for task in session.scalars(select(Task).where(Task.id != ids[0])):
            task.state = TaskState.CANCELLED
        session.commit()
    dispatcher = Dispatcher(context, target="medai.service.no_such_module:run")
    now = time.time()
    try:
        for attempt, wait in ((1, 5.0), (2, 10.0)):
            reports = _run_until(dispatcher, partial(_retried, context, ids[0], attempt), now=now)
            assert ids[0] in reports[-1].retried
            task = _tasks(context)[ids[0]]
            assert task.not_before == pytest.approx(now + wait)
            assert "ModuleNotFoundError" in (task.error or "")
            assert not dispatcher.step(now + wait - 1).started  # still backing off
            now += wait
        _run_until(dispatcher, lambda: _all_final(context), now=now)
    finally:
        dispatcher.stop()
    task = _tasks(context)[ids[0]]
    assert task.state == TaskState.FAILED
    assert task.attempts == 3
    assert "no_such_module" in (task.error or "")


def test_cancel_stops_a_running_task_and_a_queued_one(service: Service) -> None:
    context, tokens = service
    ids = _submit(context, user="alice", seconds=30)
    dispatcher = Dispatcher(context)
    try:
        assert dispatcher.step().started == ids[:1]
        with api_server(context) as client:
            headers = bearer(tokens["alice"])
            reply = client.post(f"/api/projects/glioma/tasks/{ids[0]}/cancel", headers=headers)
            assert reply.json() == {"task": ids[0], "cancelled": True}
            again = client.post(f"/api/projects/glioma/tasks/{ids[0]}/cancel", headers=headers)
            assert again.json()["cancelled"] is False
        assert dispatcher.step().started == ids[1:2]  # the freed slot goes to the next task
        assert dispatcher.executor.running() == {ids[1]}
        with context.factory() as session:
            job = session.get_one(Job, session.get_one(Task, ids[1]).job_id)
            assert cancel_job(session, job, actor="alice") == 3
            session.commit()
        assert not dispatcher.step().started
        assert dispatcher.executor.running() == set()
    finally:
        dispatcher.stop()
    assert {t.state for t in _tasks(context).values()} == {TaskState.CANCELLED}
    assert not (context.config.results / str(ids[0])).exists()


class _CannedExecutor:
    """An executor that 'runs' a task at once: writes a SEG-like file and reports measures."""

    def __init__(self) -> None:
        self.done: list[Finished] = []
        self.submitted: list[dict[str, Any]] = []

    def submit(self, task_id: int, target: str, payload: dict[str, Any]) -> None:
        self.submitted.append(payload)
        (Path(payload["out"]) / "seg.dcm").write_bytes(b"DICM" * 8)
        result = {
            "outputs": [{"name": "seg", "kind": "seg", "path": "seg.dcm", "sop_uid": "1.2.3"}],
            "measurements": [{"name": "volume_ml.WT", "value": task_id * 1.5, "unit": "ml"}],
        }
        self.done.append(Finished(task_id, True, None, result, 0.0))

    def poll(self) -> list[Finished]:
        done, self.done = self.done, []
        return done

    def cancel(self, task_id: int) -> bool:
        return False

    def running(self) -> set[int]:
        return {f.task_id for f in self.done}

    def shutdown(self) -> None:
        self.done.clear()


def test_dicom_outputs_get_deliveries_and_measurements_a_column(tmp_path: Path) -> None:
    unreachable = {"name": "pacs", "host": "127.0.0.1", "port": 9, "max_attempts": 2}
    context, tokens = _open(tmp_path, destinations=[unreachable])
    try:
        ids = _submit(context)
        executor = _CannedExecutor()
        dispatcher = Dispatcher(context, executor)
        _run_until(dispatcher, lambda: _all_final(context))
        first = executor.submitted[0]
        assert sorted(first["inputs"]) == sorted(first["series"]) == ["series"]
        assert len(first["inputs"]["series"]) == 6  # the series' instance files, in order
        assert first["kind"] == "noop"
        assert first["cpu"] == 1
        with context.factory() as session:
            deliveries = session.scalars(select(Delivery)).all()
            assert [d.destination for d in deliveries] == ["pacs"] * 4
            assert {d.state for d in deliveries} <= {"pending", "retrying"}
        with api_server(context) as client:
            csv = client.get("/api/projects/glioma/measurements.csv",
                             headers=bearer(tokens["alice"]))  # fmt: skip
        table = pd.read_csv(io.StringIO(csv.text))
        assert table["task"].tolist() == ids
        assert table["volume_ml.WT"].tolist() == [i * 1.5 for i in ids]
    finally:
        context.close()


def test_a_standing_job_queues_a_new_study_once(service: Service, tmp_path: Path) -> None:
    context, _ = service
    with context.factory() as session:
        job = submit_job(session, _user(session, "alice"), _project(session), "noop",
                         FLAIR_STUDIES, standing=True)  # fmt: skip
        session.commit()
        job_id = job.id
    files = phantom_study(
        tmp_path / "late", patient_id="P002", study_uid="1.2.826.0.1.3680043.8.498.99"
    )
    with context.factory() as session:
        project = _project(session)
    for path in files["FLAIR"]:
        context.archive.store(project, path.read_bytes())
    dispatcher = Dispatcher(context, _CannedExecutor())
    assert len(dispatcher.step().queued) == 1
    assert dispatcher.step().queued == []
    with context.factory() as session:
        units = session.scalars(select(Task.unit).where(Task.job_id == job_id).order_by(Task.seq))
        assert list(units) == [STUDY_UID, "1.2.826.0.1.3680043.8.498.99"]


def test_another_projects_user_gets_403_on_every_jobs_route(service: Service) -> None:
    context, tokens = service
    ids = _submit(context)
    task, job = ids[0], _tasks(context)[ids[0]].job_id
    base = "/api/projects/glioma"
    routes = [
        ("POST", f"{base}/selections/dry-run", {"text": ALL_MR}),
        ("POST", f"{base}/jobs", {"kind": "noop", "selection": ALL_MR}),
        ("GET", f"{base}/jobs", None), ("GET", f"{base}/jobs/{job}", None),
        ("POST", f"{base}/jobs/{job}/cancel", None), ("GET", f"{base}/tasks", None),
        ("POST", f"{base}/tasks/{task}/cancel", None),
        ("GET", f"{base}/tasks/{task}/outputs", None),
        ("GET", f"{base}/tasks/{task}/outputs/inputs.json", None),
        ("GET", f"{base}/tasks/{task}/log", None), ("GET", f"{base}/measurements.csv", None),
        ("GET", f"{base}/measurements.parquet", None),
    ]  # fmt: skip
    with api_server(context) as client:
        for method, url, body in routes:
            eve = client.request(method, url, headers=bearer(tokens["eve"]), json=body)
            assert eve.status_code == 403, (method, url, eve.text)
            nobody = client.request(method, url, json=body)
            assert nobody.status_code == 401, (method, url)
        assert client.get("/api/bundles").status_code == 401
        assert client.get("/api/bundles", headers=bearer(tokens["eve"])).json() == []
    assert {t.state for t in _tasks(context).values()} == {TaskState.QUEUED}


def _serve(context: ServiceContext, log: Path) -> subprocess.Popen[bytes]:
    """``medai serve ROOT`` (API and DICOM on free ports, 2 workers) in its own process group."""
    command = [sys.executable, "-m", "medai.cli.main", "serve", str(context.config.root),
               "--port", "0", "--dicom-port", "0", "--workers", "2"]  # fmt: skip
    if context.config.database_url:
        command += ["--database-url", context.config.database_url]
    with log.open("ab") as handle:
        return subprocess.Popen(command, start_new_session=True, stdout=handle, stderr=handle)


def _wait_for(condition: object, timeout: float, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            text = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            raise AssertionError(f"timed out; the server's log:\n{text}")
        time.sleep(0.05)


@pytest.mark.slow
def test_kill_9_during_a_running_job_loses_no_task_and_finishes_none_twice(
    service: Service, tmp_path: Path
) -> None:
    context, _ = service
    ids = _submit(context, seconds=1)
    log = tmp_path / "serve.log"
    process = _serve(context, log)
    try:
        _wait_for(lambda: any(t.state == "running" for t in _tasks(context).values()), 90, log)
        os.killpg(process.pid, signal.SIGKILL)  # the server and its task processes
        process.wait(timeout=10)
        before = _tasks(context)
        process = _serve(context, log)
        _wait_for(lambda: _all_final(context), 90, log)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    after = _tasks(context)
    assert {t.state for t in after.values()} == {TaskState.DONE}
    assert any(t.state == TaskState.RUNNING for t in before.values())
    for task_id in ids:
        if before[task_id].state == TaskState.DONE:  # finished before the kill: not re-run
            assert after[task_id].attempts == before[task_id].attempts
            assert after[task_id].finished_at == before[task_id].finished_at
    with context.factory() as session:
        names = session.execute(select(Output.task_id, Output.name)).all()
    assert sorted(task_id for task_id, name in names if name == "inputs.json") == ids
    results = sorted(p.name for p in context.config.results.iterdir() if not p.name.startswith("."))
    assert results == sorted(map(str, ids))

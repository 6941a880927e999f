"""The dispatcher: the loop that moves tasks from the queue through an executor to results.

Each :meth:`Dispatcher.step`:

1. marks quiet studies complete and queues the tasks of standing jobs for them;
2. stops tasks cancelled while they run;
3. records the tasks that ended: a success is published to ``ROOT/results/<task id>/``
   and its outputs, measurements, deliveries and ``done`` state are committed in ONE
   transaction, with the project's normality ranking (:func:`~medai.service.review.
   rank_project`, which holds the deliveries of a result that waits for review); a failure
   is retried after :func:`~medai.service.scheduler.backoff_seconds` until
   ``max_attempts``, then ``failed`` with the error text;
4. plans which queued tasks start (:func:`~medai.service.scheduler.plan_starts`) and starts
   them — each is marked ``running`` and committed BEFORE it is submitted, so a crash can
   only leave a task ``running`` that did not finish, never finish one twice in the index;
5. sends pending DICOM deliveries.

Restart safety: a new dispatcher puts tasks left ``running`` by a crash back in the queue
(``attempts`` unchanged: a crash is not the task's fault) and removes staging folders.
A task's work is deterministic, so a re-run writes the same bytes.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from medai.fsutil import publish_folder
from medai.service.archive import complete_quiet_studies
from medai.service.context import ServiceContext
from medai.service.db import (
    Delivery,
    Instance,
    Job,
    Measurement,
    Output,
    Series,
    Study,
    Task,
    TaskState,
    User,
    session_scope,
    utcnow,
)
from medai.service.deliver import send_pending
from medai.service.executor import Executor, Finished, LocalExecutor
from medai.service.jobs import queue_for_completed_studies
from medai.service.review import rank_project
from medai.service.scheduler import (
    Allocation,
    Capacity,
    Demand,
    QueuedTask,
    RunningTask,
    backoff_seconds,
    plan_starts,
)

__all__ = [
    "TASK_TARGET",
    "Dispatcher",
    "StepReport",
    "configured_executor",
    "pool_capacity",
    "task_queue",
]

logger = logging.getLogger(__name__)

TASK_TARGET = "medai.service.tasks:run_task"
OUTPUT_KINDS = frozenset({"nifti", "seg", "sr", "json", "csv", "log"})
DICOM_KINDS = frozenset({"seg", "sr"})


@dataclass
class StepReport:
    """What one :meth:`Dispatcher.step` did (task ids), for tests and logs."""

    started: list[int] = field(default_factory=list)
    done: list[int] = field(default_factory=list)
    retried: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    queued: list[int] = field(default_factory=list)


def pool_capacity(context: ServiceContext) -> Capacity:
    """The worker pool's capacity from the service settings (workers, gpus, memory_gb)."""
    config = context.config
    return Capacity(config.workers, config.gpus, config.memory_gb)


def task_queue(
    session: Session,
) -> tuple[list[QueuedTask], list[RunningTask], dict[str, Allocation]]:
    """The scheduler's view of the index: queued and running tasks, users' allocations."""
    queued: list[QueuedTask] = []
    running: list[RunningTask] = []
    rows = session.execute(
        select(Task, User)
        .join(User, User.id == Task.user_id)
        .where(Task.state.in_([TaskState.QUEUED, TaskState.RUNNING]))
    ).all()
    allocations: dict[str, Allocation] = {}
    for task, user in rows:
        allocations[user.name] = Allocation(user.cpu_slots, user.gpu_slots, user.memory_gb)
        demand = Demand(task.cpu, task.gpu, task.memory_gb)
        if task.state == TaskState.RUNNING:
            running.append(RunningTask(task.id, user.name, demand))
        else:
            queued.append(QueuedTask(task.id, user.name, task.seq, demand, task.not_before))
    return queued, running, allocations


def configured_executor(context: ServiceContext, *, log_dir: Path) -> Executor:
    """The executor ``config.executor`` names: the local pool (``workers`` processes, logs
    under ``log_dir``) or Ray (``ray_address``; without one a private local instance with
    ``workers`` CPUs).

    Raises:
        ConfigError: ``ray`` is asked for and Ray is not installed.
    """
    config = context.config
    if config.executor == "ray":
        from medai.service.executor_ray import RayExecutor  # Ray is an optional extra

        return RayExecutor(config.ray_address, num_cpus=config.workers)
    return LocalExecutor(config.workers, log_dir=log_dir)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Dispatcher:
    """Runs the queue of one service root; :meth:`step` once, or :meth:`start` a thread.

    Args:
        context: The opened service.
        executor: Where tasks run; when None, the one ``config.executor`` names
            (:func:`configured_executor`; local logs under ``ROOT/results/.logs``).
        target: The ``"module:function"`` each task calls.
    """

    def __init__(
        self, context: ServiceContext, executor: Executor | None = None, *,
        target: str = TASK_TARGET,
    ) -> None:  # fmt: skip
        self.context = context
        self.results = context.config.results
        self.staging = self.results / ".staging"
        self.logs = self.results / ".logs"
        self.target = target
        self.executor: Executor = executor or configured_executor(context, log_dir=self.logs)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.recover()

    def recover(self) -> list[int]:
        """Put tasks left running (by a crash) back in the queue; remove staging folders."""
        with session_scope(self.context.factory) as session:
            stale = session.scalars(
                select(Task).where(Task.state == TaskState.RUNNING).order_by(Task.seq)
            ).all()
            for task in stale:
                if task.id not in self.executor.running():
                    task.state = TaskState.QUEUED
                    task.started_at = None
            ids = [t.id for t in stale]
        if ids:
            logger.warning("tasks %s were running when the service stopped: queued again", ids)
        shutil.rmtree(self.staging, ignore_errors=True)
        self.staging.mkdir(parents=True, exist_ok=True)
        return ids

    def start(self) -> None:
        """Run :meth:`step` every ``config.poll_seconds`` in a daemon thread."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="medai-dispatcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the loop, stop running tasks and queue them again (they re-run at start)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        self.executor.shutdown()
        self.recover()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except Exception:  # the loop survives a bad step; the next one tries again
                logger.exception("dispatcher step failed")
            self._stop.wait(self.context.config.poll_seconds)

    def step(self, now: float | None = None) -> StepReport:
        """One iteration; ``now`` (Unix seconds) defaults to the clock."""
        now = time.time() if now is None else now
        report = StepReport()
        report.queued = self._complete_studies()
        self._stop_cancelled()
        for finished in self.executor.poll():
            self._finish(finished, now, report)
        self._requeue_lost()
        report.started = self._start_planned(now)
        self._deliver(now)
        return report

    def _complete_studies(self) -> list[int]:
        with session_scope(self.context.factory) as session:
            studies = complete_quiet_studies(
                session, quiet_seconds=self.context.config.quiet_seconds
            )
            created = queue_for_completed_studies(session, studies) if studies else []
            session.flush()
            return [t.id for t in created]

    def _stop_cancelled(self) -> None:
        running = self.executor.running()
        if not running:
            return
        with self.context.factory() as session:
            ended = session.scalars(
                select(Task.id).where(Task.id.in_(running), Task.state != TaskState.RUNNING)
            ).all()
        for task_id in ended:
            self.executor.cancel(task_id)

    def _requeue_lost(self) -> None:
        """Queue again tasks the index says run but the executor does not have (a step that
        failed between the two, or a row edited by hand): they would otherwise wait forever."""
        running = self.executor.running()
        with session_scope(self.context.factory) as session:
            lost = session.scalars(
                select(Task).where(Task.state == TaskState.RUNNING, Task.id.not_in(running))
            ).all()
            for task in lost:
                logger.warning("task %d is running in the index only: queued again", task.id)
                task.state = TaskState.QUEUED
                task.started_at = None

    def _start_planned(self, now: float) -> list[int]:
        with session_scope(self.context.factory) as session:
            queued, running, allocations = task_queue(session)
            ids = plan_starts(queued, running, allocations, pool_capacity(self.context), now=now)
            payloads: dict[int, dict[str, Any]] = {}
            for task_id in ids:
                task = session.get_one(Task, task_id)
                task.state = TaskState.RUNNING
                task.started_at = utcnow()
                task.attempts += 1
                task.error = None
                payloads[task_id] = self._payload(session, task)
        # committed: a crash from here on leaves the tasks running, recover() queues them
        for task_id, payload in payloads.items():
            try:
                self.executor.submit(task_id, self.target, payload)
            except (ValueError, TypeError) as exc:  # e.g. the executor is full: try later
                self._failed(task_id, f"could not start: {exc}", now, StepReport())
        return ids

    def _payload(self, session: Session, task: Task) -> dict[str, Any]:
        job = session.get_one(Job, task.job_id)
        out = self.staging / f"{task.id}-{task.attempts}"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        series = {alias: list(uids) for alias, uids in task.inputs.get("series", {}).items()}
        bundle = None
        if job.bundle is not None:
            bundle = str(self.context.config.root / "bundles" / job.bundle)
        return {
            "task_id": task.id, "kind": job.kind, "bundle": bundle,
            "inputs": {alias: self._files(session, task.project_id, uids)
                       for alias, uids in series.items()},
            "series": series, "study_uid": task.inputs.get("study_uid"), "out": str(out),
            "options": dict(job.options), "cpu": task.cpu,
        }  # fmt: skip

    def _files(self, session: Session, project_id: int, series_uids: list[str]) -> list[str]:
        """The instance files of the series, series by series, by InstanceNumber in each."""
        files: list[str] = []
        for uid in series_uids:
            rows = session.scalars(
                select(Instance)
                .join(Series, Series.id == Instance.series_id)
                .join(Study, Study.id == Series.study_id)
                .where(Study.project_id == project_id, Series.series_uid == uid)
            ).all()
            rows = sorted(
                rows, key=lambda r: (r.instance_number is None, r.instance_number or 0, r.sop_uid)
            )
            files.extend(str(self.context.archive.path_of(row)) for row in rows)
        return files

    def _finish(self, finished: Finished, now: float, report: StepReport) -> None:
        with self.context.factory() as session:
            task = session.get(Task, finished.task_id)
            if task is None or task.state != TaskState.RUNNING:
                shutil.rmtree(self._staging_of(finished.task_id), ignore_errors=True)
                return  # cancelled (or deleted) while it ran: its result is dropped
            attempt = task.attempts
        out = self.staging / f"{finished.task_id}-{attempt}"
        error = finished.error
        if finished.ok:
            try:
                self._publish(finished.task_id, out, finished.result or {})
                report.done.append(finished.task_id)
                return
            except (ValueError, OSError) as exc:
                error = f"{type(exc).__name__}: {exc}"
        shutil.rmtree(out, ignore_errors=True)
        self._failed(finished.task_id, error or "unknown error", now, report)

    def _staging_of(self, task_id: int) -> Path:
        matches = sorted(self.staging.glob(f"{task_id}-*"))
        return matches[-1] if matches else self.staging / f"{task_id}-0"

    def _failed(self, task_id: int, error: str, now: float, report: StepReport) -> None:
        with session_scope(self.context.factory) as session:
            task = session.get_one(Task, task_id)
            task.error = error
            if task.attempts < task.max_attempts:
                task.state = TaskState.QUEUED
                task.not_before = now + backoff_seconds(task.attempts)
                report.retried.append(task_id)
            else:
                task.state = TaskState.FAILED
                task.finished_at = utcnow()
                report.failed.append(task_id)
        logger.info("task %d failed: %s", task_id, error.splitlines()[0] if error else "")

    def _publish(self, task_id: int, out: Path, result: dict[str, Any]) -> None:
        """Publish the staging folder and commit outputs, measurements, deliveries, done."""
        outputs = _checked_outputs(out, result)
        log = self.logs / f"{task_id}.log"
        if log.is_file() and not (out / "task.log").exists():
            shutil.copyfile(log, out / "task.log")
            outputs.append({"name": "task.log", "kind": "log", "path": "task.log", "sop_uid": None})
        measurements = _checked_measurements(result)
        folder = self.results / str(task_id)
        # If the process dies after this rename and before the commit below, the task is
        # still 'running' in the index: it runs again at restart and, being deterministic,
        # writes the same files, which replace these (publish_folder swaps an existing
        # folder for the new one atomically).
        publish_folder(out, folder)
        with session_scope(self.context.factory) as session:
            task = session.get_one(Task, task_id)
            for item in outputs:
                row = Output(
                    task_id=task_id, name=item["name"], kind=item["kind"],
                    path=f"{task_id}/{item['path']}", sha256=_sha256(folder / item["path"]),
                    sop_uid=item.get("sop_uid"),
                )  # fmt: skip
                session.add(row)
                session.flush()
                if item["kind"] in DICOM_KINDS:
                    for destination in self.context.config.destinations:
                        session.add(Delivery(output_id=row.id, destination=destination.name))
            for name, value, unit in measurements:
                session.add(
                    Measurement(
                        task_id=task_id, project_id=task.project_id, name=name, value=value,
                        unit=unit,
                    )
                )  # fmt: skip
            task.state = TaskState.DONE
            task.progress = 1.0
            task.finished_at = utcnow()
            task.error = None
            rank_project(session, self.context, task.project_id)  # may hold its deliveries

    def _deliver(self, now: float) -> None:
        """Send the DICOM deliveries that are due (their retries are the deliveries' own)."""
        if not self.context.config.destinations:
            return
        try:
            send_pending(self.context, now=now)
        except Exception:  # a broken destination must not stop the queue
            logger.exception("sending deliveries failed; they are tried again next step")


def _checked_outputs(out: Path, result: dict[str, Any]) -> list[dict[str, Any]]:
    """The task's declared outputs, each a file inside ``out`` with a known kind."""
    items = result.get("outputs", [])
    if not isinstance(items, list):
        raise ValueError(f"the task returned outputs={items!r}, not a list")
    checked: list[dict[str, Any]] = []
    names: set[str] = set()
    root = out.resolve()
    for item in items:
        if not isinstance(item, dict):
            raise ValueError(f"the task returned an output {item!r} that is not a dict")
        name, kind, rel = item.get("name"), item.get("kind"), item.get("path")
        if not isinstance(name, str) or not name or name in names:
            raise ValueError(f"output name {name!r} is missing or given twice")
        if kind not in OUTPUT_KINDS:
            raise ValueError(f"output {name!r}: kind {kind!r} is not one of {sorted(OUTPUT_KINDS)}")
        if not isinstance(rel, str) or PurePosixPath(rel).is_absolute() or ".." in rel.split("/"):
            raise ValueError(f"output {name!r} path {rel!r} is not relative to the output folder")
        if not (out / rel).resolve().is_relative_to(root) or not (out / rel).is_file():
            raise ValueError(f"output {name!r}: no file {rel!r} in the output folder")
        names.add(name)
        checked.append({"name": name, "kind": kind, "path": rel, "sop_uid": item.get("sop_uid")})
    return checked


def _checked_measurements(result: dict[str, Any]) -> list[tuple[str, float, str]]:
    items = result.get("measurements", [])
    if not isinstance(items, list):
        raise ValueError(f"the task returned measurements={items!r}, not a list")
    checked: dict[str, tuple[str, float, str]] = {}
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ValueError(f"measurement {item!r} has no name")
        try:
            value = float(item["value"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"measurement {item['name']!r} has no numeric value") from exc
        checked[item["name"]] = (item["name"], value, str(item.get("unit", "")))
    return list(checked.values())

"""Where started tasks run: the local worker pool, one child process per task.

Each task runs in its own process, started from a clean *forkserver* (``spawn`` where
there is none) rather than forked from the server, so a task that crashes, leaks or
hangs never takes the server with it, and a cancel can terminate (then kill) it. The
forkserver imports this module (and so medai) once, so a child starts in tens of
milliseconds, not in the second a fresh interpreter needs. As with any ``spawn``, the
main module must guard its entry point with ``if __name__ == "__main__":``; a console
script's main (``medai serve``) is not re-run in the children at all (see
:func:`_main_not_rerun`).

A task is a ``"module:function"`` target called with a JSON-safe ``payload`` dict; it
returns a JSON-safe dict (or ``None``). Payload key ``"cpu"`` (the task's CPU slots)
caps the child's OpenMP / BLAS / torch threads. :class:`Executor` is the interface the
dispatcher uses, so a cluster executor (Ray) can stand in for :class:`LocalExecutor`.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.machinery
import json
import logging
import multiprocessing
import os
import re
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

__all__ = ["Executor", "Finished", "LocalExecutor", "call_target", "check_target", "sleep_task"]

logger = logging.getLogger(__name__)

_TARGET = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@dataclass(frozen=True)
class Finished:
    """A task that ended: its result, or why it failed.

    Args:
        task_id: The task's id, as submitted.
        ok: Whether the target returned normally.
        error: The child's exception (type, message, traceback), ``"cancelled"``, or how
            the process died; ``None`` when ``ok``.
        result: The dict the target returned (``None`` when it failed or returned nothing).
        seconds: Wall time from submission until the executor saw the task end.
    """

    task_id: int
    ok: bool
    error: str | None
    result: dict[str, Any] | None
    seconds: float


@runtime_checkable
class Executor(Protocol):
    """What the dispatcher needs from a place that runs tasks."""

    def submit(self, task_id: int, target: str, payload: dict[str, Any]) -> None: ...

    def poll(self) -> list[Finished]: ...

    def cancel(self, task_id: int) -> bool: ...

    def running(self) -> set[int]: ...

    def shutdown(self) -> None: ...


def sleep_task(payload: dict[str, Any]) -> dict[str, Any]:
    """A no-op task for tests and benchmarks: sleeps ``payload["seconds"]`` (default 0).

    Returns:
        ``pid`` of the child, and ``started`` / ``finished`` Unix times of the sleep.
    """
    started = time.time()
    time.sleep(float(payload.get("seconds", 0.0)))
    return {"pid": os.getpid(), "started": started, "finished": time.time()}


def check_target(task_id: int, target: str, payload: dict[str, Any]) -> str:
    """``payload`` as JSON once ``target`` and ``payload`` are checked.

    Raises:
        ValueError: When the target is not ``"module:function"``.
        TypeError: When ``payload`` is not a JSON-safe dict.
    """
    if not isinstance(target, str) or not _TARGET.match(target):
        raise ValueError(f"target must be 'package.module:function', got {target!r}")
    if not isinstance(payload, dict):
        raise TypeError(f"payload must be a dict, got {type(payload).__name__}")
    try:
        return json.dumps(payload)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"payload of task {task_id} is not JSON-safe ({exc}): "
            "pass str, numbers, bools, None, lists and dicts"
        ) from exc


def _resolve(target: str) -> Any:
    module_name, _, function_name = target.partition(":")
    function = getattr(importlib.import_module(module_name), function_name, None)
    if not callable(function):
        raise TypeError(f"target {target!r}: {module_name} has no function {function_name!r}")
    return function


def _limit_threads(cpu: int) -> None:
    """Cap this process's compute threads at ``cpu`` (before the target imports torch)."""
    for variable in _THREAD_VARIABLES:
        os.environ[variable] = str(cpu)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        pass
    else:
        threadpool_limits(cpu)  # BLAS already loaded by the forkserver's numpy


def call_target(target: str, payload_json: str) -> tuple[bool, str]:
    """Run ``target(payload)`` here: ``(True, result JSON)`` or ``(False, error text)``.

    What a worker process does with a task, whichever executor started it.
    """
    try:
        payload = json.loads(payload_json)
        cpu = payload.get("cpu")
        if isinstance(cpu, int) and not isinstance(cpu, bool) and cpu >= 1:
            _limit_threads(cpu)
        function = _resolve(target)
        if isinstance(cpu, int) and "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(max(1, cpu))
        result = function(payload)
        if result is not None and not isinstance(result, dict):
            raise TypeError(f"target {target!r} returned {type(result).__name__}, not a dict")
        return True, json.dumps(result)
    except BaseException as exc:  # everything, SystemExit too, goes back to the server
        text = "".join(traceback.format_exception(exc)).rstrip()
        traceback.print_exception(exc)
        return False, f"{type(exc).__name__}: {exc}\n\n{text}"


def _run_child(target: str, payload_json: str, conn: Connection, log_path: str | None) -> None:
    """The child process: run ``target(payload)`` and send ``(ok, result_or_error)`` back."""
    if log_path is not None:
        log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, force=True)
    conn.send(call_target(target, payload_json))
    conn.close()


@dataclass
class _Child:
    process: BaseProcess
    conn: Connection
    started: float


class LocalExecutor:
    """Up to ``max_workers`` tasks at once on this machine, each in its own process.

    Args:
        max_workers: How many tasks may run at once (plan with a matching
            :class:`~medai.service.scheduler.Capacity`).
        log_dir: When given, each task's stdout, stderr and logging go to
            ``log_dir/<task_id>.log``.
        grace_seconds: How long a cancelled task has to exit after SIGTERM before SIGKILL.
        start_method: ``"forkserver"`` (default where available) or ``"spawn"``.

    Example:
        >>> with LocalExecutor(2) as pool:  # doctest: +SKIP
        ...     pool.submit(1, "medai.service.executor:sleep_task", {"seconds": 0.1})
        ...     done = pool.poll()  # later, until task 1 is in it
    """

    def __init__(
        self,
        max_workers: int,
        *,
        log_dir: str | Path | None = None,
        grace_seconds: float = 5.0,
        start_method: str | None = None,
    ) -> None:
        if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
            raise ValueError(f"max_workers must be an int >= 1, got {max_workers!r}")
        if not grace_seconds >= 0:
            raise ValueError(f"grace_seconds must be >= 0, got {grace_seconds!r}")
        methods = multiprocessing.get_all_start_methods()
        if start_method is None:
            start_method = "forkserver" if "forkserver" in methods else "spawn"
        if start_method not in ("forkserver", "spawn") or start_method not in methods:
            raise ValueError(
                f"start_method {start_method!r} is not available here: use one of "
                f"{[m for m in methods if m != 'fork']} (never fork: the server has threads)"
            )
        self.max_workers = max_workers
        self.log_dir = None if log_dir is None else Path(log_dir)
        self.grace_seconds = float(grace_seconds)
        # Any: typeshed types a str-chosen context as BaseContext, which lacks Process.
        self._context: Any = multiprocessing.get_context(start_method)
        if start_method == "forkserver":
            # "__main__" takes effect on Pythons whose forkserver honours it (not 3.11)
            self._context.set_forkserver_preload(["__main__", __name__])
        self._children: dict[int, _Child] = {}
        self._done: list[Finished] = []
        self._lock = threading.RLock()

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def submit(self, task_id: int, target: str, payload: dict[str, Any]) -> None:
        """Start ``target(payload)`` in a new child process now.

        Raises:
            ValueError: When the target is not ``"module:function"``, the task id is
                already running, or all ``max_workers`` are busy.
            TypeError: When ``payload`` is not a JSON-safe dict.
        """
        payload_json = check_target(task_id, target, payload)
        with self._lock:
            if task_id in self._children:
                raise ValueError(f"task {task_id} is already running: submit each task once")
            if len(self._children) >= self.max_workers:
                raise ValueError(
                    f"all {self.max_workers} workers are busy: call poll() and submit after a "
                    f"task ends, or plan with Capacity(cpu_slots={self.max_workers})"
                )
            self._start(task_id, target, payload_json)

    def _start(self, task_id: int, target: str, payload_json: str) -> None:
        log_path = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            log_path = str(self.log_dir / f"{task_id}.log")
        receive, send = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=_run_child,
            args=(target, payload_json, send, log_path),
            name=f"medai-task-{task_id}",
            daemon=True,
        )
        started = time.monotonic()
        with _main_not_rerun():
            process.start()
        send.close()
        self._children[task_id] = _Child(process, receive, started)
        logger.info("task %d started: %s (pid %s)", task_id, target, process.pid)

    def poll(self) -> list[Finished]:
        """The tasks that ended since the last poll (cancelled ones too); never blocks long."""
        with self._lock:
            finished, self._done = self._done, []
            for task_id, child in list(self._children.items()):
                outcome = self._outcome(task_id, child)
                if outcome is not None:
                    del self._children[task_id]
                    finished.append(outcome)
            return finished

    def _outcome(self, task_id: int, child: _Child) -> Finished | None:
        """The task's :class:`Finished` if its child has ended (or sent its result), else None."""
        alive = child.process.is_alive()
        message = _receive(child.conn)  # after the check: an ended child's message is in
        if message is None and alive:
            return None
        child.process.join(timeout=self.grace_seconds)
        if child.process.is_alive():  # sent its result, then hung on the way out
            _stop(child.process, self.grace_seconds)
        child.conn.close()
        seconds = time.monotonic() - child.started
        if message is None:
            error = f"task process died (exit code {child.process.exitcode}) without a result"
            logger.warning("task %d: %s", task_id, error)
            return Finished(task_id, False, error, None, seconds)
        ok, text = message
        if not ok:
            logger.info("task %d failed: %s", task_id, text.splitlines()[0])
            return Finished(task_id, False, text, None, seconds)
        return Finished(task_id, True, None, json.loads(text), seconds)

    def cancel(self, task_id: int) -> bool:
        """Terminate a running task (SIGTERM, then SIGKILL after the grace period).

        Returns:
            Whether the task was running; its ``Finished(ok=False, error="cancelled")``
            comes with the next :meth:`poll`.
        """
        with self._lock:
            child = self._children.pop(task_id, None)
            if child is None:
                return False
            _stop(child.process, self.grace_seconds)
            child.conn.close()
            seconds = time.monotonic() - child.started
            self._done.append(Finished(task_id, False, "cancelled", None, seconds))
            logger.info("task %d cancelled", task_id)
            return True

    def running(self) -> set[int]:
        """The ids of tasks submitted and not yet reported by :meth:`poll`."""
        with self._lock:
            return set(self._children)

    def shutdown(self) -> None:
        """Cancel every running task; results not yet polled are dropped."""
        with self._lock:
            for task_id in list(self._children):
                self.cancel(task_id)
            self._done.clear()


def _receive(conn: Connection) -> tuple[bool, str] | None:
    """The child's ``(ok, text)`` message if it has sent one, without blocking on a silent one."""
    try:
        if conn.poll():
            message: tuple[bool, str] = conn.recv()
            return message
    except (EOFError, OSError):
        pass  # the child died without sending
    return None


@contextlib.contextmanager
def _main_not_rerun() -> Iterator[None]:
    """Start children without re-running a console script's ``__main__`` in each of them.

    multiprocessing re-executes the parent's main script in every child (by path) unless
    the main module's spec names a ``__main__`` module. A console-script wrapper (``medai
    serve``) has no spec, and re-running it imports the whole CLI — about 2 s per task —
    for nothing: targets are imported by name. Only such spec-less mains are touched, and
    only while the child starts.
    """
    main = sys.modules.get("__main__")
    if main is None or getattr(main, "__spec__", None) is not None:
        yield
        return
    main.__spec__ = importlib.machinery.ModuleSpec("__main__", None)
    try:
        yield
    finally:
        main.__spec__ = None


def _stop(process: BaseProcess, grace_seconds: float) -> None:
    """SIGTERM, wait up to ``grace_seconds``, then SIGKILL."""
    process.terminate()
    process.join(timeout=grace_seconds)
    if process.is_alive():
        process.kill()
        process.join()

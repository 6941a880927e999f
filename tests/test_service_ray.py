"""The Ray executor against a real local Ray instance: results, failures, cancel, and the
Executor interface the dispatcher relies on."""

from __future__ import annotations

import os
import time

import pytest

from medai.service.executor import Executor, Finished
from medai.service.executor_ray import RayExecutor

SLEEP = "medai.service.executor:sleep_task"


def _wait(pool: RayExecutor, ids: set[int], seconds: float = 60) -> dict[int, Finished]:
    done: dict[int, Finished] = {}
    deadline = time.monotonic() + seconds
    while set(done) != ids:
        assert time.monotonic() < deadline, f"tasks {ids - set(done)} did not finish"
        done.update({f.task_id: f for f in pool.poll()})
        time.sleep(0.05)
    return done


@pytest.fixture(scope="module")
def pool():  # type: ignore[no-untyped-def]
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private loopback instance
    executor = RayExecutor(num_cpus=2)
    yield executor
    executor.shutdown()


def test_tasks_run_on_ray_workers_and_report_back(pool: RayExecutor) -> None:
    assert isinstance(pool, Executor)
    for task_id in (1, 2, 3):
        pool.submit(task_id, SLEEP, {"seconds": 0.2, "cpu": 1})
    done = _wait(pool, {1, 2, 3})
    assert all(f.ok for f in done.values())
    assert {f.result["pid"] for f in done.values()} - {os.getpid()}  # not in this process
    assert all(f.result["finished"] - f.result["started"] >= 0.2 for f in done.values())


def test_a_failing_target_comes_back_with_its_error(pool: RayExecutor) -> None:
    pool.submit(10, "medai.service.executor:no_such_function", {})
    (finished,) = _wait(pool, {10}).values()
    assert not finished.ok
    assert "has no function 'no_such_function'" in finished.error


def test_cancel_and_bad_submissions(pool: RayExecutor) -> None:
    pool.submit(20, SLEEP, {"seconds": 60})
    assert pool.running() == {20}
    with pytest.raises(ValueError, match="already running"):
        pool.submit(20, SLEEP, {"seconds": 1})
    assert pool.cancel(20)
    assert not pool.cancel(20)
    (finished,) = _wait(pool, {20}).values()
    assert finished.error == "cancelled"
    with pytest.raises(ValueError, match="module:function"):
        pool.submit(21, "not a target", {})
    with pytest.raises(TypeError, match="JSON-safe"):
        pool.submit(22, SLEEP, {"x": object()})

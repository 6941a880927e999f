"""The job scheduler's rules on plain values, and the local executor driving real processes."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterable
from pathlib import Path

import pytest

from medai.service.executor import Executor, Finished, LocalExecutor
from medai.service.scheduler import (
    Allocation,
    Capacity,
    Demand,
    QueuedTask,
    RunningTask,
    backoff_seconds,
    blocked_reason,
    check_demand,
    plan_starts,
)

SLEEP = "medai.service.executor:sleep_task"
POOL = Capacity(cpu_slots=8, gpu_slots=2, memory_gb=64.0)


def _die(payload: dict[str, object]) -> dict[str, object]:
    """A task whose process dies without a result (a crash, as a segfault would)."""
    os._exit(3)


def _threads(payload: dict[str, object]) -> dict[str, object]:
    return {"omp": os.environ.get("OMP_NUM_THREADS")}


def _tasks(user: str, seqs: Iterable[int], demand: Demand = Demand()) -> list[QueuedTask]:
    """Tasks of ``user`` whose ids equal their sequence numbers."""
    return [QueuedTask(s, user, s, demand) for s in seqs]


# --- the scheduler ------------------------------------------------------------------------


def test_a_users_tasks_start_in_submission_order() -> None:
    queued = _tasks("a", [7, 2, 5, 3])
    starts = plan_starts(queued, [], {"a": Allocation(3)}, POOL, now=0.0)
    assert starts == [2, 3, 5]


def test_a_later_task_never_overtakes_a_blocked_head() -> None:
    big = QueuedTask(1, "a", 1, Demand(cpu=2))
    small = QueuedTask(2, "a", 2, Demand(cpu=1))
    running = [RunningTask(0, "a", Demand(cpu=1))]
    # the small task would fit the one free slot, but the older big one comes first
    assert plan_starts([small, big], running, {"a": Allocation(2)}, POOL, now=0.0) == []
    assert plan_starts([small, big], [], {"a": Allocation(2)}, POOL, now=0.0) == [1]


def test_a_head_in_back_off_holds_back_the_users_later_tasks() -> None:
    head = QueuedTask(1, "a", 1, not_before=100.0)
    later = QueuedTask(2, "a", 2)
    allocations = {"a": Allocation(4)}
    assert plan_starts([head, later], [], allocations, POOL, now=99.0) == []
    assert plan_starts([head, later], [], allocations, POOL, now=100.0) == [1, 2]


@pytest.mark.parametrize(
    ("allocation", "demand", "expected"),
    [
        (Allocation(2), Demand(cpu=1), 2),
        (Allocation(8, gpu_slots=1), Demand(cpu=1, gpu=1), 1),
        (Allocation(8, memory_gb=5.0), Demand(cpu=1, memory_gb=2.0), 2),
        (Allocation(5, memory_gb=64.0), Demand(cpu=2, memory_gb=1.0), 2),
    ],
)
def test_a_user_never_exceeds_any_resource_of_the_allocation(
    allocation: Allocation, demand: Demand, expected: int
) -> None:
    queued = _tasks("a", range(6), demand)
    assert len(plan_starts(queued, [], {"a": allocation}, POOL, now=0.0)) == expected
    running = [RunningTask(99, "a", demand)]
    assert len(plan_starts(queued, running, {"a": allocation}, POOL, now=0.0)) == expected - 1


@pytest.mark.parametrize(
    ("capacity", "demand", "expected"),
    [
        (Capacity(3), Demand(cpu=1), 3),
        (Capacity(8, gpu_slots=1), Demand(gpu=1), 1),
        (Capacity(8, memory_gb=7.0), Demand(memory_gb=3.0), 2),
    ],
)
def test_the_pool_capacity_is_never_exceeded(
    capacity: Capacity, demand: Demand, expected: int
) -> None:
    allocations = {u: Allocation(4, gpu_slots=2, memory_gb=32.0) for u in "ab"}
    queued = _tasks("a", range(0, 10, 2), demand) + _tasks("b", range(1, 10, 2), demand)
    assert len(plan_starts(queued, [], allocations, capacity, now=0.0)) == expected


def test_fair_share_gives_each_user_a_slot_before_the_older_user_gets_two() -> None:
    queued = _tasks("a", range(4)) + _tasks("b", range(4, 8))
    allocations = {"a": Allocation(2), "b": Allocation(2)}
    assert plan_starts(queued, [], allocations, Capacity(2), now=0.0) == [0, 4]
    # a's task ended, b's runs: a has the lower share and goes next
    running = [RunningTask(4, "b")]
    queued = _tasks("a", range(1, 4)) + _tasks("b", range(5, 8))
    assert plan_starts(queued, running, allocations, Capacity(2), now=0.0) == [1]


def test_share_is_relative_to_the_allocation_and_ties_go_to_the_oldest_head() -> None:
    # one running task each: a uses 1/4, b 1/2 of its allocation, so a goes first; then
    # both use 1/2 and b's older head goes next
    allocations = {"a": Allocation(4), "b": Allocation(2)}
    running = [RunningTask(90, "a"), RunningTask(91, "b")]
    queued = _tasks("a", [10, 11]) + _tasks("b", [5, 6])
    assert plan_starts(queued, running, allocations, Capacity(4), now=0.0) == [10, 5]


def _simulate(
    queued: list[QueuedTask], allocations: dict[str, Allocation], capacity: Capacity
) -> list[int]:
    """Start order when the oldest running task ends between plans."""
    running: list[RunningTask] = []
    started: list[int] = []
    while queued or running:
        starts = plan_starts(queued, running, allocations, capacity, now=0.0)
        by_id = {t.task_id: t for t in queued}
        running += [RunningTask(i, by_id[i].user, by_id[i].demand) for i in starts]
        queued = [t for t in queued if t.task_id not in starts]
        started += starts
        assert running, "nothing runs and nothing starts: the plan is stuck"
        running.pop(0)
    return started


def test_a_user_with_many_tasks_does_not_starve_a_later_user() -> None:
    queued = _tasks("a", range(50)) + _tasks("b", [50])
    order = _simulate(queued, {"a": Allocation(2), "b": Allocation(2)}, Capacity(2))
    assert order.index(50) == 1  # b's only task takes the second slot at once


def test_a_large_task_is_not_starved_by_a_stream_of_small_ones() -> None:
    # a keeps the pool busy with one-slot tasks; b's three-slot task needs it all
    queued = _tasks("a", [*range(5), *range(6, 40)]) + _tasks("b", [5], Demand(cpu=3))
    order = _simulate(queued, {"a": Allocation(3), "b": Allocation(3)}, Capacity(3))
    assert order.index(5) == 5  # after a's five older tasks, before any younger one


def test_a_user_without_an_allocation_waits_and_is_told_why() -> None:
    queued = _tasks("a", [1]) + _tasks("carol", [0])
    assert plan_starts(queued, [], {"a": Allocation(1)}, POOL, now=0.0) == [1]
    reason = blocked_reason(queued[1], queued, [], {"a": Allocation(1)}, POOL, now=0.0)
    assert reason == "no allocation for user 'carol'"


def test_blocked_reasons_name_what_holds_a_task() -> None:
    allocations = {"a": Allocation(2), "b": Allocation(2)}
    head, later = QueuedTask(12, "a", 1), QueuedTask(13, "a", 2)
    queued = [head, later]
    full = [RunningTask(1, "a"), RunningTask(2, "a")]

    def why(task: QueuedTask, running: list[RunningTask], capacity: Capacity = POOL) -> object:
        return blocked_reason(task, queued, running, allocations, capacity, now=1000.0)

    assert why(later, []) == "waiting for user a's earlier task 12"
    assert why(head, full) == "user allocation full (2/2 CPU slots)"
    assert why(head, [RunningTask(3, "b"), RunningTask(4, "b")], Capacity(2)) == (
        "worker pool full (2/2 CPU slots)"
    )
    assert why(head, []) is None
    waiting = QueuedTask(12, "a", 1, not_before=1030.0)
    reason = blocked_reason(waiting, [waiting], [], allocations, POOL, now=1000.0)
    assert reason == "retry back-off until 1970-01-01T00:17:10+00:00 (30 s from now)"
    huge = QueuedTask(20, "b", 3, Demand(cpu=3))
    assert "can never start" in str(blocked_reason(huge, [huge], [], allocations, POOL, now=0))


def test_check_demand_refuses_a_task_larger_than_the_allocation_or_pool() -> None:
    check_demand(Demand(cpu=2, memory_gb=8.0), Allocation(2, memory_gb=8.0))
    with pytest.raises(ValueError, match="needs 1 GPU slots but the allocation has 0"):
        check_demand(Demand(gpu=1), Allocation(2))
    with pytest.raises(ValueError, match="needs 4 CPU slots but the worker pool has 3"):
        check_demand(Demand(cpu=4), Allocation(8), Capacity(3))
    # and the plan never starts (nor reserves for) such a task
    queued = _tasks("a", [0], Demand(cpu=4)) + _tasks("b", [1])
    allocations = {"a": Allocation(8), "b": Allocation(1)}
    assert plan_starts(queued, [], allocations, Capacity(3), now=0.0) == [1]


def test_backoff_grows_exponentially_up_to_the_cap() -> None:
    assert [backoff_seconds(n) for n in (1, 2, 3, 4)] == [5.0, 10.0, 20.0, 40.0]
    assert backoff_seconds(7) == 300.0
    assert backoff_seconds(1000) == 300.0
    assert backoff_seconds(3, base=1.0, cap=3.0) == 3.0
    with pytest.raises(ValueError, match="attempt must be >= 1"):
        backoff_seconds(0)


def test_values_are_validated_when_built() -> None:
    with pytest.raises(ValueError, match="cpu_slots must be >= 1, got 0"):
        Allocation(0)
    with pytest.raises(ValueError, match="Demand: gpu must be >= 0, got -1"):
        Demand(gpu=-1)
    with pytest.raises(TypeError, match=r"cpu_slots must be an int, got 1\.5"):
        Capacity(1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="memory_gb must be finite"):
        Allocation(1, memory_gb=float("nan"))
    twice = _tasks("a", [1, 1])
    with pytest.raises(ValueError, match="task 1 is given twice"):
        plan_starts(twice, [], {"a": Allocation(1)}, POOL, now=0.0)


# --- the local executor --------------------------------------------------------------------


def _wait(pool: LocalExecutor, count: int = 1, timeout: float = 15.0) -> list[Finished]:
    done: list[Finished] = []
    deadline = time.monotonic() + timeout
    while len(done) < count and time.monotonic() < deadline:
        done += pool.poll()
        time.sleep(0.005)
    return done


def _max_overlap(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in intervals] + [(f, -1) for _, f in intervals])
    level = peak = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    return peak


def test_two_users_keep_their_order_and_allocation_on_a_real_pool() -> None:
    rng = random.Random(13)
    allocations = {"A": Allocation(1), "B": Allocation(2)}
    capacity = Capacity(3, memory_gb=64.0)
    queued = {i: QueuedTask(i, "AB"[i % 2], i) for i in range(40)}
    seconds = {i: rng.uniform(0.05, 0.1) for i in queued}
    running: dict[int, RunningTask] = {}
    finished: dict[int, Finished] = {}
    submitted: list[int] = []
    with LocalExecutor(3) as pool:
        deadline = time.monotonic() + 60
        while (queued or running) and time.monotonic() < deadline:
            for done in pool.poll():
                finished[done.task_id] = done
                del running[done.task_id]
            plan = plan_starts(
                list(queued.values()), list(running.values()), allocations, capacity, now=0
            )
            for task_id in plan:
                task = queued.pop(task_id)
                pool.submit(task_id, SLEEP, {"seconds": seconds[task_id], "cpu": 1})
                running[task_id] = RunningTask(task_id, task.user, task.demand)
                submitted.append(task_id)
            time.sleep(0.002)
    assert len(finished) == 40
    assert all(f.ok for f in finished.values()), [f.error for f in finished.values()]
    for user, limit in (("A", 1), ("B", 2)):
        ids = [i for i in range(40) if i % 2 == "AB".index(user)]
        assert [i for i in submitted if i in ids] == ids  # started in submission order
        results = [finished[i].result for i in ids]
        intervals = [(r["started"], r["finished"]) for r in results if r is not None]
        assert _max_overlap(intervals) == limit  # never more, and the allocation is used
    a_starts = [finished[i].result["started"] for i in range(0, 40, 2)]  # type: ignore[index]
    assert a_starts == sorted(a_starts)  # one at a time, so the children ran in order too
    assert len({f.result["pid"] for f in finished.values() if f.result}) == 40


def test_cancel_terminates_a_running_task() -> None:
    with LocalExecutor(1, grace_seconds=2.0) as pool:
        pool.submit(1, SLEEP, {"seconds": 60})
        assert pool.running() == {1}
        with pytest.raises(ValueError, match="all 1 workers are busy"):
            pool.submit(2, SLEEP, {})
        begun = time.monotonic()
        assert pool.cancel(1) is True
        assert time.monotonic() - begun < 2.0  # SIGTERM sufficed
        assert pool.cancel(1) is False
        (done,) = pool.poll()
        assert pool.running() == set()
    assert (done.task_id, done.ok, done.result) == (1, False, None)
    assert done.error is not None
    assert "cancelled" in done.error


def test_a_failing_or_crashing_task_reports_and_the_pool_goes_on(tmp_path: Path) -> None:
    with LocalExecutor(2, log_dir=tmp_path) as pool:
        assert isinstance(pool, Executor)
        pool.submit(1, SLEEP, {"seconds": "soon"})
        pool.submit(2, f"{__name__}:_die", {})
        done = {f.task_id: f for f in _wait(pool, 2)}
        pool.submit(3, f"{__name__}:_threads", {"cpu": 2})
        (threads,) = _wait(pool)
    assert not done[1].ok
    assert str(done[1].error).startswith("ValueError: could not convert string to float")
    assert "Traceback" in (tmp_path / "1.log").read_text()
    assert not done[2].ok
    assert "exit code 3" in str(done[2].error)
    assert (threads.ok, threads.result) == (True, {"omp": "2"})


def test_submit_refuses_bad_targets_and_payloads() -> None:
    with LocalExecutor(1) as pool:
        with pytest.raises(ValueError, match=r"target must be 'package\.module:function'"):
            pool.submit(1, "medai.service.executor.sleep_task", {})
        with pytest.raises(TypeError, match="not JSON-safe"):
            pool.submit(1, SLEEP, {"when": object()})
        pool.submit(1, "medai.service.executor:no_such_task", {})
        (done,) = _wait(pool)
    assert "has no function 'no_such_task'" in str(done.error)

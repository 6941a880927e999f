"""Which queued tasks start now: per-user allocations, submission order, fair share.

Pure decisions on values — no database, no clock, no processes. The dispatcher reads the
queue and the running tasks from its store, calls :func:`plan_starts` with ``now`` and
hands the returned task ids, in order, to an executor (:mod:`medai.service.executor`).

The rules, for every plan:

1. **Submission order within a user.** A user's tasks start in ``seq`` order; when the
   user's next task cannot start (allocation full, pool full, retry back-off), none of
   their later tasks start.
2. **Allocations.** A user's running plus newly started demand never exceeds their
   :class:`Allocation` in CPU slots, GPU slots or memory. Users without one start nothing.
3. **Fair share.** Repeatedly, the user with the lowest share used (running CPU slots /
   allocated CPU slots) goes next, ties to the oldest head task (lowest ``seq``).
4. **Capacity.** The pool's :class:`Capacity` is never exceeded. When the next user in
   fair-share order is held back only by the pool (their head task needs more than is
   free), what it needs is *reserved*: users after it may only use what is left beyond
   that, so a task that needs several slots is not starved by a stream of small ones.
"""

from __future__ import annotations

import heapq
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

__all__ = [
    "Allocation",
    "Capacity",
    "Demand",
    "QueuedTask",
    "RunningTask",
    "backoff_seconds",
    "blocked_reason",
    "check_demand",
    "plan_starts",
]


def _check_int(owner: str, name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{owner}: {name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{owner}: {name} must be >= {minimum}, got {value}")


def _check_memory(owner: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{owner}: memory_gb must be a number of GB, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{owner}: memory_gb must be finite and >= 0, got {value}")


@dataclass(frozen=True)
class Allocation:
    """What one user may use at once: concurrent CPU slots, GPU slots and memory (GB)."""

    cpu_slots: int
    gpu_slots: int = 0
    memory_gb: float = 8.0

    def __post_init__(self) -> None:
        _check_int("Allocation", "cpu_slots", self.cpu_slots, 1)
        _check_int("Allocation", "gpu_slots", self.gpu_slots, 0)
        _check_memory("Allocation", self.memory_gb)


@dataclass(frozen=True)
class Capacity:
    """What the whole worker pool (the machine, or the cluster) offers at once."""

    cpu_slots: int
    gpu_slots: int = 0
    memory_gb: float = 16.0

    def __post_init__(self) -> None:
        _check_int("Capacity", "cpu_slots", self.cpu_slots, 1)
        _check_int("Capacity", "gpu_slots", self.gpu_slots, 0)
        _check_memory("Capacity", self.memory_gb)


@dataclass(frozen=True)
class Demand:
    """What one task holds while it runs. Every task takes at least one CPU slot."""

    cpu: int = 1
    gpu: int = 0
    memory_gb: float = 2.0

    def __post_init__(self) -> None:
        _check_int("Demand", "cpu", self.cpu, 1)
        _check_int("Demand", "gpu", self.gpu, 0)
        _check_memory("Demand", self.memory_gb)


@dataclass(frozen=True)
class QueuedTask:
    """A task waiting to start.

    Args:
        task_id: The task's id in the store.
        user: Who submitted it; their :class:`Allocation` bounds it.
        seq: Submission sequence number, increasing across all users.
        demand: What it holds while it runs.
        not_before: Earliest start (same clock as ``now``); a retry's back-off.
    """

    task_id: int
    user: str
    seq: int
    demand: Demand = Demand()
    not_before: float = 0.0


@dataclass(frozen=True)
class RunningTask:
    """A task that holds its demand now."""

    task_id: int
    user: str
    demand: Demand = Demand()


@dataclass(frozen=True)
class _Usage:
    """Resources held (or reserved) at once: the sum of some demands."""

    cpu: int = 0
    gpu: int = 0
    memory_gb: float = 0.0

    def plus(self, other: Demand | _Usage) -> _Usage:
        return _Usage(self.cpu + other.cpu, self.gpu + other.gpu, self.memory_gb + other.memory_gb)

    def fits(self, demand: Demand, limit: Allocation | Capacity) -> bool:
        """Whether ``demand`` on top of this usage stays within ``limit``."""
        return not self.over(demand, limit)

    def over(
        self, demand: Demand, limit: Allocation | Capacity
    ) -> list[tuple[str, float, float, float]]:
        """What ``demand`` on top of this usage would exceed: (resource, held, needed, limit)."""
        checks = (
            ("CPU slots", self.cpu, demand.cpu, limit.cpu_slots),
            ("GPU slots", self.gpu, demand.gpu, limit.gpu_slots),
            ("GB memory", self.memory_gb, demand.memory_gb, limit.memory_gb),
        )
        return [c for c in checks if c[1] + c[2] > c[3] + 1e-9]


_NOTHING = _Usage()


def check_demand(demand: Demand, allocation: Allocation, capacity: Capacity | None = None) -> None:
    """Refuse, at submission, a task that could never start under ``allocation`` (or the pool).

    Raises:
        ValueError: When ``demand`` exceeds the user's whole allocation or the pool's whole
            capacity, naming the resource and the fix.
    """
    limits: list[tuple[str, Allocation | Capacity]] = [("allocation", allocation)]
    if capacity is not None:
        limits.append(("worker pool", capacity))
    for what, limit in limits:
        for name, _, needed, total in _NOTHING.over(demand, limit):
            raise ValueError(
                f"the task needs {needed:g} {name} but the {what} has {total:g}: "
                f"submit it with a smaller demand or ask for a larger {what}"
            )


def backoff_seconds(attempt: int, *, base: float = 5.0, cap: float = 300.0) -> float:
    """Wait before retry number ``attempt`` (1 = the first retry): ``base · 2^(attempt-1)``, capped.

    Example:
        >>> [backoff_seconds(n) for n in (1, 2, 3, 8)]
        [5.0, 10.0, 20.0, 300.0]
    """
    _check_int("backoff_seconds", "attempt", attempt, 1)
    if not (base > 0 and cap > 0 and math.isfinite(base) and math.isfinite(cap)):
        raise ValueError(
            f"backoff_seconds: base and cap must be finite and > 0, got {base=}, {cap=}"
        )
    if attempt > 64:  # base · 2**63 is past any sensible cap; no need for huge floats
        return float(cap)
    return float(min(cap, base * 2.0 ** (attempt - 1)))


def _usage(running: Iterable[RunningTask]) -> tuple[dict[str, _Usage], _Usage]:
    """What each user holds, and what the whole pool holds."""
    per_user: dict[str, _Usage] = defaultdict(_Usage)
    pool = _Usage()
    for task in running:
        per_user[task.user] = per_user[task.user].plus(task.demand)
        pool = pool.plus(task.demand)
    return per_user, pool


def _queues(
    queued: Iterable[QueuedTask], running: Iterable[RunningTask]
) -> dict[str, list[QueuedTask]]:
    """Each user's queued tasks in ``seq`` order; a task id given twice is refused."""
    seen = {task.task_id for task in running}
    by_user: dict[str, list[QueuedTask]] = defaultdict(list)
    for task in queued:
        if task.task_id in seen:
            raise ValueError(
                f"task {task.task_id} is given twice (queued twice, or queued and running): "
                "pass each task once"
            )
        seen.add(task.task_id)
        by_user[task.user].append(task)
    for tasks in by_user.values():
        tasks.sort(key=lambda t: (t.seq, t.task_id))
    return by_user


def plan_starts(
    queued: Sequence[QueuedTask],
    running: Sequence[RunningTask],
    allocations: Mapping[str, Allocation],
    capacity: Capacity,
    *,
    now: float,
) -> list[int]:
    """The ids of the queued tasks to start now, in start order (the module's four rules).

    Args:
        queued: Every task waiting to start, in any order.
        running: Every task holding resources now.
        allocations: Each user's :class:`Allocation`; users missing here start nothing.
        capacity: The whole pool's :class:`Capacity`.
        now: The current time, on the clock of ``QueuedTask.not_before``.

    Returns:
        Task ids; starting them in this order keeps every rule.

    Raises:
        ValueError: When a task id is given twice.
    """
    by_user = _queues(queued, running)
    used, pool = _usage(running)
    reserved = _Usage()
    position = dict.fromkeys(by_user, 0)
    heap = [
        (used[user].cpu / allocations[user].cpu_slots, tasks[0].seq, user)
        for user, tasks in by_user.items()
        if user in allocations
    ]
    heapq.heapify(heap)
    starts: list[int] = []
    # Each pop is the user with the lowest share (then the oldest head task). Resources only
    # shrink during a plan, so a user whose head cannot start now is done for this plan.
    while heap:
        _, _, user = heapq.heappop(heap)
        allocation = allocations[user]
        task = by_user[user][position[user]]
        if task.not_before > now or not used[user].fits(task.demand, allocation):
            continue
        if not pool.plus(reserved).fits(task.demand, capacity):
            if _NOTHING.fits(task.demand, capacity):
                reserved = reserved.plus(task.demand)  # held for it: no starving big tasks
            continue
        starts.append(task.task_id)
        used[user] = used[user].plus(task.demand)
        pool = pool.plus(task.demand)
        position[user] += 1
        if position[user] < len(by_user[user]):
            nxt = by_user[user][position[user]].seq
            heapq.heappush(heap, (used[user].cpu / allocation.cpu_slots, nxt, user))
    return starts


def blocked_reason(
    task: QueuedTask,
    queued: Sequence[QueuedTask],
    running: Sequence[RunningTask],
    allocations: Mapping[str, Allocation],
    capacity: Capacity,
    *,
    now: float,
) -> str | None:
    """Why ``task`` cannot start now, in words a UI can show; ``None`` when nothing blocks it.

    ``None`` means the task fits now; it starts at the next plan unless users with a
    lower share, or a reservation for a larger task, come first. ``not_before`` is shown
    as a UTC time, so give it (and ``now``) as Unix seconds.
    """
    allocation = allocations.get(task.user)
    if allocation is None:
        return f"no allocation for user {task.user!r}"
    try:
        check_demand(task.demand, allocation, capacity)
    except ValueError as exc:
        return f"can never start: {exc}"
    mine = [
        t for t in queued if t.user == task.user and (t.seq, t.task_id) < (task.seq, task.task_id)
    ]
    if mine:
        head = min(mine, key=lambda t: (t.seq, t.task_id))
        return f"waiting for user {task.user}'s earlier task {head.task_id}"
    if task.not_before > now:
        until = datetime.fromtimestamp(task.not_before, tz=UTC).isoformat(timespec="seconds")
        return f"retry back-off until {until} ({task.not_before - now:.0f} s from now)"
    used, pool = _usage(running)
    for what, usage, limit in (
        ("user allocation", used[task.user], allocation),
        ("worker pool", pool, capacity),
    ):
        for name, held, needed, total in usage.over(task.demand, limit):
            extra = "" if held >= total else f"; the task needs {needed:g}"
            return f"{what} full ({held:g}/{total:g} {name}{extra})"
    return None

"""Tasks on a Ray cluster: the same targets and payloads as the local pool, run as Ray tasks.

``medai serve --executor ray --ray-address ADDRESS`` joins an existing cluster (``ray start
--head`` on one machine, ``ray start --address …`` on the others); without an address a
local Ray instance is started on this machine (loopback only), which is what the tests do.
Each task asks Ray for its CPU slots, GPU slots and memory, so Ray places it on a node
that has them; the server's own scheduler still decides *when* each user's task may start.
Ray is an optional dependency (``pip install medai[cluster]``).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from medai.errors import ConfigError
from medai.service.executor import Finished, call_target, check_target

__all__ = ["RayExecutor"]

log = logging.getLogger(__name__)


def _ray() -> Any:
    try:
        import ray
    except ImportError as error:
        raise ConfigError(
            "the Ray executor needs Ray: pip install 'medai[cluster]' (or ray==2.60.0)"
        ) from error
    return ray


class RayExecutor:
    """Run tasks as Ray remote functions.

    Args:
        address: A running cluster's address (``ray://host:10001`` or ``host:6379``); None
            starts a private local instance on 127.0.0.1 with ``num_cpus`` CPUs.
        num_cpus: CPUs of the local instance (ignored with an address).
    """

    def __init__(self, address: str | None = None, *, num_cpus: int | None = None) -> None:
        ray = _ray()
        self._started_ray = not ray.is_initialized()
        if self._started_ray:
            options: dict[str, Any] = {
                "include_dashboard": False,
                "log_to_driver": False,
                "configure_logging": False,
            }
            if address:
                ray.init(address=address, **options)
            else:
                ray.init(num_cpus=num_cpus, _node_ip_address="127.0.0.1", **options)
        self._remote = ray.remote(max_retries=0)(call_target)
        self._refs: dict[int, tuple[Any, float]] = {}
        self._done: list[Finished] = []

    def submit(self, task_id: int, target: str, payload: dict[str, Any]) -> None:
        """Start ``target(payload)`` as a Ray task needing the payload's cpu/gpu/memory_gb."""
        payload_json = check_target(task_id, target, payload)
        if task_id in self._refs:
            raise ValueError(f"task {task_id} is already running: submit each task once")
        resources: dict[str, Any] = {"num_cpus": int(payload.get("cpu", 1) or 1)}
        if payload.get("gpu"):
            resources["num_gpus"] = int(payload["gpu"])
        if payload.get("memory_gb"):
            resources["memory"] = int(float(payload["memory_gb"]) * 1024**3)
        ref = self._remote.options(**resources).remote(target, payload_json)
        self._refs[task_id] = (ref, time.monotonic())
        log.info("task %d submitted to Ray: %s", task_id, target)

    def poll(self) -> list[Finished]:
        """The tasks that ended since the last poll; never blocks."""
        ray = _ray()
        finished, self._done = self._done, []
        if not self._refs:
            return finished
        ids = {ref: task_id for task_id, (ref, _) in self._refs.items()}
        ready, _ = ray.wait(list(ids), num_returns=len(ids), timeout=0)
        for ref in ready:
            task_id = ids[ref]
            _, started = self._refs.pop(task_id)
            seconds = time.monotonic() - started
            try:
                ok, text = ray.get(ref)
            except Exception as error:  # the worker died, or Ray lost the task
                error_text = f"Ray task failed: {error}"
                finished.append(Finished(task_id, False, error_text, None, seconds))
                continue
            result = json.loads(text) if ok else None
            finished.append(Finished(task_id, ok, None if ok else text, result, seconds))
        return finished

    def cancel(self, task_id: int) -> bool:
        """Cancel a running task (force-kills its worker); reported by the next :meth:`poll`."""
        entry = self._refs.pop(task_id, None)
        if entry is None:
            return False
        ref, started = entry
        _ray().cancel(ref, force=True)
        self._done.append(Finished(task_id, False, "cancelled", None, time.monotonic() - started))
        return True

    def running(self) -> set[int]:
        return set(self._refs)

    def shutdown(self) -> None:
        """Cancel every running task; stop the local Ray instance if this executor started it."""
        for task_id in list(self._refs):
            self.cancel(task_id)
        self._done.clear()
        if self._started_ray:
            _ray().shutdown()

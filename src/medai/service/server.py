"""The ``medai serve`` process: the index, the DICOM listener, the dispatcher and the API.

:func:`serve` opens the root, removes what an interrupted write left, starts the DICOM
listener and the dispatcher in background threads and runs the API (uvicorn) in the
calling thread until SIGTERM or SIGINT; then everything stops in reverse order. Once the
API listens, ``ROOT/server.json`` (written atomically) says where: the process id and the
ports actually bound (a port of 0 in the settings picks a free one).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

import uvicorn

from medai.fsutil import atomic_write_text
from medai.service.app import create_app
from medai.service.config import ServiceConfig
from medai.service.context import open_context
from medai.service.dispatcher import Dispatcher
from medai.service.scp import StorageListener

__all__ = ["SERVER_FILE", "serve", "server_info"]

log = logging.getLogger(__name__)

SERVER_FILE = "server.json"
_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class _Stoppable(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...


class _Server(uvicorn.Server):
    """uvicorn's server, announcing the bound port in ``server.json`` once it listens."""

    def __init__(self, config: uvicorn.Config, announce: Any) -> None:
        super().__init__(config)
        self._announce = announce

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and self.servers:
            self._announce(int(self.servers[0].sockets[0].getsockname()[1]))


def server_info(root: str | Path) -> dict[str, Any] | None:
    """What a running server announced in ``ROOT/server.json`` (None if nothing)."""
    path = Path(root) / SERVER_FILE
    try:
        info: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return info


def serve(config: ServiceConfig) -> None:
    """Run the service on ``config`` until SIGTERM or SIGINT; returns after a clean stop.

    Raises:
        ConfigError: The settings or the index cannot be used.
        OSError: A port cannot be bound.
    """
    context = open_context(config)
    stopping: list[_Stoppable] = []
    info_path = config.root / SERVER_FILE
    info_path.unlink(missing_ok=True)
    previous = {sig: signal.getsignal(sig) for sig in _SIGNALS}
    try:
        context.archive.sweep()
        dicom_port = None
        if config.dicom_port is not None:
            listener = StorageListener(context)
            listener.start()
            stopping.append(listener)
            dicom_port = listener.port
        dispatcher = Dispatcher(context)
        dispatcher.start()
        stopping.append(dispatcher)

        def announce(http_port: int) -> None:
            info = {"pid": os.getpid(), "host": config.host, "http_port": http_port,
                    "dicom_port": dicom_port, "ae_title": config.ae_title}  # fmt: skip
            atomic_write_text(info_path, json.dumps(info))
            log.info("medai serve: API on %s:%d, DICOM on %s", config.host, http_port, dicom_port)

        server = _Server(
            uvicorn.Config(
                create_app(context), host=config.host, port=config.port, lifespan="off",
                log_config=None, access_log=False,
            ),
            announce,
        )  # fmt: skip
        main = threading.current_thread() is threading.main_thread()
        for sig in _SIGNALS if main else ():  # uvicorn re-raises the signal it stopped on
            signal.signal(sig, _note_signal)
        server.run()
    finally:
        for part in reversed(stopping):
            part.stop()
        info_path.unlink(missing_ok=True)
        context.close()
        if threading.current_thread() is threading.main_thread():
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        log.info("medai serve stopped")


def _note_signal(signum: int, _frame: FrameType | None) -> None:
    log.info("received signal %d after shutdown", signum)

"""The DICOM listener of ``medai serve``: C-ECHO and C-STORE, one AE title per project.

The CALLED AE title picks the project; the CALLING AE title must be one of the project's
callers. Anything else is refused at association time (A-ASSOCIATE-RJ, "called AE title
not recognised" or "calling AE title not recognised"), logged and audited, before a byte
of a dataset is read. One index query per association decides it.

Statuses of a C-STORE (PS3.4 B.2.3):

- ``0x0000`` once :meth:`Archive.store` returned, i.e. after the file is on disk and its
  row committed. A duplicate (the same bytes again) and a conflict (the same SOP Instance
  UID with other bytes: kept aside, logged and listed in the index) are ``0x0000`` too:
  the instance *is* safely kept, and the warnings PS3.4 defines in the ``0xB0xx`` range
  (coercion, elements discarded, SOP class mismatch) would tell the sender something
  untrue, while senders treat them inconsistently (some retry, some stop).
- ``0xA900`` (data set does not match the SOP class) for an instance the archive refuses
  (not DICOM, missing or malformed UIDs), the reason in ErrorComment.
- ``0xA700`` (out of resources) when the archive could not store it (disk, index); the
  sender keeps the instance and may send it again.

Each association is audited once when it closes ("store", with counts), never per
instance, so a study costs no extra index round trips beyond the stores themselves.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy import select

from medai.service.archive import InstanceRejectedError, StoreStatus
from medai.service.auth import audit
from medai.service.context import ServiceContext
from medai.service.db import Caller, Project

__all__ = [
    "STATUS_CANNOT_STORE",
    "STATUS_REJECTED",
    "STATUS_SUCCESS",
    "StorageListener",
]

log = logging.getLogger(__name__)

STATUS_SUCCESS = 0x0000
STATUS_REJECTED = 0xA900  # Error: data set does not match SOP class
STATUS_CANNOT_STORE = 0xA700  # Refused: out of resources
_REJECT_PERMANENT, _REJECT_TRANSIENT, _SOURCE_USER = 0x01, 0x02, 0x01
_NO_REASON, _CALLING_UNKNOWN, _CALLED_UNKNOWN = 0x01, 0x03, 0x07
_MAX_COMMENT = 64  # ErrorComment is LO
_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)  # Linux only


@dataclass
class _Session:
    """What an accepted association is doing: its project and what it sent."""

    project: Project
    calling: str
    counts: Counter[str] = field(default_factory=Counter)


def _status(code: int, comment: str = "") -> Dataset:
    status = Dataset()
    status.Status = code
    if comment:
        status.ErrorComment = comment[:_MAX_COMMENT]
    return status


def _no_delay(event: Event) -> None:
    """Send each response at once: with Nagle's algorithm a C-STORE-RSP waits for the
    sender's delayed ACK (about 40 ms a round trip on Linux loopback)."""
    transport = event.assoc.dul.socket
    if transport is not None and transport.socket is not None:
        transport.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _quick_ack(event: Event) -> None:
    """Acknowledge each PDU at once. A sender with Nagle's algorithm on (pynetdicom's,
    dcmtk's by default) holds the data set PDU of a C-STORE until the command PDU is
    acknowledged, and Linux delays that ACK by up to 40 ms: 20 instances/s instead of
    hundreds. The kernel clears TCP_QUICKACK again by itself, so it is set per PDU."""
    transport = event.assoc.dul.socket
    if _QUICKACK is not None and transport is not None and transport.socket is not None:
        transport.socket.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)


def _reject(assoc: Association, result: int, diagnostic: int) -> None:
    """Send A-ASSOCIATE-RJ and wait until it is out (as pynetdicom's own refusals do)."""
    assoc.acse.send_reject(result, _SOURCE_USER, diagnostic)
    assoc.kill()


class StorageListener:
    """A pynetdicom storage and verification SCP that archives into a service context.

    Args:
        context: The opened service (its config gives host, ``dicom_port``, AE title).

    Example:
        >>> listener = StorageListener(context)  # doctest: +SKIP
        >>> listener.start(); listener.port  # doctest: +SKIP
        11112
    """

    def __init__(self, context: ServiceContext) -> None:
        self.context = context
        self._server: ThreadedAssociationServer | None = None
        self._sessions: dict[int, _Session] = {}
        self._lock = threading.Lock()
        self.ae = AE(ae_title=context.config.ae_title)
        self.ae.maximum_pdu_size = 0  # no limit: fewer, larger P-DATA PDUs
        self.ae.maximum_associations = 32
        self.ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
        for cx in AllStoragePresentationContexts:
            self.ae.add_supported_context(str(cx.abstract_syntax), ALL_TRANSFER_SYNTAXES)

    @property
    def port(self) -> int:
        """The bound port (the real one when ``dicom_port`` was 0)."""
        if self._server is None:
            raise RuntimeError("the DICOM listener is not started; call start() first")
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Bind to ``config.host:config.dicom_port`` and serve in background threads."""
        config = self.context.config
        if config.dicom_port is None:
            raise ValueError("dicom_port is None: set dicom_port in service.yaml to listen")
        handlers: list[Any] = [
            (evt.EVT_CONN_OPEN, _no_delay),
            (evt.EVT_DATA_RECV, _quick_ack),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_CONN_CLOSE, self._on_close),
        ]
        self._server = self.ae.start_server(
            (config.host, config.dicom_port), block=False, evt_handlers=handlers
        )
        log.info("DICOM listener on %s:%d", config.host, self.port)

    def stop(self) -> None:
        """Stop accepting; associations in progress are ended."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        self.ae.shutdown()

    def _on_requested(self, event: Event) -> None:
        """Accept the association only for a project's AE title from one of its callers."""
        assoc = event.assoc
        primitive = assoc.requestor.primitive
        called = str(primitive.called_ae_title if primitive else "").strip()
        calling = str(primitive.calling_ae_title if primitive else "").strip()
        try:
            project, known_caller = self._lookup(called, calling)
        except Exception:  # the index is unavailable: refuse for now, the sender retries
            log.exception("could not check the DICOM association from %s to %s", calling, called)
            _reject(assoc, _REJECT_TRANSIENT, _NO_REASON)
            return
        if project is not None and known_caller:
            with self._lock:
                self._sessions[id(assoc)] = _Session(project, calling)
            return
        reason = _CALLED_UNKNOWN if project is None else _CALLING_UNKNOWN
        what = "called AE title" if project is None else "calling AE title"
        log.warning(
            "refused DICOM association from %s (%s) to %s: %s not recognised",
            calling, assoc.requestor.address, called, what,
        )  # fmt: skip
        with self.context.factory() as session:
            audit(
                session, calling or "?", "refuse", project_id=project.id if project else None,
                target=f"dicom:{called}", reason=f"{what} not recognised",
                address=str(assoc.requestor.address),
            )  # fmt: skip
            session.commit()
        _reject(assoc, _REJECT_PERMANENT, reason)

    def _lookup(self, called: str, calling: str) -> tuple[Project | None, bool]:
        """The project whose AE title is ``called``, and whether it accepts ``calling``."""
        with self.context.factory() as session:
            project = session.scalar(select(Project).where(Project.ae_title == called))
            if project is None:
                return None, False
            caller = session.scalar(
                select(Caller.id).where(Caller.project_id == project.id, Caller.ae_title == calling)
            )
            return project, caller is not None

    def _session(self, assoc: Association) -> _Session | None:
        with self._lock:
            return self._sessions.get(id(assoc))

    def _on_echo(self, event: Event) -> int:
        return STATUS_SUCCESS if self._session(event.assoc) is not None else 0x0122

    def _on_store(self, event: Event) -> Dataset:
        """Store one instance; success only after the store returned (file and row durable)."""
        state = self._session(event.assoc)
        if state is None:  # cannot happen: refused associations never reach a C-STORE
            return _status(STATUS_CANNOT_STORE, "association has no project")
        try:
            stored = self.context.archive.store(state.project, event.encoded_dataset())
        except InstanceRejectedError as error:
            state.counts["rejected"] += 1
            log.warning("rejected an instance from %s: %s", state.calling, error)
            return _status(STATUS_REJECTED, str(error))
        except Exception as error:  # disk full, index unavailable: the sender keeps it
            state.counts["failed"] += 1
            log.exception("could not store an instance from %s", state.calling)
            return _status(STATUS_CANNOT_STORE, f"not stored, send again: {error}")
        state.counts[stored.status.value] += 1
        return _status(STATUS_SUCCESS)

    def _on_close(self, event: Event) -> None:
        """Audit what the association stored, once (associations without stores too)."""
        with self._lock:
            state = self._sessions.pop(id(event.assoc), None)
        if state is None:
            return
        counts = {status.value: state.counts.get(status.value, 0) for status in StoreStatus}
        counts.update({k: state.counts.get(k, 0) for k in ("rejected", "failed")})
        try:
            with self.context.factory() as session:
                audit(
                    session, state.calling, "store" if sum(counts.values()) else "echo",
                    project_id=state.project.id, target=f"dicom:{state.project.ae_title}",
                    **counts,
                )  # fmt: skip
                session.commit()
        except Exception:  # the stores are committed; a lost audit line must not crash
            log.exception("could not audit the association from %s", state.calling)

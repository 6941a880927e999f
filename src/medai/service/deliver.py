"""Send DICOM results to archive nodes: C-STORE (pynetdicom) or STOW-RS, with retries.

The dispatcher records one :class:`~medai.service.db.Delivery` row per DICOM output and
configured destination. :func:`send_pending` sends those that are due (state
``pending`` or ``retrying`` and ``not_before`` ≤ now): one association (or one HTTP
request per instance) per destination and call. Success marks a delivery ``sent``; a
failure counts an attempt and waits an exponential back-off, and after the
destination's ``max_attempts`` the delivery is ``failed``, its last error kept. Every
attempt is audited (action ``export``) under the name of the user whose task made the
file. Files are found through the index only (``Output.path`` under the results root).
"""

from __future__ import annotations

import logging
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import pydicom
from pynetdicom import AE
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from medai.service.auth import audit
from medai.service.config import Destination
from medai.service.context import ServiceContext
from medai.service.db import Delivery, Output, Task, User, session_scope, utcnow

__all__ = [
    "DeliveryOutcome",
    "DeliveryState",
    "backoff_seconds",
    "send_pending",
    "store_dimse",
    "store_stow",
]

logger = logging.getLogger(__name__)

#: C-STORE status codes that mean "stored" (success and the warnings of PS3.4 B.2.3).
_STORED = frozenset({0x0000, 0x0001, 0x0107, 0x0116, 0xB000, 0xB006, 0xB007})


class DeliveryState:
    """The states of a delivery (strings in the database)."""

    PENDING = "pending"
    RETRYING = "retrying"
    SENT = "sent"
    FAILED = "failed"
    DUE = frozenset({PENDING, RETRYING})


@dataclass(frozen=True)
class DeliveryOutcome:
    """What one attempt did: the delivery, where to, its new state and the error if any."""

    delivery_id: int
    destination: str
    sop_uid: str | None
    state: str
    attempts: int
    error: str | None = None


def backoff_seconds(attempts: int, *, base: float = 10.0, cap: float = 900.0) -> float:
    """The wait after ``attempts`` failed attempts: ``base * 2**(attempts - 1)``, capped."""
    return min(cap, base * 2.0 ** max(0, attempts - 1))


@dataclass(frozen=True)
class _Item:
    delivery_id: int
    path: Path
    sop_uid: str | None
    actor: str
    project_id: int


def store_dimse(
    destination: Destination, files: Sequence[Path], *, calling_ae: str, timeout_s: float = 10.0
) -> list[str | None]:
    """C-STORE ``files`` to ``destination`` over one association.

    Returns:
        Per file, ``None`` when stored, else the reason it was not.
    """
    where = f"{destination.ae_title}@{destination.host}:{destination.port}"
    try:  # pynetdicom leaks its socket when the connection is refused: probe first
        socket.create_connection((destination.host, destination.port), timeout=timeout_s).close()
    except OSError as error:
        return [f"{where} not reachable: {error}"] * len(files)
    datasets = [pydicom.dcmread(path) for path in files]
    ae = AE(ae_title=calling_ae)
    for attribute in ("acse_timeout", "dimse_timeout", "network_timeout", "connection_timeout"):
        setattr(ae, attribute, timeout_s)
    contexts = sorted({(str(d.SOPClassUID), str(d.file_meta.TransferSyntaxUID)) for d in datasets})
    for sop_class, syntax in contexts:
        ae.add_requested_context(sop_class, [syntax])
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    if not assoc.is_established:
        reason = "rejected" if assoc.is_rejected else "not reachable (or aborted)"
        return [f"association with {where} {reason}"] * len(files)
    results: list[str | None] = []
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            code = int(getattr(status, "Status", -1)) if status else -1
            if code in _STORED:
                results.append(None)
            else:
                what = "no response" if code < 0 else f"status 0x{code:04X}"
                results.append(f"C-STORE to {destination.ae_title} failed: {what}")
    finally:
        assoc.release()
    return results


def _multipart(files: Sequence[Path], boundary: str) -> bytes:
    parts = []
    for path in files:
        parts.append(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode())
        parts.append(path.read_bytes())
        parts.append(b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts)


def store_stow(
    destination: Destination, files: Sequence[Path], *, timeout_s: float = 10.0
) -> list[str | None]:
    """STOW-RS ``files`` to ``destination.url`` + ``/studies``, one request per file.

    Returns:
        Per file, ``None`` when stored (HTTP 200), else the reason it was not.
    """
    if not destination.url:
        return [f"destination {destination.name} uses stow but has no url"] * len(files)
    url = destination.url.rstrip("/") + "/studies"
    results: list[str | None] = []
    with httpx.Client(timeout=timeout_s) as client:
        for path in files:
            boundary = uuid.uuid4().hex
            headers = {
                "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                "Accept": "application/dicom+json",
            }
            try:
                response = client.post(url, content=_multipart([path], boundary), headers=headers)
            except httpx.HTTPError as error:
                results.append(f"STOW-RS to {url} failed: {type(error).__name__}: {error}")
                continue
            if response.status_code == 200:
                results.append(None)
            else:
                text = response.text[:200].strip()
                results.append(f"STOW-RS to {url} answered HTTP {response.status_code}: {text}")
    return results


def _due(session: Session, now: float) -> list[Delivery]:
    query = (
        select(Delivery)
        .where(Delivery.state.in_(DeliveryState.DUE))
        .where(or_(Delivery.not_before <= now, Delivery.not_before.is_(None)))
        .order_by(Delivery.id)
    )
    return list(session.scalars(query))


def _item(session: Session, delivery: Delivery, results_root: Path) -> _Item:
    output = session.get_one(Output, delivery.output_id)
    task = session.get_one(Task, output.task_id)
    user = session.get(User, task.user_id)
    path = (results_root / output.path).resolve()
    if not path.is_relative_to(results_root.resolve()):
        raise ValueError(f"output {output.id} path {output.path!r} leaves the results folder")
    actor = user.name if user is not None else "service"
    return _Item(delivery.id, path, output.sop_uid, actor, task.project_id)


def _record(
    session: Session, delivery: Delivery, item: _Item, error: str | None, now: float,
    destination: Destination,
) -> DeliveryOutcome:  # fmt: skip
    delivery.attempts += 1
    if error is None:
        delivery.state, delivery.sent_at, delivery.error = DeliveryState.SENT, utcnow(), None
    elif delivery.attempts >= destination.max_attempts:
        delivery.state, delivery.error = DeliveryState.FAILED, error
    else:
        delivery.state, delivery.error = DeliveryState.RETRYING, error
        delivery.not_before = now + backoff_seconds(delivery.attempts)
    audit(
        session, item.actor, "export", project_id=item.project_id, target=item.sop_uid or "",
        destination=destination.name, protocol=destination.protocol, state=delivery.state,
        attempt=delivery.attempts, error=error,
    )  # fmt: skip
    if error is not None:
        logger.warning("delivery %d to %s: %s", delivery.id, destination.name, error)
    return DeliveryOutcome(
        delivery.id, destination.name, item.sop_uid, delivery.state, delivery.attempts, error
    )


def send_pending(
    context: ServiceContext, *, now: float, timeout_s: float = 10.0
) -> list[DeliveryOutcome]:
    """Send every due delivery and record each attempt (one transaction per destination).

    Args:
        context: The service (its config names the destinations and the calling AE).
        now: The current Unix time (the clock of ``Delivery.not_before``).
        timeout_s: Connection and response timeout of each association or request.

    Returns:
        One outcome per delivery attempted, in delivery order within each destination.
    """
    config = context.config
    with context.factory() as session:
        due = _due(session, now)
        by_destination: dict[str, list[int]] = {}
        for delivery in due:
            by_destination.setdefault(delivery.destination, []).append(delivery.id)
    outcomes: list[DeliveryOutcome] = []
    for name, ids in by_destination.items():
        with session_scope(context.factory) as session:
            deliveries = [session.get_one(Delivery, i) for i in ids]
            try:
                destination = config.destination(name)
            except ValueError as error:
                fallback = Destination(name=name, max_attempts=1)
                items = [_item(session, d, config.results) for d in deliveries]
                outcomes += [
                    _record(session, d, it, str(error), now, fallback)
                    for d, it in zip(deliveries, items, strict=True)
                ]
                continue
            items = [_item(session, d, config.results) for d in deliveries]
            errors = _send(destination, [it.path for it in items], config.ae_title, timeout_s)
            outcomes += [
                _record(session, d, it, err, now, destination)
                for d, it, err in zip(deliveries, items, errors, strict=True)
            ]
    return outcomes


def _send(
    destination: Destination, files: Sequence[Path], calling_ae: str, timeout_s: float
) -> list[str | None]:
    """Send ``files``; a file that is missing or unreadable fails alone."""
    readable = [p for p in files if p.is_file()]
    sent: dict[Path, str | None] = {p: f"output file {p.name} is missing" for p in files}
    if readable:
        try:
            if destination.protocol == "dimse":
                got = store_dimse(destination, readable, calling_ae=calling_ae, timeout_s=timeout_s)
            else:
                got = store_stow(destination, readable, timeout_s=timeout_s)
        except Exception as error:  # an attempt fails; it never stops the dispatcher
            got = [f"{type(error).__name__}: {error}"] * len(readable)
        sent.update(zip(readable, got, strict=True))
    return [sent[p] for p in files]

"""The service's security, route by route: a walk over the OpenAPI route list.

For every operation the served ``/openapi.json`` lists (a route added later is walked
too; one whose path parameter the walk cannot fill fails the walk):

- no token, or an unknown one, is 401 — also with an empty or malformed JSON body;
- a user of another project (eve) is 403 on every ``{project}`` route — also with a bad
  body or bad ids; the routes without a project show her nothing of ``glioma``;
- the admin gets every GET with real ids as 2xx, and nothing anywhere as 5xx;
- path-traversal values (``..``, ``../../etc/passwd``, ``%2e%2e%2f``, absolute paths,
  backslashes, NUL) in every path parameter are 4xx, sent byte for byte as written
  (``http.client``, which, unlike httpx, leaves dot segments alone).

The OpenAPI documents (``/openapi.json``, ``/docs``, ``/redoc``) stay public: they
describe the routes and hold no data (checked: no project, patient, UID or token in them);
every other route of the application is in the spec, so the walk covers it.

Covered elsewhere: the upload limit (413 with and without Content-Length) in
``test_service_dicomweb.py::test_upload_limit_with_and_without_content_length``; unknown
calling and called AE titles refused (A-ASSOCIATE-RJ, audited, nothing stored) in
``test_service_scp.py::test_unknown_ae_titles_are_rejected_and_nothing_stored``; tokens
hashed at rest in ``test_service_archive.py``.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import iter_route_contexts
from sqlalchemy import select
from sqlalchemy.orm import Session

from _service import STUDY_UID, api_server, bearer, phantom_study, populate, service_context
from medai.service.app import create_app
from medai.service.archive import complete_quiet_studies
from medai.service.context import ServiceContext
from medai.service.db import AuditEntry, Instance, Job, Project, Series, Task, TaskState, User
from medai.service.deps import SESSION_COOKIE
from medai.service.dispatcher import Dispatcher
from medai.service.jobs import submit_job

SELECTION = 'select study where has series flair (SeriesDescription = "FLAIR")'
METHODS = ("get", "post", "put", "patch", "delete")
PUBLIC = {  # no login needed: the OpenAPI documents, the UI's login, logout and static files
    "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc", "/ui/login", "/ui/logout",
    "/ui/static",
}  # fmt: skip
BODIES = {  # valid bodies of the known request schemas; others are built from the schema
    "DryRunBody": {"text": SELECTION},
    "JobBody": {"kind": "noop", "selection": SELECTION},
}
TRAVERSAL = [
    "..", ".", "../..", "../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "%2e%2e",
    "%2e%2e%2f%2e%2e%2fetc%2fpasswd", "%252e%252e%252fetc%252fpasswd", "/etc/passwd",
    "%2Fetc%2Fpasswd", "%00", "inputs.json%00.png", "..%5C..%5Cwindows%5Cwin.ini",
    "C:%5Cwindows%5Cwin.ini", "~root", "a" * 3000,
]  # fmt: skip


@dataclass(frozen=True)
class Operation:
    """One method on one path of the application (of the OpenAPI spec, or a UI page)."""

    method: str
    path: str
    body_schema: str | None  # the name of its JSON request body's schema, if it has one
    ui: bool = False  # outside the OpenAPI spec: a web UI page (login redirect, cookie)

    @property
    def parameters(self) -> list[str]:
        return [part[1:-1] for part in self.path.split("/") if part.startswith("{")]

    def __str__(self) -> str:
        return f"{self.method.upper()} {self.path}"


@dataclass(frozen=True)
class Walk:
    """A served, populated service and what a walk needs to fill every route."""

    context: ServiceContext
    client: httpx.Client
    tokens: dict[str, str]
    values: dict[str, str]  # a real value for every path parameter name
    spec: dict[str, Any]
    files: dict[str, list[Path]]
    routes: list[tuple[str, list[str]]]  # every route of the app: path, methods

    @property
    def operations(self) -> list[Operation]:
        found = []
        for path, item in self.spec["paths"].items():
            for method in METHODS:
                if method in item:
                    found.append(Operation(method, path, _body_schema(item[method])))
        for path, methods in self.routes:
            if path not in self.spec["paths"] and path not in PUBLIC:
                found += [Operation(m, path, None, ui=True) for m in methods if m in METHODS]
        return found

    def url(self, operation: Operation, **override: str) -> str:
        values = self.values | override
        unknown = [p for p in operation.parameters if p not in values]
        if unknown:
            pytest.fail(
                f"{operation} has path parameter(s) {unknown} the security walk cannot fill: "
                "add a real value for them to the walk's values"
            )
        return operation.path.format(**{p: values[p] for p in operation.parameters})

    def body(self, operation: Operation) -> Any:
        if operation.body_schema is None:
            return None
        if operation.body_schema in BODIES:
            return BODIES[operation.body_schema]
        return _example(self.spec["components"]["schemas"][operation.body_schema])

    def send(
        self, operation: Operation, token: str | None, *, content: bytes | None = None,
        **override: str,
    ) -> httpx.Response:  # fmt: skip
        """``operation`` with ``token``; the valid body unless ``content`` (as JSON) is given."""
        headers = _credentials(token)
        if content is None and operation.body_schema is not None:
            content = json.dumps(self.body(operation)).encode()
        if content is not None:
            headers["Content-Type"] = "application/json"
        url = self.url(operation, **override)
        self.client.cookies.clear()  # only the credentials given here
        return self.client.request(operation.method, url, headers=headers, content=content)


def _credentials(token: str | None) -> dict[str, str]:
    """The token as the API takes it (bearer) and as the web UI does (its login cookie)."""
    return bearer(token) | {"Cookie": f"{SESSION_COOKIE}={token}"} if token else {}


def _app_routes(context: ServiceContext) -> list[tuple[str, list[str]]]:
    """Every route of the application (included routers flattened, mounts without methods)."""
    found = []
    for route in iter_route_contexts(create_app(context).routes):
        methods = getattr(route.original_route, "methods", None) or []
        found.append((str(route.path), sorted(m.lower() for m in methods)))
    return found


def _body_schema(operation: dict[str, Any]) -> str | None:
    content = operation.get("requestBody", {}).get("content", {})
    schema = content.get("application/json", {}).get("schema")
    if schema is None:
        return None
    return str(schema["$ref"]).rsplit("/", 1)[-1]


def _example(schema: dict[str, Any]) -> dict[str, Any]:
    """The required fields of an object schema with a plain value of their type."""
    plain = {"string": "x", "integer": 1, "number": 1.0, "boolean": False, "object": {}}
    properties = schema.get("properties", {})
    return {
        name: plain.get(properties.get(name, {}).get("type", "string"), "x")
        for name in schema.get("required", [])
    }


def _user(session: Session, name: str) -> User:
    return session.scalars(select(User).where(User.name == name)).one()


def _all_done(context: ServiceContext) -> bool:
    with context.factory() as session:
        return all(t.state == TaskState.DONE for t in session.scalars(select(Task)))


def _store_and_run(context: ServiceContext, files: dict[str, list[Path]]) -> None:
    """Store the phantom study, then run one noop job (alice's) to its outputs."""
    with context.factory() as session:
        project = session.scalars(select(Project).where(Project.name == "glioma")).one()
    for paths in files.values():
        for path in paths:
            context.archive.store(project, path.read_bytes())
    with context.factory() as session:
        complete_quiet_studies(session, quiet_seconds=0.0)
        submit_job(session, _user(session, "alice"), project, "noop", SELECTION)
        session.commit()
    dispatcher = Dispatcher(context)
    deadline = time.monotonic() + 30
    try:
        while not _all_done(context):
            if time.monotonic() > deadline:
                raise AssertionError("the noop job did not finish in 30 s")
            dispatcher.step()
            time.sleep(0.02)
    finally:
        dispatcher.stop()


def _values(context: ServiceContext) -> dict[str, str]:
    """A real value for every path parameter: the job, task, output and stored UIDs."""
    with context.factory() as session:
        job = session.scalars(select(Job)).one()
        task = session.scalars(select(Task)).one()
        series = session.scalars(select(Series).order_by(Series.id)).first()
        assert series is not None
        instance = session.scalars(
            select(Instance).where(Instance.series_id == series.id).order_by(Instance.id)
        ).first()
        assert instance is not None
        return {
            "project": "glioma", "job_id": str(job.id), "task_id": str(task.id),
            "name": "inputs.json", "study": STUDY_UID, "series": series.series_uid,
            "instance": instance.sop_uid, "series_uid": series.series_uid,
        }  # fmt: skip


@pytest.fixture(scope="module")
def walk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Walk]:
    folder = tmp_path_factory.mktemp("security")
    context = service_context(folder / "svc", workers=1, quiet_seconds=0.0)
    try:
        tokens = populate(context)
        files = phantom_study(folder / "dicom", shape=(24, 26, 6))
        _store_and_run(context, files)
        with api_server(context) as client:
            spec = client.get("/openapi.json").json()
            routes = _app_routes(context)
            yield Walk(context, client, tokens, _values(context), spec, files, routes)
    finally:
        context.close()


def _raw(walk: Walk, method: str, target: str, token: str, body: Any) -> tuple[int, bytes]:
    """One request with ``target`` sent exactly as written (no dot-segment removal)."""
    port = httpx.URL(str(walk.client.base_url)).port
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = _credentials(token)
    content = None if body is None else json.dumps(body).encode()
    if content is not None:
        headers["Content-Type"] = "application/json"
    try:
        connection.request(method.upper(), target, body=content, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _report(failures: list[str]) -> str:
    return f"{len(failures)} refusal(s) missing:\n" + "\n".join(failures[:40])


def test_the_walk_covers_every_route_of_the_app(walk: Walk) -> None:
    operations = walk.operations
    assert len(operations) >= 25  # archive, DICOMweb (STOW, QIDO, WADO) and jobs routes
    assert sum("{project}" in op.path for op in operations) >= 20
    for operation in operations:
        walk.url(operation)  # every path parameter has a real value
    walked = {operation.path for operation in operations}
    escaping = [path for path, _ in walk.routes if path not in walked | PUBLIC]
    assert not escaping, f"routes outside the walk (a mount? give it a test): {escaping}"
    assert PUBLIC & {path for path, _ in walk.routes} >= {"/openapi.json", "/docs", "/redoc"}


def _asks_for_login(operation: Operation, response: httpx.Response) -> bool:
    """401 with a Bearer challenge; a UI page may instead send the browser to its login."""
    if response.status_code == 401:
        return "Bearer" in response.headers.get("www-authenticate", "")
    location = response.headers.get("location", "")
    return operation.ui and response.status_code == 303 and location.endswith("/ui/login")


def test_no_token_is_401_on_every_route(walk: Walk) -> None:
    failures = []
    for operation in walk.operations:
        attempts = {
            "no token": walk.send(operation, None),
            "unknown token": walk.send(operation, "medai_" + uuid.uuid4().hex),
            "not a bearer": walk.client.request(
                operation.method, walk.url(operation), headers={"Authorization": "Basic eDp4"}
            ),
            "unknown cookie": walk.client.request(
                operation.method, walk.url(operation), headers={"Cookie": f"{SESSION_COOKIE}=x"}
            ),
            "empty body": walk.send(operation, None, content=b"{}"),
            "malformed body": walk.send(operation, None, content=b"{not json"),
            "bad ids": walk.send(operation, None, job_id="x", task_id="x", study="x"),
        }
        for what, response in attempts.items():
            if not _asks_for_login(operation, response):
                failures.append(f"{operation} ({what}): {response.status_code}")
    assert not failures, _report(failures)


def _leaks(walk: Walk, response: httpx.Response, *also: str) -> list[str]:
    """What of glioma's data (patient, UIDs, output names, ``also``) ``response`` shows."""
    data = ["P001", "Phantom", STUDY_UID, walk.values["series"], "inputs.json", *also]
    return [value for value in data if value in response.text]


def test_another_projects_member_is_403_on_every_project_route(walk: Walk) -> None:
    eve = walk.tokens["eve"]
    failures = []
    for operation in walk.operations:
        if "{project}" not in operation.path:
            response = walk.send(operation, eve)
            if response.status_code != 200 or _leaks(walk, response, "glioma"):
                failures.append(f"{operation}: {response.status_code} {response.text[:80]}")
            continue
        attempts = {
            "valid": walk.send(operation, eve),
            "empty body": walk.send(operation, eve, content=b"{}"),
            "malformed body": walk.send(operation, eve, content=b"{not json"),
            "bad ids": walk.send(operation, eve, job_id="x", task_id="-1", study="x", name="x"),
            "unknown project": walk.send(operation, eve, project="nosuchproject"),
        }
        for what, response in attempts.items():
            if response.status_code != 403 or _leaks(walk, response):
                failures.append(f"{operation} ({what}): {response.status_code}")
    assert not failures, _report(failures)


def test_the_admin_and_a_member_get_every_route(walk: Walk) -> None:
    failures = []
    for operation in walk.operations:
        for user in ("root", "alice"):
            response = walk.send(operation, walk.tokens[user])
            api_get = operation.method == "get" and not operation.ui
            expected = response.is_success if api_get else response.status_code < 500
            if not expected:
                failures.append(f"{operation} ({user}): {response.status_code}")
    assert not failures, _report(failures)


def test_path_traversal_and_nul_are_4xx_in_every_parameter(walk: Walk) -> None:
    passwd = Path("/etc/passwd").read_bytes()[:32]
    failures = []
    for operation in walk.operations:
        for parameter in operation.parameters:
            for value in TRAVERSAL:
                target = walk.url(operation, **{parameter: value})
                status, content = _raw(
                    walk, operation.method, target, walk.tokens["root"], walk.body(operation)
                )
                if not 400 <= status < 500 or (passwd and passwd in content):
                    failures.append(f"{operation.method.upper()} {target}: {status}")
        target = walk.url(operation) + "?PatientID=%00&limit=1"  # a NUL in the query
        status, _ = _raw(walk, operation.method, target, walk.tokens["root"], walk.body(operation))
        if not 400 <= status < 500:
            failures.append(f"{operation.method.upper()} {target}: {status}")
    for path, _ in walk.routes:  # mounted static files: nothing outside their folder
        if path in PUBLIC and path.startswith("/ui/"):
            for value in TRAVERSAL:
                status, content = _raw(walk, "get", f"{path}/{value}", walk.tokens["root"], None)
                if not 400 <= status < 500 or (passwd and passwd in content):
                    failures.append(f"GET {path}/{value}: {status}")
    assert not failures, _report(failures)


def test_the_openapi_documents_are_public_and_hold_no_data(walk: Walk) -> None:
    secrets = ["glioma", "P001", "Test^Phantom", STUDY_UID, walk.values["series"]]
    secrets += list(walk.tokens.values())
    for path in ("/openapi.json", "/docs", "/redoc"):
        response = walk.client.get(path)
        assert response.status_code == 200, path
        leaked = [s for s in secrets if s in response.text]
        assert not leaked, f"{path} shows {leaked}"


def _multipart(part: bytes) -> tuple[bytes, dict[str, str]]:
    boundary = uuid.uuid4().hex
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + part
        + f"\r\n--{boundary}--\r\n".encode()
    )
    media = f'multipart/related; type="application/dicom"; boundary={boundary}'
    return body, {"Content-Type": media}


def test_the_audit_log_names_who_stored_viewed_retrieved_and_exported(walk: Walk) -> None:
    bob, eve = bearer(walk.tokens["bob"]), bearer(walk.tokens["eve"])
    base, task = "/dicomweb/projects/glioma", walk.values["task_id"]
    body, headers = _multipart(walk.files["FLAIR"][0].read_bytes())
    client = walk.client
    assert client.post(f"{base}/studies", content=body, headers=headers | bob).is_success
    assert client.get("/api/projects/glioma/tree", headers=bob).is_success
    assert client.get(f"{base}/studies/{STUDY_UID}/metadata", headers=bob).is_success
    assert client.get(f"{base}/studies/{STUDY_UID}", headers=bob).is_success
    assert client.get(f"/api/projects/glioma/tasks/{task}/outputs/inputs.json",
                      headers=bob).is_success  # fmt: skip
    assert client.get("/api/projects/glioma/measurements.csv", headers=bob).is_success
    assert client.get("/api/projects/glioma/tree", headers=eve).status_code == 403
    with walk.context.factory() as session:
        entries = session.scalars(select(AuditEntry).where(AuditEntry.actor == "bob")).all()
        refused = session.scalars(select(AuditEntry).where(AuditEntry.actor == "eve")).all()
    done = {(e.action, e.target) for e in entries}
    assert ("store", "studies") in done
    assert ("view", "tree") in done
    assert ("view", STUDY_UID) in done
    assert ("retrieve", STUDY_UID) in done
    assert ("export", f"task {task}/inputs.json") in done
    assert ("export", "measurements.csv") in done
    assert all(e.project_id is not None for e in entries)
    assert not [e for e in refused if e.action in {"view", "retrieve", "export", "store"}]


def _listening(ports: set[int]) -> list[tuple[str, str, int]]:
    """(table, local address in hex, port) of every listening TCP socket on ``ports``."""
    found = []
    for table in ("tcp", "tcp6"):
        path = Path("/proc/net") / table
        if not path.is_file():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            address, port = fields[1].rsplit(":", 1)
            if fields[3] == "0A" and int(port, 16) in ports:
                found.append((table, address, int(port, 16)))
    return found


@pytest.mark.skipif(not Path("/proc/net/tcp").is_file(), reason="needs Linux /proc/net/tcp")
def test_serve_listens_on_loopback_only(tmp_path: Path) -> None:
    root = tmp_path / "root"
    log = tmp_path / "serve.stderr"
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "medai.cli.main", "serve", str(root), "--port", "0",
             "--dicom-port", "0", "--workers", "1"],
            stdout=subprocess.DEVNULL, stderr=stderr,
        )  # fmt: skip
    try:
        info = _server_info(root, process, log)
        ports = {int(info["http_port"]), int(info["dicom_port"])}
        listening = _listening(ports)
    finally:
        process.terminate()
        process.wait(timeout=60)
    assert info["host"] == "127.0.0.1"
    assert {port for _, _, port in listening} == ports
    assert all(table == "tcp" and address == "0100007F" for table, address, _ in listening), (
        f"listening beyond loopback: {listening}"
    )


def _server_info(root: Path, process: subprocess.Popen[bytes], log: Path) -> dict[str, Any]:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"medai serve exited with {process.returncode}: {log.read_text()}")
        path = root / "server.json"
        if path.is_file():
            info: dict[str, Any] = json.loads(path.read_text())
            if info["pid"] == process.pid:
                return info
        time.sleep(0.1)
    pytest.fail("medai serve did not write server.json in 90 s")

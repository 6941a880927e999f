"""The web UI of ``medai serve``: login by cookie, redirects and 403 pages, thumbnails and
distribution strips, and a browser session (Playwright driving Debian Chromium): log in,
dry-run and submit a segmentation job with a stand-in bundle, watch it finish on the job
list, open the result — the label overlay is drawn where the tumour is and gone when
toggled off — and decide a review. With ``MEDAI_SCREENSHOTS=docs/images`` it also
refreshes the README's screenshots."""

from __future__ import annotations

import io
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image as PilImage
from sqlalchemy import select

from _service import CHANNELS, api_server, phantom_study, populate, service_context
from _standin import NeighbourRule, standin_plan
from medai.inference import LoadedRun
from medai.service.archive import complete_quiet_studies
from medai.service.context import ServiceContext
from medai.service.db import (
    AuditEntry,
    Measurement,
    Membership,
    Output,
    Project,
    Series,
    Task,
    TaskState,
    User,
)
from medai.service.dispatcher import Dispatcher
from medai.service.ui_views import measure_strips

SEGMENT_ALL = "select study where " + " and ".join(
    f'has series {c} (SeriesDescription = "{c}")' for c in CHANNELS
)
# WebGL needs a (software) GL in headless Chromium: no --disable-gpu, SwiftShader allowed.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
Service = tuple[ServiceContext, dict[str, str]]


def _register_bundle(context: ServiceContext, study_folder: Path) -> None:
    """Export the stand-in segmentation bundle as ``standin``: TTA gives an uncertainty,
    and a review threshold below it sends every result to the review queue."""
    from medai.export import export_bundle
    from medai.inference.study import read_study

    plan = standin_plan(
        ["network.depth=3", "inference.tta_flips=true", "target.review_above=0.001"]
    )
    run = LoadedRun(plan, NeighbourRule(list(plan.regions)).eval(), torch.device("cpu"))
    image = read_study(study_folder, CHANNELS)
    out = study_folder.parent / "standin"
    export_bundle(run, out, parity_cases=[image], reference_cases=[])
    shutil.copytree(out, context.config.root / "bundles" / "standin")


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """The phantom study stored in project glioma, the stand-in bundle registered."""
    folder = tmp_path_factory.mktemp("ui")
    context = service_context(folder / "svc", workers=2, quiet_seconds=0.0)
    tokens = populate(context)
    files = phantom_study(folder / "dicom")
    with context.factory() as session:
        project = session.scalars(select(Project).where(Project.name == "glioma")).one()
    for paths in files.values():
        for path in paths:
            context.archive.store(project, path.read_bytes())
    with context.factory() as session:
        complete_quiet_studies(session, quiet_seconds=0.0)
        session.commit()
    _register_bundle(context, folder / "dicom")
    with context.factory() as session:  # alice reviews
        alice = session.scalars(select(User).where(User.name == "alice")).one()
        member = session.scalars(select(Membership).where(Membership.user_id == alice.id)).one()
        member.role = "reviewer"
        session.commit()
    yield context, tokens
    context.close()


def _login(client: httpx.Client, token: str) -> httpx.Response:
    return client.post("/ui/login", data={"token": token}, follow_redirects=False)


def _series_uid(context: ServiceContext) -> str:
    with context.factory() as session:
        return session.scalars(select(Series.series_uid).order_by(Series.id)).first() or ""


def test_pages_redirect_to_login_without_a_cookie_and_the_api_says_401(service: Service) -> None:
    context, tokens = service
    uid = _series_uid(context)
    pages = ["/ui/", "/ui/p/glioma", "/ui/p/glioma/select", "/ui/p/glioma/jobs",
             "/ui/p/glioma/jobs/rows", "/ui/p/glioma/measures", "/ui/p/glioma/review",
             f"/ui/p/glioma/series/{uid}/thumbnail.png", "/ui/p/glioma/tasks/1",
             "/ui/p/glioma/tasks/1/volumes/input.nii.gz"]  # fmt: skip
    with api_server(context) as client:
        for url in pages:
            answer = client.get(url, follow_redirects=False)
            assert answer.status_code == 303, url
            assert answer.headers["location"] == "/ui/login"
            assert "glioma" not in answer.text
            assert uid not in answer.text
        refused = client.post("/ui/p/glioma/select/dry-run", data={"text": "select series"},
                              follow_redirects=False)  # fmt: skip
        assert refused.status_code == 303
        assert client.get("/api/projects").status_code == 401
        wrong = _login(client, "not-a-token")
        assert wrong.status_code == 401
        assert "unknown token" in wrong.text
        assert "set-cookie" not in wrong.headers
        good = _login(client, tokens["alice"])
        assert good.status_code == 303
        assert good.headers["location"] == "/ui/"
        cookie = good.headers["set-cookie"].lower()
        assert "httponly" in cookie
        assert "samesite=strict" in cookie
        assert "secure" not in cookie  # plain http on loopback
        # the cookie authenticates the API too
        assert client.get("/api/me").json()["name"] == "alice"
        assert "glioma" in client.get("/ui/").text
        client.post("/ui/logout")
        assert client.get("/ui/", follow_redirects=False).status_code == 303


def test_another_projects_member_gets_403_pages(service: Service) -> None:
    context, tokens = service
    uid = _series_uid(context)
    with api_server(context) as client:
        _login(client, tokens["eve"])
        for url in ["/ui/p/glioma", "/ui/p/glioma/select", "/ui/p/glioma/jobs",
                    "/ui/p/glioma/jobs/rows", "/ui/p/glioma/measures", "/ui/p/glioma/review",
                    f"/ui/p/glioma/series/{uid}/thumbnail.png", "/ui/p/glioma/tasks/1",
                    "/ui/p/glioma/tasks/1/volumes/labels.nii.gz"]:  # fmt: skip
            answer = client.get(url)
            assert answer.status_code == 403, url
            assert "Not available" in answer.text
            assert uid not in answer.text
        for url, data in [("/ui/p/glioma/select/dry-run", {"text": "select series"}),
                          ("/ui/p/glioma/jobs", {"kind": "noop", "text": "select series"}),
                          ("/ui/p/glioma/tasks/1/review", {"decision": "accept"})]:  # fmt: skip
            assert client.post(url, data=data).status_code == 403, url
        assert client.get("/ui/p/other").status_code == 200  # eve's own project
        assert client.get("/api/projects/glioma/tree").status_code == 403


def test_archive_page_and_thumbnail(service: Service) -> None:
    context, tokens = service
    uid = _series_uid(context)
    with api_server(context) as client:
        _login(client, tokens["alice"])
        archive = client.get("/ui/p/glioma")
        thumb = client.get(f"/ui/p/glioma/series/{uid}/thumbnail.png")
        missing = client.get("/ui/p/glioma/series/1.2.3/thumbnail.png")
        dry = client.post("/ui/p/glioma/select/dry-run", data={"text": SEGMENT_ALL})
        caret = client.post("/ui/p/glioma/select/dry-run", data={"text": "select sries"})
    assert archive.status_code == 200
    assert all(f">{c}<" in archive.text for c in CHANNELS)
    assert thumb.headers["content-type"] == "image/png"
    picture = PilImage.open(io.BytesIO(thumb.content))
    assert max(picture.size) <= 128
    assert np.asarray(picture).std() > 0
    assert missing.status_code == 404
    assert "1 unit at level study" in dry.text
    assert caret.status_code == 200
    assert "^" in caret.text
    assert "error" in caret.text


def test_measure_strips_count_and_mark_the_task(tmp_path: Path) -> None:
    context = service_context(tmp_path / "svc")
    populate(context)
    with context.factory() as session:
        project = session.scalars(select(Project).where(Project.name == "glioma")).one()
        from medai.service.jobs import submit_job

        alice = session.scalars(select(User).where(User.name == "alice")).one()
        job = submit_job(session, alice, project, "noop", "select project")
        session.flush()
        for value in (1.0, 2.0, 3.0, 10.0):
            task = Task(job_id=job.id, project_id=project.id, user_id=alice.id, seq=int(value),
                        unit=f"u{value}", state=TaskState.DONE)  # fmt: skip
            session.add(task)
            session.flush()
            session.add(Measurement(task_id=task.id, project_id=project.id, name="volume_ml.WT",
                                    value=value, unit="mL"))  # fmt: skip
        session.flush()
        [strip] = measure_strips(session, project, task_id=task.id, bins=3)
    context.close()
    assert [b.count for b in strip.bins] == [3, 0, 1]
    assert [b.low for b in strip.bins] == [1.0, 4.0, 7.0]
    assert strip.bins[0].opacity == 1.0
    assert strip.bins[1].opacity == 0.0
    assert strip.bins[2].opacity == pytest.approx(np.log(2) / np.log(4))
    assert strip.marked == 2
    assert strip.value == 10.0
    assert strip.unit == "mL"


# -- the browser ---------------------------------------------------------------------------
@pytest.fixture
def browser_page() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api")
    from medai.evaluation.browser import BrowserUnavailableError, find_chromium

    try:
        binary = find_chromium()
    except BrowserUnavailableError as error:
        pytest.skip(str(error))
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(binary), args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": 1280, "height": 800})
        finally:
            browser.close()


def _shot(page: Any, name: str) -> None:
    """A screenshot for the README, as a small palette PNG, when ``MEDAI_SCREENSHOTS`` names
    a folder (``MEDAI_SCREENSHOTS=docs/images`` refreshes the README's); else none."""
    folder = os.environ.get("MEDAI_SCREENSHOTS")
    if not folder:
        return
    Path(folder).mkdir(parents=True, exist_ok=True)
    picture = PilImage.open(io.BytesIO(page.screenshot())).convert("RGB")
    picture.quantize(colors=128).save(Path(folder) / f"service_{name}.png", optimize=True)


@pytest.mark.slow
def test_browser_submit_watch_view_and_review(service: Service, browser_page: Any) -> None:
    context, tokens = service
    page = browser_page
    dispatcher = Dispatcher(context)
    dispatcher.start()
    try:
        with api_server(context) as client:
            base = str(client.base_url)
            page.goto(f"{base}/ui/p/glioma/jobs")
            assert page.url.endswith("/ui/login")  # redirected
            page.fill("#token", tokens["alice"])
            page.click("button[type=submit]")
            page.wait_for_url(f"{base}/ui/")
            page.goto(f"{base}/ui/p/glioma/select")
            page.fill("#text", SEGMENT_ALL)
            page.click("#dry-run-button")
            page.wait_for_selector("text=1 unit at level study")
            page.select_option("#kind", "segmentation")
            page.select_option("#bundle", "standin")
            page.click("#submit-button")
            page.wait_for_url(f"{base}/ui/p/glioma/jobs")
            done = "tr[data-kind=segmentation][data-state=done]"
            page.wait_for_selector(done, timeout=90_000)
            _shot(page, "jobs")
            task_id = int(page.get_attribute(done, "data-task") or 0)
            page.click(f"tr[data-task='{task_id}'] a")
            page.wait_for_function("window.medaiViewer && (window.medaiViewer.ready || "
                                   "window.medaiViewer.error)", timeout=30_000)  # fmt: skip
            assert page.evaluate("window.medaiViewer.error") is None
            with_overlay = page.evaluate("window.medaiViewer.focusPixel(1)")
            _shot(page, "result")
            page.uncheck("#overlay-toggle")
            without = page.evaluate("window.medaiViewer.focusPixel(1)")
            page.check("#overlay-toggle")
            again = page.evaluate("window.medaiViewer.focusPixel(1)")
            assert page.locator("figure.strip text", has_text="this task").count() >= 1
            page.goto(f"{base}/ui/p/glioma/review")
            page.wait_for_selector(f".review-item.current[data-task='{task_id}']")
            assert page.locator(".review-item .badge", has_text="uncertain").count() == 1
            _shot(page, "review")
            page.fill(".review-item.current input[name=comment]", "looks right")
            page.locator("body").click()  # leave the text field: the keys act on the queue
            page.keyboard.press("a")
            page.wait_for_selector("text=accepted task")
            assert page.locator(".review-item").count() == 0
            corrected = _correct(context, client, tokens["alice"], task_id)
    finally:
        dispatcher.stop()
    assert with_overlay["x"] == without["x"]
    assert with_overlay["y"] == without["y"]
    overlay, plain = np.array(with_overlay["rgba"][:3]), np.array(without["rgba"][:3])
    assert np.abs(overlay - plain).max() > 40, (with_overlay, without)
    # grey without the overlay, coloured with it; toggling back restores it
    assert np.ptp(plain) < 5
    assert np.ptp(overlay) > 40
    np.testing.assert_allclose(again["rgba"], with_overlay["rgba"], atol=2)
    with context.factory() as session:
        task = session.get_one(Task, task_id)
        assert (task.state, task.uncertain) == (TaskState.DONE, True)
        assert task.review_state == "corrected"  # accepted in the browser, then corrected
    assert corrected["version"] == 2
    assert corrected["served"] == corrected["stored"]  # the viewer gets the newest version


def _correct(
    context: ServiceContext, client: httpx.Client, token: str, task_id: int
) -> dict[str, Any]:
    """Upload the task's label map without label 1 through the review form."""
    with context.factory() as session:
        first = session.scalars(
            select(Output).where(Output.task_id == task_id, Output.name == "labels.nii.gz")
        ).one()
    labels: Any = nib.load(context.config.results / first.path)
    data = np.asarray(labels.dataobj).copy()
    assert (data == 1).any()
    data[data == 1] = 0
    upload = nib.Nifti1Image(data, labels.affine, labels.header).to_bytes()
    _login(client, token)
    answer = client.post(
        f"/ui/p/glioma/tasks/{task_id}/review",
        data={"decision": "correct", "comment": "no oedema"},
        files={"file": ("labels.nii", upload, "application/octet-stream")},
    )  # fmt: skip
    assert answer.status_code == 303, answer.text
    assert "corrected task" in client.get(answer.headers["location"]).text
    served = client.get(f"/ui/p/glioma/tasks/{task_id}/volumes/labels.nii.gz")
    with context.factory() as session:
        newest = session.scalars(
            select(Output)
            .where(Output.task_id == task_id, Output.name == "labels.nii.gz")
            .order_by(Output.version.desc())
        ).first()
    assert newest is not None
    stored = (context.config.results / newest.path).read_bytes()
    return {"version": newest.version, "served": served.content, "stored": stored}


def _state(context: ServiceContext, task_id: int) -> str:
    with context.factory() as session:
        return session.get_one(Task, task_id).state


def test_review_form_needs_a_reviewer_and_records_a_rejection(service: Service) -> None:
    context, tokens = service
    flair = 'select series where SeriesDescription = "FLAIR"'
    dispatcher = Dispatcher(context)
    try:
        with api_server(context) as client:
            _login(client, tokens["bob"])
            sent = client.post("/ui/p/glioma/jobs", data={"kind": "noop", "text": flair})
            assert sent.status_code == 204
            assert sent.headers["hx-redirect"] == "/ui/p/glioma/jobs"
            with context.factory() as session:
                task_id = max(session.scalars(select(Task.id)))
            deadline = time.monotonic() + 30
            while _state(context, task_id) != TaskState.DONE:
                assert time.monotonic() < deadline, "the noop task did not finish"
                dispatcher.step()
                time.sleep(0.05)
            url = f"/ui/p/glioma/tasks/{task_id}/review"
            member = client.post(url, data={"decision": "accept"})
            _login(client, tokens["alice"])
            bogus = client.post(url, data={"decision": "approve"})
            no_file = client.post(url, data={"decision": "correct"})
            rejected = client.post(url, data={"decision": "reject", "comment": "wrong series"},
                                   follow_redirects=False)  # fmt: skip
            again = client.post(url, data={"decision": "accept"})
    finally:
        dispatcher.stop()
    assert member.status_code == 403
    assert "no access" in member.text
    assert bogus.status_code == 422
    assert "approve" in bogus.text
    assert no_file.status_code == 422
    assert "label map" in no_file.text
    assert rejected.status_code == 303
    assert rejected.headers["location"].endswith(f"done=rejected+task+{task_id}")
    assert again.status_code == 422  # a rejected result stays rejected
    assert "rejected" in again.text
    with context.factory() as session:
        assert session.get_one(Task, task_id).review_state == "rejected"
        entry = session.scalars(
            select(AuditEntry).where(AuditEntry.action == "review").order_by(AuditEntry.id.desc())
        ).first()
    assert entry is not None
    assert (entry.actor, entry.target, entry.detail["decision"]) == (
        "alice",
        f"task {task_id}",
        "reject",
    )

"""Normality ranking in the service, the review queue and held exports (issue 14).

Closed-form ranking through the index (Measurement rows → rank_project); the Done-when
end to end through the API with the real dispatcher, LocalExecutor and a pynetdicom
storage SCP (a planted tenfold outlier is red, queued, its export held until accepted,
while ordinary results are green and sent); an uncertain task rejected; corrections
stored as new versions; wrong role / wrong project refused; every decision audited.
"""

from __future__ import annotations

import gzip
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from _service import (
    StorageSCP,
    api_server,
    bearer,
    phantom_study,
    populate,
    service_context,
)
from medai.preprocess.plan import Plan
from medai.runtime.bundle import BUNDLE_FORMAT, BUNDLE_FORMAT_VERSION, build_manifest
from medai.service.archive import complete_quiet_studies
from medai.service.auth import AccessDeniedError, add_member
from medai.service.config import Destination
from medai.service.context import ServiceContext
from medai.service.db import (
    AuditEntry,
    Delivery,
    Job,
    Measurement,
    Output,
    Project,
    ReviewState,
    Task,
    TaskState,
    User,
)
from medai.service.dispatcher import Dispatcher
from medai.service.review import (
    ReviewError,
    measure_distributions,
    rank_project,
    ranking_config,
    record_review,
    review_queue,
)

MEDIAN_WT = 40.0
ORDINARY = [MEDIAN_WT * (1 + 0.02 * k) for k in range(-6, 6)]  # 12 studies, ±12 %


def _register_bundle(root: Path, name: str, *, review_above: float) -> None:
    """A registered bundle (verified manifest) with a WT reference and a review threshold;
    its model is never run here (noop jobs only name it)."""
    info = {
        "format": BUNDLE_FORMAT, "format_version": BUNDLE_FORMAT_VERSION, "name": name,
        "task": "segmentation", "uncertainty": {"review_above": review_above},
    }  # fmt: skip
    reference = {"regions": {"WT": {"values": [MEDIAN_WT + d for d in range(-6, 6)]}}}
    files = {
        "bundle.json": json.dumps(info).encode(),
        "plan.json": Plan(labels={0: "background", 1: "tumour"}).model_dump_json().encode(),
        "model.onnx": b"stand-in: never run",
        "reference.json": json.dumps(reference).encode(),
    }
    files["manifest.json"] = json.dumps(build_manifest(files)).encode()
    folder = root / "bundles" / name
    folder.mkdir(parents=True)
    for file_name, data in files.items():
        (folder / file_name).write_bytes(data)


def _named(session: Session, model: Any, name: str) -> Any:
    return session.scalars(select(model).where(model.name == name)).one()


def _done_task(
    session: Session, measures: dict[str, float], *, unit: str, bundle: str | None = None
) -> Task:
    """A done noop task of alice in glioma with the given Measurement rows."""
    project, user = _named(session, Project, "glioma"), _named(session, User, "alice")
    job = Job(project_id=project.id, user_id=user.id, kind="noop", bundle=bundle,
              selection="select study", level="study")  # fmt: skip
    session.add(job)
    session.flush()
    task = Task(job_id=job.id, project_id=project.id, user_id=user.id, seq=job.id, unit=unit,
                state=TaskState.DONE)  # fmt: skip
    session.add(task)
    session.flush()
    for name, value in measures.items():
        session.add(Measurement(task_id=task.id, project_id=project.id, name=name, value=value,
                                unit="mL"))  # fmt: skip
    session.flush()
    return task


@pytest.fixture
def service(tmp_path: Path) -> Iterator[tuple[ServiceContext, dict[str, str]]]:
    context = service_context(tmp_path / "svc")
    tokens = populate(context)
    yield context, tokens
    context.close()


def test_rank_project_gives_the_closed_form_z_and_holds_a_red_result(service: Any) -> None:
    context, _ = service
    values = [10.0 + k for k in range(11)]  # 10 … 20
    with context.factory() as session:
        glioma = _named(session, Project, "glioma")
        glioma.ranking = {"method": "maxz", "transforms": {"v": "linear"}}
        tasks = [_done_task(session, {"v": v}, unit=f"s{i}") for i, v in enumerate(values)]
        odd = _done_task(session, {"v": 40.0}, unit="odd")
        out = Output(task_id=odd.id, name="sr", kind="sr", path=f"{odd.id}/sr.dcm",
                     sha256="0" * 64)  # fmt: skip
        session.add(out)
        session.flush()
        session.add(Delivery(output_id=out.id, destination="pacs"))
        assert rank_project(session, context, glioma) == [odd.id]
        assert rank_project(session, context, glioma) == []  # pending once
        session.commit()
        accepted = np.array(values)  # once pending, the odd one leaves the reference
        median = float(np.median(accepted))
        sd = 1.4826 * float(np.median(np.abs(accepted - median)))
        assert odd.rank_score == pytest.approx((40.0 - median) / sd)
        assert tasks[0].rank_score == pytest.approx(abs(10.0 - median) / sd)
        assert odd.colour == "red"
        assert odd.review_state == ReviewState.PENDING
        assert odd.rank_reasons == ["v = 40 mL is 5.6 robust SDs above the project median 15 mL"]
        assert {t.colour for t in tasks} == {"green"}
        assert {t.review_state for t in tasks} == {ReviewState.NONE}
        assert session.scalars(select(Delivery)).one().state == "held"
        queue = review_queue(session, glioma)
        assert [item.task_id for item in queue] == [odd.id]
        distribution = measure_distributions(session, glioma, bins=4)["v"]
        assert distribution.counts == (8, 3, 0, 1)  # bins of 7.5 from 10 to 40
        three, eight = np.log1p(3), np.log1p(8)
        assert distribution.opacity == pytest.approx((1.0, three / eight, 0.0, np.log(2) / eight))
        assert distribution.bin_of(odd.id) == 3


def test_an_uncertain_result_is_queued_against_the_bundles_threshold(service: Any) -> None:
    context, _ = service
    _register_bundle(context.config.root, "seg", review_above=0.5)
    with context.factory() as session:
        sure = _done_task(session, {"volume_ml.WT": 41.0, "uncertainty": 0.2}, unit="a",
                          bundle="seg")  # fmt: skip
        unsure = _done_task(session, {"volume_ml.WT": 41.0, "uncertainty": 0.9}, unit="b",
                            bundle="seg")  # fmt: skip
        assert rank_project(session, context, sure.project_id) == [unsure.id]
        assert unsure.uncertain
        assert unsure.colour == "amber"
        assert "above the review threshold 0.5" in unsure.rank_reasons[-1]
        assert not sure.uncertain  # ranked on the bundle's reference (2 project results)
        assert sure.colour == "green"


def test_broken_ranking_settings_are_named_and_ranking_goes_on(service: Any) -> None:
    context, _ = service
    with context.factory() as session:
        glioma = _named(session, Project, "glioma")
        glioma.ranking = {"method": "bogus"}
        with pytest.raises(ReviewError, match="reset them to"):
            ranking_config(glioma)
        tasks = [_done_task(session, {"v": 10.0 + k}, unit=f"s{k}") for k in range(12)]
        odd = _done_task(session, {"v": 500.0}, unit="odd")
        assert rank_project(session, context, glioma) == [odd.id]
        assert {t.colour for t in tasks} == {"green"}


def _studies(context: ServiceContext, folder: Path, n: int) -> None:
    """``n`` complete one-series studies (accession A00 …) in glioma."""
    files = phantom_study(folder, shape=(24, 26, 4))["FLAIR"]
    with context.factory() as session:
        project = _named(session, Project, "glioma")
    for i in range(n):
        for k, path in enumerate(files):
            ds = pydicom.dcmread(path)
            ds.PatientID, ds.AccessionNumber = f"P{i:02d}", f"A{i:02d}"
            ds.StudyInstanceUID = f"1.2.826.0.1.3680043.8.498.5{i:02d}"
            ds.SeriesInstanceUID = f"1.2.826.0.1.3680043.8.498.5{i:02d}.1"
            ds.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.5{i:02d}.1.{k + 1}"
            buffer = io.BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            context.archive.store(project, buffer.getvalue())
    with context.factory() as session:
        complete_quiet_studies(session, quiet_seconds=0.0)
        session.commit()


def _submit(client: Any, token: str, i: int, measures: dict[str, float], **extra: Any) -> None:
    body = {"kind": "noop", "selection": f'select study where AccessionNumber = "A{i:02d}"',
            "options": {"sr": True, "measurements": measures}, **extra}  # fmt: skip
    reply = client.post("/api/projects/glioma/jobs", headers=bearer(token), json=body)
    assert reply.status_code == 201, reply.text
    assert reply.json()["tasks"] == 1


def _run(context: ServiceContext, dispatcher: Dispatcher, until: Any, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, "timed out"
        dispatcher.step()
        time.sleep(0.02)


def _deliveries(context: ServiceContext) -> dict[int, set[str]]:
    """Delivery states per task."""
    with context.factory() as session:
        rows = session.execute(
            select(Output.task_id, Delivery.state).join(Delivery, Delivery.output_id == Output.id)
        ).all()
    found: dict[int, set[str]] = {}
    for task_id, state in rows:
        found.setdefault(task_id, set()).add(state)
    return found


def _tasks(context: ServiceContext) -> list[Task]:
    with context.factory() as session:
        return list(session.scalars(select(Task).order_by(Task.seq)))


def test_a_planted_outlier_waits_for_review_and_an_ordinary_result_is_sent(
    tmp_path: Path,
) -> None:
    scp = StorageSCP("ARCHIVE")
    pacs = Destination(name="pacs", port=scp.port, ae_title="ARCHIVE", max_attempts=2)
    context = service_context(tmp_path / "svc", workers=2, quiet_seconds=0.0,
                              destinations=[pacs])  # fmt: skip
    dispatcher = None
    try:
        tokens = populate(context)
        _register_bundle(context.config.root, "seg", review_above=0.5)
        with context.factory() as session:
            add_member(session, _named(session, User, "bob"), _named(session, Project, "glioma"),
                       "reviewer")  # fmt: skip
            session.commit()
        _studies(context, tmp_path / "dicom", len(ORDINARY) + 1)
        with api_server(context) as client:
            for i, volume in enumerate(ORDINARY):
                _submit(client, tokens["bob"], i, {"volume_ml.WT": volume})
            _submit(client, tokens["bob"], 12, {"volume_ml.WT": 10 * MEDIAN_WT})
            _submit(client, tokens["bob"], 0, {"volume_ml.WT": 40.0, "uncertainty": 0.9},
                    bundle="seg")  # fmt: skip
            dispatcher = Dispatcher(context)
            _run(context, dispatcher, lambda: all(t.state == TaskState.DONE
                                                  for t in _tasks(context)))  # fmt: skip
            tasks = _tasks(context)
            ordinary, outlier, unsure = tasks[:12], tasks[12], tasks[13]
            _run(context, dispatcher,
                 lambda: all(_deliveries(context)[t.id] == {"sent"} for t in ordinary))  # fmt: skip
            assert outlier.colour == "red"
            assert outlier.review_state == ReviewState.PENDING
            assert ordinary[-1].colour == "green"  # ranked again with every result in
            assert ordinary[-1].review_state == ReviewState.NONE
            assert unsure.uncertain
            assert unsure.review_state == ReviewState.PENDING
            states = _deliveries(context)
            assert states[outlier.id] == states[unsure.id] == {"held"}
            alice, bob, eve = (bearer(tokens[n]) for n in ("alice", "bob", "eve"))
            queue = client.get("/api/projects/glioma/review", headers=alice).json()
            assert [q["task"] for q in queue] == [outlier.id, unsure.id]
            assert queue[0]["colour"] == "red"
            assert "volume_ml.WT = 400 is" in queue[0]["reasons"][0]
            base = f"/api/projects/glioma/tasks/{outlier.id}"
            accept = {"decision": "accept", "comment": "large but real"}
            assert client.post(f"{base}/review", headers=alice, json=accept).status_code == 403
            assert client.post(f"{base}/review", headers=eve, json=accept).status_code == 403
            assert client.post(f"{base}/review", json=accept).status_code == 401
            assert _deliveries(context)[outlier.id] == {"held"}
            reply = client.post(f"{base}/review", headers=bob, json=accept)
            assert reply.status_code == 200, reply.text
            assert reply.json()["review_state"] == "accepted"
            _run(context, dispatcher, lambda: _deliveries(context)[outlier.id] == {"sent"})
            reject = {"decision": "reject", "comment": "unreliable"}
            unsure_url = f"/api/projects/glioma/tasks/{unsure.id}/review"
            assert client.post(unsure_url, headers=bob, json=reject).status_code == 200
            again = client.post(unsure_url, headers=bob, json=accept)
            assert again.status_code == 422
            assert "rejected" in again.json()["detail"]
            dispatcher.step()
            assert _deliveries(context)[unsure.id] == {"cancelled"}
            assert client.get("/api/projects/glioma/review", headers=alice).json() == []
            normality = client.get(f"{base}/normality", headers=alice).json()
            measures = client.get("/api/projects/glioma/measures", headers=alice).json()
            assert client.get(f"{base}/normality", headers=eve).status_code == 403
            assert client.get("/api/projects/glioma/measures", headers=eve).status_code == 403
            assert client.get("/api/projects/glioma/review", headers=eve).status_code == 403
    finally:
        if dispatcher is not None:
            dispatcher.stop()
        scp.server.shutdown()
    sent = [json.loads(ds.ContentSequence[0].TextValue) for ds in scp.received]
    assert len(sent) == 13  # 12 ordinary + the accepted outlier; the rejected one never
    assert [r["decision"] for r in normality["reviews"]] == ["accept"]
    assert normality["measures"][0]["bin"] == len(measures["volume_ml.WT"]["counts"]) - 1
    assert str(unsure.id) not in measures["volume_ml.WT"]["values"]  # rejected: left out
    with context.factory() as session:
        reviews = session.scalars(select(AuditEntry).where(AuditEntry.action == "review")).all()
        assert [(a.actor, a.target, a.detail["decision"]) for a in reviews] == [
            ("bob", f"task {outlier.id}", "accept"), ("bob", f"task {unsure.id}", "reject")
        ]  # fmt: skip
    context.close()


def _label_map(shape: tuple[int, int, int], value: int, affine: Any = None) -> bytes:
    data = np.zeros(shape, dtype=np.uint8)
    data[1:3, 1:3, 1:3] = value
    image = nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0]) if affine is None else affine)
    return gzip.compress(image.to_bytes(), mtime=0)


def test_corrections_are_new_versions_and_bad_ones_are_refused(service: Any) -> None:
    context, tokens = service
    _register_bundle(context.config.root, "seg", review_above=0.5)
    with context.factory() as session:
        task = _done_task(session, {"volume_ml.WT": 40.0}, unit="s", bundle="seg")
        folder = context.config.results / str(task.id)
        folder.mkdir(parents=True)
        original = _label_map((8, 8, 8), 1)
        (folder / "labels.nii.gz").write_bytes(original)
        session.add(Output(task_id=task.id, name="labels.nii.gz", kind="nifti",
                           path=f"{task.id}/labels.nii.gz", sha256="0" * 64))  # fmt: skip
        add_member(session, _named(session, User, "bob"), _named(session, Project, "glioma"),
                   "owner")  # fmt: skip
        alice = _named(session, User, "alice")
        with pytest.raises(AccessDeniedError):
            record_review(session, context, alice, task, "correct", "", _label_map((8, 8, 8), 1))
        with pytest.raises(ReviewError, match="not one of accept, correct, reject"):
            record_review(session, context, _named(session, User, "bob"), task, "approve")
        session.commit()
        task_id = task.id
    url = f"/api/projects/glioma/tasks/{task_id}/correction"
    bob = bearer(tokens["bob"])

    def upload(data: bytes, headers: dict[str, str] = bob) -> Any:
        files = {"file": ("labels.nii.gz", data, "application/gzip")}
        return client.post(url, headers=headers, files=files, data={"comment": "fixed"})

    with api_server(context) as client:
        assert upload(_label_map((8, 8, 8), 1), bearer(tokens["alice"])).status_code == 403
        assert upload(_label_map((8, 8, 8), 1), bearer(tokens["eve"])).status_code == 403
        for bad, why in (
            (_label_map((8, 8, 7), 1), "shape"),
            (_label_map((8, 8, 8), 1, np.eye(4)), "affine"),
            (_label_map((8, 8, 8), 5), "labels [5]"),
            (b"not a nifti", "not a NIfTI-1"),
        ):
            reply = upload(bad)
            assert reply.status_code == 422, reply.text
            assert why in reply.json()["detail"]
        first, second = upload(_label_map((8, 8, 8), 1)), upload(_label_map((8, 8, 8), 0))
        assert first.status_code == second.status_code == 200, first.text
        assert [first.json()["output_version"], second.json()["output_version"]] == [2, 3]
        listed = client.get(f"/api/projects/glioma/tasks/{task_id}/outputs", headers=bob).json()
    assert (folder / "labels.nii.gz").read_bytes() == original  # never overwritten
    assert (folder / "labels.v3.nii.gz").read_bytes() == _label_map((8, 8, 8), 0)
    assert [o["name"] for o in listed].count("labels.nii.gz") == 3
    with context.factory() as session:
        task = session.get_one(Task, task_id)
        assert task.review_state == ReviewState.CORRECTED
        audits = session.scalars(select(AuditEntry).where(AuditEntry.action == "review")).all()
        assert [(a.actor, a.detail["version"]) for a in audits] == [("bob", 2), ("bob", 3)]

"""What a task does (medai.service.tasks.run_task) for each job kind, on the phantom study
as DICOM with stand-in bundles; and sending the DICOM results (medai.service.deliver) to a
real pynetdicom storage SCP, or to nowhere (retries with back-off, then failed)."""

from __future__ import annotations

import csv
import json
import math
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest

from _service import (
    CHANNELS,
    STUDY_UID,
    StorageSCP,
    export_cls_bundle,
    export_seg_bundle,
    phantom_study,
    populate,
    service_context,
)
from medai.errors import BundleInputError, ConfigError
from medai.service.config import Destination
from medai.service.db import Delivery, Job, Output, Task, User
from medai.service.deliver import DeliveryState, backoff_seconds, send_pending
from medai.service.task_inputs import VIEW_FOLDER
from medai.service.tasks import run_task

SEG_SOP = "1.2.840.10008.5.1.4.1.1.66.4"


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    return phantom_study(tmp_path_factory.mktemp("study"))


@pytest.fixture(scope="module")
def seg_bundle(tmp_path_factory: pytest.TempPathFactory, study: dict[str, list[Path]]) -> Path:
    out = tmp_path_factory.mktemp("bundles") / "standin"
    return export_seg_bundle(out, study["FLAIR"][0].parent.parent)


@pytest.fixture(scope="module")
def cls_bundle(tmp_path_factory: pytest.TempPathFactory, study: dict[str, list[Path]]) -> Path:
    out = tmp_path_factory.mktemp("bundles") / "classifier"
    return export_cls_bundle(out, study["FLAIR"][0].parent.parent)


def _payload(out: Path, kind: str, inputs: dict[str, list[Path]], **extra: Any) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = {
        "task_id": 7, "kind": kind, "bundle": None, "study_uid": STUDY_UID, "out": str(out),
        "inputs": {alias: [str(f) for f in files] for alias, files in inputs.items()},
        "series": {}, "options": {}, "cpu": 1,
    }  # fmt: skip
    payload.update(extra)
    return payload


def _by_name(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in result["outputs"]}


def test_noop_lists_its_inputs(tmp_path: Path, study: dict[str, list[Path]]) -> None:
    result = run_task(_payload(tmp_path / "out", "noop", {"flair": study["FLAIR"][:2]}))
    assert result == {
        "outputs": [
            {"name": "inputs.json", "kind": "json", "path": "inputs.json", "sop_uid": None}
        ],
        "measurements": [],
    }
    listing = json.loads((tmp_path / "out" / "inputs.json").read_text())
    assert listing == {"flair": [study["FLAIR"][0].name, study["FLAIR"][1].name]}


def test_payload_errors_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown"):
        run_task(_payload(tmp_path / "o", "rocket", {}))
    with pytest.raises(ValueError, match="needs a bundle"):
        run_task(_payload(tmp_path / "o", "segmentation", {}))
    relative = _payload(tmp_path / "o", "noop", {})
    relative["out"] = "relative/out"
    with pytest.raises(ValueError, match="absolute path"):
        run_task(relative)


def _seg_run(out: Path, bundle: Path, study: dict[str, list[Path]], **extra: Any) -> dict[str, Any]:
    # aliases in a different order than the bundle's channels: matched by name
    inputs = {"t2w": study["T2w"], "FLAIR": study["FLAIR"], "T1W": study["T1w"],
              "t1gd": study["t1gd"]}  # fmt: skip
    return run_task(_payload(out, "segmentation", inputs, bundle=str(bundle), **extra))


def test_segmentation_writes_seg_and_sr_of_the_input_study(
    tmp_path: Path, seg_bundle: Path, study: dict[str, list[Path]]
) -> None:
    out = tmp_path / "a"
    result = _seg_run(out, seg_bundle, study)
    outputs = _by_name(result)
    assert {"labels.nii.gz", "volumes.json", "seg.dcm", "sr.dcm"} <= set(outputs)
    assert not (out / VIEW_FOLDER).exists()  # the input view is gone
    measures = {m["name"]: m for m in result["measurements"]}
    assert measures["volume_ml.WT"]["value"] > measures["volume_ml.ET"]["value"] > 0
    assert measures["volume_ml.WT"]["unit"] == "mL"
    assert math.isfinite(measures["uncertainty"]["value"])
    flair = [pydicom.dcmread(f, stop_before_pixels=True) for f in study["FLAIR"]]
    seg = pydicom.dcmread(out / "seg.dcm")
    sr = pydicom.dcmread(out / "sr.dcm")
    for ds in (seg, sr):
        assert ds.StudyInstanceUID == STUDY_UID
        assert ds.SeriesInstanceUID != flair[0].SeriesInstanceUID
    assert seg.SOPClassUID == SEG_SOP
    assert outputs["seg.dcm"]["sop_uid"] == seg.SOPInstanceUID
    assert outputs["sr.dcm"]["sop_uid"] == sr.SOPInstanceUID
    refs = {s.SeriesInstanceUID for s in seg.ReferencedSeriesSequence}
    assert refs == {flair[0].SeriesInstanceUID}  # the first channel's series, by name
    labels = [s.SegmentLabel for s in seg.SegmentSequence]
    assert labels == ["WT", "TC", "ET"]
    # the same inputs again: the same DICOM bytes (UIDs from bundle digest and inputs)
    again = _seg_run(tmp_path / "b", seg_bundle, study)
    for name in ("seg.dcm", "sr.dcm", "volumes.json", "labels.nii.gz"):
        assert (out / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert again["measurements"] == result["measurements"]


def test_segmentation_refuses_a_study_without_the_channels(
    tmp_path: Path, seg_bundle: Path, study: dict[str, list[Path]]
) -> None:
    payload = _payload(tmp_path / "o", "segmentation", {"FLAIR": study["FLAIR"]},
                       bundle=str(seg_bundle))  # fmt: skip
    with pytest.raises(BundleInputError, match="needs channels"):
        run_task(payload)
    assert not (tmp_path / "o" / VIEW_FOLDER).exists()


def _csv_rows(path: Path) -> dict[str, dict[str, str]]:
    with path.open() as handle:
        return {row["region"]: row for row in csv.DictReader(handle)}


def test_segmentation_with_radiomics_and_radiomics_of_the_seg_agree(
    tmp_path: Path, seg_bundle: Path, study: dict[str, list[Path]]
) -> None:
    fast = {"families": ["morph", "stat", "glcm"]}
    inputs = {name: study[name] for name in CHANNELS}
    first = run_task(_payload(tmp_path / "s", "segmentation+radiomics", inputs,
                              bundle=str(seg_bundle), options={"radiomics": fast}))  # fmt: skip
    measures = {m["name"]: m["value"] for m in first["measurements"]}
    volume = measures["radiomics.WT.morph_volume"]
    assert volume == pytest.approx(measures["volume_ml.WT"] * 1000.0, rel=0.15)
    assert measures["radiomics.ET.stat_mean"] != measures["radiomics.WT.stat_mean"]
    rows = _csv_rows(tmp_path / "s" / "radiomics.csv")
    assert list(rows) == ["WT", "TC", "ET"]
    assert float(rows["WT"]["morph_volume"]) == volume
    # the SEG written above as the mask of a radiomics-only task (default settings: every
    # family): the same values for the features both computed
    seg = tmp_path / "s" / "seg.dcm"
    second = run_task(_payload(tmp_path / "r", "radiomics", {"image": study["FLAIR"],
                               "mask": [seg]}))  # fmt: skip
    again = {m["name"]: m["value"] for m in second["measurements"]}
    assert "radiomics.WT.ngldm_dc_entr_3d" in again
    assert sum(name.startswith("radiomics.WT.") for name in again) > 150
    shared = {k for k in measures if k.startswith("radiomics.")}
    assert len(shared) > 30
    assert shared <= set(again)
    for name in shared:
        assert again[name] == pytest.approx(measures[name], rel=1e-6, abs=1e-9), name


def test_radiomics_needs_image_and_mask(tmp_path: Path, study: dict[str, list[Path]]) -> None:
    with pytest.raises(ValueError, match="'image' and 'mask'"):
        run_task(_payload(tmp_path / "o", "radiomics", {"image": study["FLAIR"]}))
    inputs = {"image": study["FLAIR"], "mask": study["T2w"][:1]}  # an MR slice, not a SEG
    with pytest.raises(ValueError, match="not a DICOM Segmentation"):
        run_task(_payload(tmp_path / "p", "radiomics", inputs))
    bad = {"radiomics": {"bin_number": 0}}
    with pytest.raises(ConfigError, match="job option radiomics: bin_number"):
        run_task(_payload(tmp_path / "q", "radiomics", inputs, options=bad))


def test_classification_writes_prediction_and_probability(
    tmp_path: Path, cls_bundle: Path, study: dict[str, list[Path]]
) -> None:
    inputs = {"t2": study["T2w"], "flair": study["FLAIR"]}  # FLAIR by alias, not by order
    result = run_task(_payload(tmp_path / "c", "classification", inputs, bundle=str(cls_bundle)))
    assert set(_by_name(result)) == {"prediction.json"}
    doc = json.loads((tmp_path / "c" / "prediction.json").read_text())
    measures = {m["name"]: m["value"] for m in result["measurements"]}
    assert measures["probability.high"] == doc["output"]
    assert 0.0 < doc["output"] < 1.0
    assert doc["decision_label"] == ("high" if doc["output"] >= 0.5 else "low")
    assert doc["case"] == STUDY_UID
    assert math.isfinite(measures["uncertainty"])
    t2 = run_task(_payload(tmp_path / "d", "classification", {"flair": study["T2w"]},
                           bundle=str(cls_bundle)))  # fmt: skip
    other = {m["name"]: m["value"] for m in t2["measurements"]}
    assert other["probability.high"] != measures["probability.high"]  # it read the series


def test_tasks_module_does_not_import_torch() -> None:
    from _notorch import run_without_torch

    done = run_without_torch(
        "import medai.service.tasks, medai.service.task_work, medai.service.deliver\n"
        "import sys; print('torch' in sys.modules)"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


# -- delivery ---------------------------------------------------------------------------
def _delivery_rows(context: Any, files: dict[str, Path], destination: str) -> list[int]:
    """A job, a task, its DICOM outputs under ROOT/results/<task>/ and their deliveries."""
    results = context.config.results
    with context.factory() as session:
        user = session.query(User).filter_by(name="alice").one()
        job = Job(project_id=1, user_id=user.id, kind="segmentation", selection="select study",
                  level="study")  # fmt: skip
        session.add(job)
        session.flush()
        task = Task(job_id=job.id, project_id=1, user_id=user.id, seq=1, unit="s1", state="done")
        session.add(task)
        session.flush()
        folder = results / str(task.id)
        folder.mkdir(parents=True)
        ids = []
        for name, source in files.items():
            (folder / name).write_bytes(source.read_bytes())
            sop = pydicom.dcmread(source, stop_before_pixels=True).SOPInstanceUID
            output = Output(task_id=task.id, name=name, kind=name.split(".")[0],
                            path=f"{task.id}/{name}", sha256="0" * 64, sop_uid=sop)  # fmt: skip
            session.add(output)
            session.flush()
            delivery = Delivery(output_id=output.id, destination=destination)
            session.add(delivery)
            session.flush()
            ids.append(delivery.id)
        session.commit()
    return ids


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory, seg_bundle: Path,
            study: dict[str, list[Path]]) -> Path:  # fmt: skip
    out = tmp_path_factory.mktemp("task")
    _seg_run(out, seg_bundle, study)
    return out


def test_deliver_sends_seg_and_sr_to_a_storage_scp(tmp_path: Path, results: Path) -> None:
    scp = StorageSCP("ARCHIVE")
    try:
        dest = Destination(name="pacs", port=scp.port, ae_title="ARCHIVE")
        context = service_context(tmp_path / "root", destinations=[dest], ae_title="MEDAI")
        populate(context)
        files = {"seg.dcm": results / "seg.dcm", "sr.dcm": results / "sr.dcm"}
        ids = _delivery_rows(context, files, "pacs")
        outcomes = send_pending(context, now=1000.0, timeout_s=5)
        assert [o.delivery_id for o in outcomes] == ids
        assert [o.state for o in outcomes] == [DeliveryState.SENT] * 2
        assert send_pending(context, now=1001.0) == []  # nothing left to send
    finally:
        scp.server.shutdown()
    sent = {ds.SOPClassUID: ds for ds in scp.received}
    seg = pydicom.dcmread(results / "seg.dcm", stop_before_pixels=True)
    sr = pydicom.dcmread(results / "sr.dcm", stop_before_pixels=True)
    assert sent[SEG_SOP].SOPInstanceUID == seg.SOPInstanceUID
    assert sent[sr.SOPClassUID].SOPInstanceUID == sr.SOPInstanceUID
    assert {ds.StudyInstanceUID for ds in scp.received} == {STUDY_UID}
    assert set(scp.callers) == {"MEDAI"}
    with context.factory() as session:
        rows = [session.get_one(Delivery, i) for i in ids]
        assert all(r.sent_at is not None and r.attempts == 1 for r in rows)
        from medai.service.db import AuditEntry

        exports = session.query(AuditEntry).filter_by(action="export").all()
        assert {e.target for e in exports} == {seg.SOPInstanceUID, sr.SOPInstanceUID}
        assert {e.actor for e in exports} == {"alice"}
    context.close()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_destination_retries_then_fails(tmp_path: Path, results: Path) -> None:
    dest = Destination(name="gone", port=_free_port(), max_attempts=3)
    context = service_context(tmp_path / "root", destinations=[dest])
    populate(context)
    [delivery_id] = _delivery_rows(context, {"seg.dcm": results / "seg.dcm"}, "gone")
    now = 5000.0
    first = send_pending(context, now=now, timeout_s=2)
    assert [o.state for o in first] == [DeliveryState.RETRYING]
    assert "not reachable" in str(first[0].error)
    assert send_pending(context, now=now + 1) == []  # backing off
    now += backoff_seconds(1)
    assert [o.state for o in send_pending(context, now=now, timeout_s=2)] == ["retrying"]
    with context.factory() as session:
        row = session.get_one(Delivery, delivery_id)
        assert row.not_before == pytest.approx(now + backoff_seconds(2))
        assert backoff_seconds(2) == 2 * backoff_seconds(1)
    now += backoff_seconds(2)
    last = send_pending(context, now=now, timeout_s=2)
    assert [(o.state, o.attempts) for o in last] == [(DeliveryState.FAILED, 3)]
    assert send_pending(context, now=now + 1e6) == []  # failed for good
    with context.factory() as session:
        row = session.get_one(Delivery, delivery_id)
        assert row.state == "failed"
        assert "not reachable" in str(row.error)
    context.close()


def test_stow_delivery_posts_multipart_dicom(tmp_path: Path, results: Path) -> None:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    bodies: list[tuple[str, str, bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers["Content-Length"])
            bodies.append((self.path, self.headers["Content-Type"], self.rfile.read(length)))
            self.send_response(200 if len(bodies) == 1 else 409)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
        dest = Destination(name="web", protocol="stow", url=url, max_attempts=2)
        context = service_context(tmp_path / "root", destinations=[dest])
        populate(context)
        files = {"seg.dcm": results / "seg.dcm", "sr.dcm": results / "sr.dcm"}
        _delivery_rows(context, files, "web")
        outcomes = send_pending(context, now=10.0, timeout_s=5)
    finally:
        server.shutdown()
        server.server_close()
    assert [o.state for o in outcomes] == ["sent", "retrying"]
    assert "HTTP 409" in str(outcomes[1].error)
    path, kind, body = bodies[0]
    assert path == "/dicom-web/studies"
    assert kind.startswith('multipart/related; type="application/dicom"')
    assert (results / "seg.dcm").read_bytes() in body
    context.close()


def test_backoff_grows_and_is_capped() -> None:
    waits = [backoff_seconds(n) for n in range(1, 12)]
    assert waits[:3] == [10.0, 20.0, 40.0]
    assert max(waits) == 900.0
    assert np.all(np.diff(waits) >= 0)


def test_the_executor_runs_a_task_in_a_child_process(
    tmp_path: Path, seg_bundle: Path, study: dict[str, list[Path]]
) -> None:
    import time

    from medai.service.executor import LocalExecutor

    out = tmp_path / "staging"
    inputs = {name: study[name] for name in CHANNELS}
    payload = _payload(out, "segmentation", inputs, bundle=str(seg_bundle))
    finished: list[Any] = []
    with LocalExecutor(1) as pool:
        pool.submit(3, "medai.service.tasks:run_task", payload)
        deadline = time.monotonic() + 60
        while not finished and time.monotonic() < deadline:
            finished = pool.poll()
            time.sleep(0.05)
    assert [(f.task_id, f.ok) for f in finished] == [(3, True)], finished
    result = finished[0].result
    assert result is not None
    assert {"seg.dcm", "sr.dcm"} <= set(_by_name(result))
    assert sorted(p.name for p in out.iterdir()) == sorted(i["path"] for i in result["outputs"])

"""The service end to end, as CI sees it: ``medai serve`` in its own process on loopback,
set up with the CLI; two studies sent (dcmtk ``storescu`` and pynetdicom); QIDO-RS finds
them; a study-level selection picks both; a segmentation job's SEG and SR arrive at a
second DICOM node (a pynetdicom storage SCP) and reference the input study; one real run
of every other job kind; and a noop job on a second server that runs tasks on Ray."""

from __future__ import annotations

import io
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pydicom
import pytest
import yaml
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, StoragePresentationContexts
from typer.testing import CliRunner

from _dicom_outputs import dicom_tool
from _service import (
    CHANNELS,
    STUDY_UID,
    Server,
    StorageSCP,
    bearer,
    export_cls_bundle,
    export_seg_bundle,
    phantom_study,
)
from medai.cli.main import app

SECOND_UID = "1.2.826.0.1.3680043.8.498.79"
SEG_SOP = "1.2.840.10008.5.1.4.1.1.66.4"
JOB_TIMEOUT = 120.0
API = "/api/projects/glioma"
WEB = "/dicomweb/projects/glioma"
FOUR = " and ".join(
    f'has series {name} (SeriesDescription = "{name}"'
    + (")" if name == "FLAIR" else " and FrameOfReferenceUID = FLAIR.FrameOfReferenceUID)")
    for name in CHANNELS
)
BRAIN = (
    'select study where has series flair (Modality = "MR" and SeriesDescription = "FLAIR") '
    'and has series t1gd (Modality = "MR" and SeriesDescription ~ "t1.*gd" '
    "and FrameOfReferenceUID = flair.FrameOfReferenceUID)"
)
FAST_RADIOMICS = {"radiomics": {"families": ["morph", "stat"]}}


@dataclass
class Site:
    """The running service, its user's token, the destination node and the sent studies."""

    server: Server
    token: str
    pacs: StorageSCP | None
    studies: dict[str, dict[str, list[Path]]]

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self.token)

    def get(self, url: str, *, accept: str | None = None, **kwargs: Any) -> httpx.Response:
        headers = self.headers | ({"Accept": accept} if accept else {})
        reply = self.server.http.get(url, headers=headers, **kwargs)
        assert reply.status_code == 200, f"GET {url}: {reply.status_code} {reply.text}"
        return reply

    def post(self, url: str, body: dict[str, Any]) -> dict[str, Any]:
        reply = self.server.http.post(url, headers=self.headers, json=body)
        assert reply.status_code in (200, 201), f"POST {url}: {reply.status_code} {reply.text}"
        result: dict[str, Any] = reply.json()
        return result


def _cli(*args: str) -> str:
    result = CliRunner().invoke(app, ["serve", *args])
    assert result.exit_code == 0, result.output
    return result.output


def _setup(root: Path, pacs_port: int | None = None) -> str:
    """service.yaml (quick completion, the PACS destination), a project and a user; the token."""
    root.mkdir(parents=True)
    settings: dict[str, Any] = {"quiet_seconds": 0.5, "poll_seconds": 0.2, "workers": 2}
    if pacs_port is not None:
        settings["destinations"] = [
            {"name": "pacs", "protocol": "dimse", "port": pacs_port, "ae_title": "PACS"}
        ]
    (root / "service.yaml").write_text(yaml.safe_dump(settings))
    _cli("project", "add", str(root), "glioma", "--ae", "GLIOMA", "--caller", "STORESCU",
         "--caller", "SCANNER")  # fmt: skip
    output = _cli("user", "add", str(root), "alice", "--project", "glioma", "--cpu", "2")
    return next(word for word in output.split() if word.startswith("medai_"))


def _send(port: int, files: list[Path]) -> list[int]:
    """C-STORE ``files`` with pynetdicom (calling SCANNER) over one association."""
    ae = AE(ae_title="SCANNER")
    for cx in StoragePresentationContexts[:100]:
        ae.add_requested_context(str(cx.abstract_syntax), ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="GLIOMA")
    assert assoc.is_established
    statuses = [int(assoc.send_c_store(pydicom.dcmread(f)).Status) for f in files]
    assoc.release()
    return statuses


def _until(condition: Any, what: str, server: Server, timeout: float = JOB_TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}; the server's log:\n{server.tail()}")


def _run_job(site: Site, body: dict[str, Any]) -> list[dict[str, Any]]:
    """Submit a job, wait (bounded) until its tasks end; they must all be done."""
    job = site.post(f"{API}/jobs", body)
    assert job["tasks"] > 0, job

    def ended() -> list[dict[str, Any]] | None:
        tasks: list[dict[str, Any]] = site.get(f"{API}/tasks", params={"job": job["id"]}).json()
        final = all(t["state"] in ("done", "failed", "cancelled") for t in tasks)
        return tasks if final else None

    tasks = _until(ended, f"job {job['id']} ({body['kind']})", site.server)
    assert [t["state"] for t in tasks] == ["done"] * job["tasks"], tasks
    return tasks


def _measures(site: Site, task_id: int) -> dict[str, float]:
    table = pd.read_csv(io.StringIO(site.get(f"{API}/measurements.csv").text))
    (row,) = table[table["task"] == task_id].to_dict("records")
    return {str(k): float(v) for k, v in row.items() if isinstance(v, float) and not pd.isna(v)}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    base = tmp_path_factory.mktemp("e2e")
    studies = {
        STUDY_UID: phantom_study(base / "first", study_description="baseline"),
        SECOND_UID: phantom_study(
            base / "second", patient_id="P002", study_uid=SECOND_UID, study_description="follow-up"
        ),
    }
    pacs = StorageSCP("PACS")
    root = base / "root"
    token = _setup(root, pacs.port)
    server = Server(root)  # it starts while the bundles are made and registered
    try:
        _cli("bundle", "add", str(root), str(export_seg_bundle(base / "seg", base / "first")))
        _cli("bundle", "add", str(root), str(export_cls_bundle(base / "cls", base / "first")))
        server.wait()
        yield Site(server, token, pacs, studies)
    finally:
        pacs.server.shutdown()
        assert server.stop() == 0, server.tail()  # SIGTERM: a clean stop


@pytest.fixture(scope="module")
def ingested(site: Site) -> Site:
    """The first study sent with dcmtk's storescu, the second with pynetdicom."""
    first = [str(p) for name in CHANNELS for p in site.studies[STUDY_UID][name]]
    run = subprocess.run(
        [dicom_tool("storescu"), "-aet", "STORESCU", "-aec", "GLIOMA", "127.0.0.1",
         str(site.server.dicom_port), *first],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    second = [p for name in CHANNELS for p in site.studies[SECOND_UID][name]]
    assert set(_send(site.server.dicom_port, second)) == {0x0000}

    def both_complete() -> bool:
        units = site.post(f"{API}/selections/dry-run", {"text": "select study"})["units"]
        return len(units) == 2

    _until(both_complete, "both studies to complete", site.server, timeout=30)
    return site


def test_qido_finds_both_studies(ingested: Site) -> None:
    found = ingested.get(f"{WEB}/studies", accept="application/dicom+json")
    uids = {study["0020000D"]["Value"][0] for study in found.json()}
    assert uids == {STUDY_UID, SECOND_UID}
    series = ingested.get(f"{WEB}/studies/{SECOND_UID}/series").json()
    assert sorted(s["0008103E"]["Value"][0] for s in series) == sorted(CHANNELS)


def test_a_study_level_selection_picks_both_studies(ingested: Site) -> None:
    dry = ingested.post(f"{API}/selections/dry-run", {"text": BRAIN})
    assert dry["level"] == "study"
    assert sorted(u["study_uid"] for u in dry["units"]) == sorted([STUDY_UID, SECOND_UID])
    for unit in dry["units"]:
        sent = ingested.studies[unit["study_uid"]]
        for alias, name in (("flair", "FLAIR"), ("t1gd", "t1gd")):
            expected = pydicom.dcmread(sent[name][0], stop_before_pixels=True).SeriesInstanceUID
            assert unit["series"][alias] == [expected]
    assert dry["excluded"] == []


def _series_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID)


@pytest.fixture(scope="module")
def segmented(ingested: Site) -> list[dict[str, Any]]:
    """The segmentation job on both studies; its tasks once all are done."""
    body = {"kind": "segmentation", "bundle": "seg", "selection": f"select study where {FOUR}"}
    return _run_job(ingested, body)


def test_segmentation_results_arrive_at_the_pacs_and_reference_the_input(
    ingested: Site, segmented: list[dict[str, Any]]
) -> None:
    site = ingested
    pacs = site.pacs
    assert pacs is not None

    def delivered() -> list[pydicom.Dataset] | None:
        with pacs.lock:
            got = list(pacs.received)
        return got if len(got) >= 2 * len(segmented) else None

    received = _until(delivered, "the SEG and SR of every task at the PACS", site.server, 60)
    assert set(pacs.callers) == {"MEDAI"}
    by_study: dict[str, set[str]] = {}
    for ds in received:
        by_study.setdefault(ds.StudyInstanceUID, set()).add(ds.Modality)
    assert by_study == {STUDY_UID: {"SEG", "SR"}, SECOND_UID: {"SEG", "SR"}}
    for ds in (d for d in received if d.SOPClassUID == SEG_SOP):
        sent = site.studies[ds.StudyInstanceUID]
        (referenced,) = {s.SeriesInstanceUID for s in ds.ReferencedSeriesSequence}
        assert referenced == _series_uid(sent["FLAIR"][0])  # the first channel's series
    for task in segmented:
        outputs = site.get(f"{API}/tasks/{task['id']}/outputs").json()
        by_name = {o["name"]: o for o in outputs}
        assert {"seg.dcm", "sr.dcm", "labels.nii.gz", "volumes.json"} <= set(by_name)
        assert {by_name["seg.dcm"]["sop_uid"], by_name["sr.dcm"]["sop_uid"]} <= {
            str(ds.SOPInstanceUID) for ds in received
        }
    table = pd.read_csv(io.StringIO(site.get(f"{API}/measurements.csv").text))
    assert sorted(table["task"]) == sorted(t["id"] for t in segmented)
    assert (table["volume_ml.WT"] > table["volume_ml.ET"]).all()
    assert (table["volume_ml.ET"] > 0).all()


def test_segmentation_with_radiomics_runs(ingested: Site) -> None:
    selection = f'select study where StudyDescription = "follow-up" and {FOUR}'
    body = {"kind": "segmentation+radiomics", "bundle": "seg", "options": FAST_RADIOMICS,
            "selection": selection}  # fmt: skip
    tasks = _run_job(ingested, body)
    assert [t["unit"] for t in tasks] == [SECOND_UID]
    measures = _measures(ingested, tasks[0]["id"])
    volume = measures["radiomics.WT.morph_volume"]
    assert volume == pytest.approx(measures["volume_ml.WT"] * 1000.0, rel=0.15)
    names = {o["name"] for o in ingested.get(f"{API}/tasks/{tasks[0]['id']}/outputs").json()}
    assert {"radiomics.csv", "seg.dcm"} <= names


def test_radiomics_of_the_produced_seg_stored_back_by_stow(
    ingested: Site, segmented: list[dict[str, Any]]
) -> None:
    site = ingested
    first = next(t for t in segmented if t["unit"] == STUDY_UID)
    seg = site.get(f"{API}/tasks/{first['id']}/outputs/seg.dcm").content
    boundary = uuid.uuid4().hex
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + seg
        + f"\r\n--{boundary}--\r\n".encode()
    )
    kind = f'multipart/related; type="application/dicom"; boundary={boundary}'
    stored = site.server.http.post(
        f"{WEB}/studies", content=body, headers=site.headers | {"Content-Type": kind}
    )
    assert stored.status_code == 200, stored.text
    selection = ('select study where has series image (SeriesDescription = "FLAIR") '
                 'and has series mask (Modality = "SEG")')  # fmt: skip

    def picked() -> list[dict[str, Any]]:
        units: list[dict[str, Any]] = site.post(f"{API}/selections/dry-run",
                                                {"text": selection})["units"]  # fmt: skip
        return units

    (unit,) = _until(picked, "the study with the SEG to complete", site.server, timeout=30)
    assert unit["study_uid"] == STUDY_UID
    tasks = _run_job(site, {"kind": "radiomics", "selection": selection,
                            "options": FAST_RADIOMICS})  # fmt: skip
    measures = _measures(site, tasks[0]["id"])
    segmented_volume = _measures(site, first["id"])["volume_ml.WT"]
    assert measures["radiomics.WT.morph_volume"] == pytest.approx(
        segmented_volume * 1000.0, rel=0.15
    )


def test_classification_runs(ingested: Site) -> None:
    selection = (
        'select study where StudyDescription = "follow-up" and '
        'has series FLAIR (SeriesDescription = "FLAIR")'
    )
    (task,) = _run_job(ingested, {"kind": "classification", "bundle": "cls",
                                  "selection": selection})  # fmt: skip
    doc = ingested.get(f"{API}/tasks/{task['id']}/outputs/prediction.json").json()
    assert doc["case"] == task["unit"] == SECOND_UID
    assert 0.0 < doc["output"] < 1.0
    assert doc["decision_label"] == ("high" if doc["output"] >= 0.5 else "low")
    assert _measures(ingested, task["id"])["probability.high"] == pytest.approx(doc["output"])


def test_noop_lists_each_units_inputs(ingested: Site) -> None:
    tasks = _run_job(ingested, {"kind": "noop", "selection": BRAIN})
    for task in tasks:
        listing = ingested.get(f"{API}/tasks/{task['id']}/outputs/inputs.json").json()
        assert sorted(listing) == ["flair", "t1gd"]
        sent = ingested.studies[task["unit"]]
        assert len(listing["flair"]) == len(sent["FLAIR"])


@pytest.mark.slow
def test_a_noop_job_runs_on_ray(tmp_path: Path) -> None:
    root = tmp_path / "ray-root"
    token = _setup(root)
    server = Server(root, "--executor", "ray", env={"RAY_AUTH_MODE": "disabled"})
    try:
        server.wait()
        site = Site(server, token, pacs=None, studies={})
        files = phantom_study(tmp_path / "study")
        assert set(_send(server.dicom_port, files["FLAIR"] + files["t1gd"])) == {0x0000}
        _until(lambda: site.post(f"{API}/selections/dry-run", {"text": BRAIN})["units"],
               "the study to complete", server, timeout=30)  # fmt: skip
        (task,) = _run_job(site, {"kind": "noop", "selection": BRAIN})
        listing = site.get(f"{API}/tasks/{task['id']}/outputs/inputs.json").json()
        assert {alias: len(names) for alias, names in listing.items()} == {
            "flair": len(files["FLAIR"]),
            "t1gd": len(files["t1gd"]),
        }
    finally:
        assert server.stop() == 0, server.tail()
    assert "submitted to Ray" in server.log.read_text(errors="replace")


def test_an_unknown_executor_is_refused_before_anything_starts(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["serve", str(tmp_path / "root"), "--executor", "slurm"])
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert "executor" in message
    assert "'local' or 'ray'" in message
    assert not (tmp_path / "root" / "server.json").exists()

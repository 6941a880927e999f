"""``medai demo --serve``: the demo's service set-up runs a standing segmentation job on a
study sent to it by C-STORE, with the token it wrote, as the README says."""

from __future__ import annotations

import time
from pathlib import Path

import pydicom
import yaml

from _service import Server, bearer, export_seg_bundle, phantom_study
from medai.cli.demo_serve import BUNDLE, prepare_demo_service, send_study


def test_the_demo_service_segments_the_study_it_is_sent(tmp_path: Path) -> None:
    files = phantom_study(tmp_path / "study")
    bundle = export_seg_bundle(tmp_path / "bundle", tmp_path / "study")
    root = tmp_path / "out" / "service"
    token = prepare_demo_service(root, bundle, quiet_seconds=0.5)
    assert (root / "demo_token.txt").read_text().strip() == token
    assert (root / "demo_token.txt").stat().st_mode & 0o077 == 0
    assert yaml.safe_load((root / "service.yaml").read_text())["quiet_seconds"] == 0.5
    assert (root / "bundles" / BUNDLE / "bundle.json").is_file()
    server = Server(root).wait()
    try:
        sent = send_study(tmp_path / "study", server.dicom_port)
        assert sent == sum(len(f) for f in files.values())
        deadline = time.monotonic() + 120
        while True:
            tasks = server.http.get("/api/projects/demo/tasks", headers=bearer(token)).json()
            if tasks and tasks[0]["state"] in ("done", "failed"):
                break
            assert time.monotonic() < deadline, f"no finished task: {tasks} {server.tail()}"
            time.sleep(0.3)
        (task,) = tasks
        assert task["state"] == "done", task["error"]
        outputs = server.http.get(
            f"/api/projects/demo/tasks/{task['id']}/outputs", headers=bearer(token)
        ).json()
        assert {"seg.dcm", "sr.dcm", "labels.nii.gz"} <= {o["name"] for o in outputs}
        seg = server.http.get(
            f"/api/projects/demo/tasks/{task['id']}/outputs/seg.dcm", headers=bearer(token)
        )
        path = tmp_path / "seg.dcm"
        path.write_bytes(seg.content)
        source = pydicom.dcmread(files["FLAIR"][0])
        assert pydicom.dcmread(path).StudyInstanceUID == source.StudyInstanceUID
    finally:
        assert server.stop() == 0

"""How fast ``medai serve`` takes DICOM in, against Orthanc receiving the same study.

Arms (each repeat starts both receivers fresh, empty, in alternating order):

- **C-STORE, dcmtk** ``storescu`` (a separate process, one association) and **C-STORE,
  pynetdicom** (a separate Python process, one association): instances/s for a 155-slice,
  4-series, 240 × 240 MR study (620 instances, 112 kB each);
- **STOW-RS**: the same study, 20 instances per request, from this process (same client
  code for both);
- **metadata**: QIDO-RS/WADO-RS series and study metadata of a 1,000-instance series
  (median of 7 requests each, after one untimed request);
- **memory**: resident memory of each server process tree when idle after start, and its
  peak over the whole repeat (``VmHWM``).

medai alone (Orthanc has no jobs):

- **study → queued**: a standing segmentation-style job (study level: a FLAIR series and a
  T1 series sharing a frame of reference) is set up; the study is sent with ``storescu``;
  seconds from the first byte sent to the task being visible in the job list (includes the
  configured quiet period, printed beside it);
- **tasks/s**: 200 no-op tasks (series level over 200 one-instance series) on the local
  pool, from submission until all are done, and the scheduler's own decisions per second
  on 10,000 queued tasks (in process).

Orthanc 1.10 cannot bind to loopback only, so the script re-runs itself in a private
network namespace (``unshare --net``, ``lo`` up): nothing is reachable from outside.
Needs root for ``unshare``, Debian ``orthanc orthanc-dicomweb dcmtk``. Figures for the
notes want the machine otherwise idle::

    .venv/bin/python benchmarks/ingest.py --repeats 3 --json ingest.json

Quick check of the script::

    .venv/bin/python benchmarks/ingest.py --repeats 1 --slices 20 --metadata-instances 100
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ingest_peers as peers

STANDING = (
    'select study where has series flair (SeriesDescription in ("FLAIR", "T2-FLAIR")) '
    'and has series t1 (SeriesDescription ~ "^t1" and '
    "FrameOfReferenceUID = flair.FrameOfReferenceUID)"
)


def _series(image: np.ndarray, folder: Path, **tags: Any) -> list[Path]:
    from medai.image import ScalarImage
    from medai.io import write_dicom_series

    affine = np.eye(4)
    return write_dicom_series(
        ScalarImage(image[None].astype(np.float32), affine), folder, patient_name="Bench^P",
        **tags,
    )  # fmt: skip


def make_data(work: Path, *, slices: int, meta_instances: int, units: int) -> dict[str, Any]:
    """The MR study (4 series sharing a frame of reference), the 1,000-instance series and
    ``units`` one-instance series; files listed per set."""
    rng = np.random.default_rng(0)
    study_uid = "1.2.826.0.1.3680043.8.498.9001"
    study: list[Path] = []
    for number, name in enumerate(("FLAIR", "T1w", "t1gd", "T2w"), start=1):
        image = rng.normal(300, 40, (240, 240, slices)).clip(0, 4000)
        study += _series(
            image, work / "study" / name, patient_id="BENCH1", study_uid=study_uid,
            series_number=number, series_description=name,
            extra={"FrameOfReferenceUID": "1.2.826.0.1.3680043.8.498.9002"},
        )  # fmt: skip
    big = _series(
        rng.normal(300, 40, (64, 64, meta_instances)), work / "big" / "s", patient_id="BENCH2",
        study_uid="1.2.826.0.1.3680043.8.498.9003", series_description="big",
    )  # fmt: skip
    tiny: list[Path] = []
    for i in range(units):
        tiny += _series(
            rng.normal(300, 40, (16, 16, 1)), work / "tiny" / f"s{i}", patient_id="BENCH3",
            study_uid="1.2.826.0.1.3680043.8.498.9004", series_number=i + 1,
            series_description=f"unit {i}",
        )  # fmt: skip
    return {"study": study, "big": big, "tiny": tiny}


def _timed_get(client: httpx.Client, url: str, repeats: int = 7) -> float:
    client.get(url).raise_for_status()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        answer = client.get(url)
        answer.raise_for_status()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def metadata_seconds(receiver: peers.Receiver, files: list[Path]) -> dict[str, float]:
    import pydicom

    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    study, series = ds.StudyInstanceUID, ds.SeriesInstanceUID
    with httpx.Client(timeout=120, headers=receiver.headers) as client:
        return {
            "series_metadata_s": _timed_get(
                client, f"{receiver.http}/studies/{study}/series/{series}/metadata"
            ),
            "study_metadata_s": _timed_get(client, f"{receiver.http}/studies/{study}/metadata"),
            "qido_instances_s": _timed_get(
                client, f"{receiver.http}/studies/{study}/series/{series}/instances"
            ),
        }


def one_repeat(name: str, data: dict[str, Any], work: Path) -> dict[str, Any]:
    """Every ingest arm on a fresh receiver ``name`` (a new one per arm, so each starts empty)."""
    out: dict[str, Any] = {}
    n = len(data["study"])
    for arm, send in (
        ("storescu", peers.send_storescu),
        ("pynetdicom", peers.send_pynetdicom),
        ("stow", peers.send_stow),
    ):
        receiver = _start(name, work / f"{name}-{arm}")
        if arm == "storescu":
            out["idle_rss_mib"] = receiver.rss_mib()[0]
        seconds = send(receiver, data["study"])
        out[f"{arm}_per_s"] = n / seconds
        if arm == "storescu":
            peers.send_storescu(receiver, data["big"])
            out.update(metadata_seconds(receiver, data["big"]))
        out[f"{arm}_peak_rss_mib"] = receiver.rss_mib()[1]
        receiver.stop()
    return out


def _start(name: str, work: Path) -> peers.Receiver:
    if name == "Orthanc":
        return peers.start_orthanc(work)
    receiver, _ = peers.start_medai(work)
    return receiver


def study_to_queued(data: dict[str, Any], work: Path, *, quiet: float) -> float:
    """Seconds from the first instance sent to the standing job's task being listed."""
    receiver, _ = peers.start_medai(work, quiet_seconds=quiet)
    api = receiver.http.split("/dicomweb")[0] + "/api/projects/bench"
    with httpx.Client(timeout=60, headers=receiver.headers) as client:
        answer = client.post(
            f"{api}/jobs", json={"kind": "noop", "selection": STANDING, "standing": True}
        )
        answer.raise_for_status()
        started = time.perf_counter()
        sender = subprocess.Popen(
            ["env", "TCP_NODELAY=1", "storescu", "-aet", peers.CALLER, "-aec",
             receiver.ae_title, "127.0.0.1", str(receiver.dicom_port), *map(str, data["study"])],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        while True:
            if client.get(f"{api}/tasks").json():
                seconds = time.perf_counter() - started
                break
            if time.perf_counter() - started > 300:
                raise RuntimeError("no task was queued within 300 s")
            time.sleep(0.2)  # each look is an audited API call: do not load the index
        sender.wait()
    receiver.stop()
    return seconds


def tasks_per_second(data: dict[str, Any], work: Path, *, workers: int) -> float:
    """No-op tasks per second through the whole service (submit → all done)."""
    receiver, _ = peers.start_medai(work, workers=workers, quiet_seconds=0.2)
    peers.send_storescu(receiver, data["tiny"])
    api = receiver.http.split("/dicomweb")[0] + "/api/projects/bench"
    n = len(data["tiny"])
    with httpx.Client(timeout=60, headers=receiver.headers) as client:
        time.sleep(1.0)  # the study completes after its quiet period
        started = time.perf_counter()
        answer = client.post(f"{api}/jobs", json={"kind": "noop", "selection": "select series"})
        answer.raise_for_status()
        while True:
            tasks = client.get(f"{api}/tasks").json()
            if len(tasks) >= n and all(t["state"] == "done" for t in tasks):
                seconds = time.perf_counter() - started
                break
            if time.perf_counter() - started > 600:
                raise RuntimeError("the no-op tasks did not finish within 600 s")
            time.sleep(0.1)
    receiver.stop()
    return n / seconds


def scheduler_decisions_per_second(n: int = 10_000) -> float:
    """``plan_starts`` calls per second on ``n`` queued tasks of 10 users (in process)."""
    from medai.service.scheduler import Allocation, Capacity, QueuedTask, plan_starts

    users = [f"u{i}" for i in range(10)]
    queued = [QueuedTask(i, users[i % 10], i) for i in range(n)]
    allocations = {u: Allocation(cpu_slots=2) for u in users}
    started = time.perf_counter()
    calls = 0
    while time.perf_counter() - started < 2.0:
        plan_starts(queued, [], allocations, Capacity(cpu_slots=8), now=0.0)
        calls += 1
    return calls / (time.perf_counter() - started)


def _summary(rows: list[dict[str, Any]], key: str) -> str:
    values = [r[key] for r in rows]
    if len(values) == 1:
        return f"{values[0]:.3g}"
    return f"{statistics.median(values):.3g} [{min(values):.3g}–{max(values):.3g}]"


def report(result: dict[str, Any]) -> str:
    medai, orthanc = result["medai"], result["Orthanc"]
    lines = [
        f"{result['instances']} instances per study; {len(medai)} repeat(s); "
        "median [min–max] over repeats",
        "| measure | medai | Orthanc | medai / Orthanc per repeat |",
        "|---|---|---|---|",
    ]
    for key, label in (
        ("storescu_per_s", "C-STORE storescu, instances/s"),
        ("pynetdicom_per_s", "C-STORE pynetdicom, instances/s"),
        ("stow_per_s", "STOW-RS, instances/s"),
        ("series_metadata_s", f"series metadata, {result['metadata_instances']} inst., s"),
        ("study_metadata_s", "study metadata, s"),
        ("qido_instances_s", "QIDO instances of the series, s"),
        ("idle_rss_mib", "idle RSS, MiB"),
        ("storescu_peak_rss_mib", "peak RSS during C-STORE + metadata, MiB"),
    ):
        ratios = ", ".join(f"{m[key] / o[key]:.2f}" for m, o in zip(medai, orthanc, strict=True))
        lines.append(f"| {label} | {_summary(medai, key)} | {_summary(orthanc, key)} | {ratios} |")
    lines += [
        "",
        f"study → queued (quiet period {result['quiet_seconds']} s): "
        + ", ".join(f"{s:.2f} s" for s in result["study_to_queued_s"]),
        f"no-op tasks through the service ({result['workers']} workers): "
        + ", ".join(f"{s:.1f}/s" for s in result["tasks_per_s"]),
        f"scheduler plan_starts on 10,000 queued tasks: {result['decisions_per_s']:.1f} calls/s",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--slices", type=int, default=155)
    parser.add_argument("--metadata-instances", type=int, default=1000)
    parser.add_argument("--units", type=int, default=200)
    parser.add_argument("--quiet", type=float, default=2.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if os.environ.get("MEDAI_BENCH_NETNS") != "1":
        inner = " ".join(map(_quote, [sys.executable, *sys.argv]))
        command = f"ip link set lo up && MEDAI_BENCH_NETNS=1 exec {inner}"
        raise SystemExit(subprocess.call(["unshare", "--net", "sh", "-c", command]))
    work = Path(tempfile.mkdtemp(prefix="medai-ingest-"))
    try:
        data = make_data(
            work / "data", slices=args.slices, meta_instances=args.metadata_instances,
            units=args.units,
        )  # fmt: skip
        result: dict[str, Any] = {
            "instances": len(data["study"]), "metadata_instances": args.metadata_instances,
            "quiet_seconds": args.quiet, "workers": args.workers, "medai": [], "Orthanc": [],
            "study_to_queued_s": [], "tasks_per_s": [],
        }  # fmt: skip
        for repeat in range(args.repeats):
            order = ("medai", "Orthanc") if repeat % 2 == 0 else ("Orthanc", "medai")
            for name in order:
                result[name].append(one_repeat(name, data, work / f"r{repeat}"))
            result["study_to_queued_s"].append(
                study_to_queued(data, work / f"q{repeat}", quiet=args.quiet)
            )
            result["tasks_per_s"].append(
                tasks_per_second(data, work / f"t{repeat}", workers=args.workers)
            )
        result["decisions_per_s"] = scheduler_decisions_per_second()
        print(report(result))
        if args.json:
            args.json.write_text(json.dumps(result, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


if __name__ == "__main__":
    main()

"""The two DICOM receivers of ``ingest.py``: Orthanc (Debian ``orthanc`` + ``orthanc-dicomweb``)
and ``medai serve``, each started fresh on loopback with an empty archive, and the senders.

Orthanc 1.10 cannot bind to loopback only, so ``ingest.py`` runs everything — both servers
and every sender — inside a network namespace of its own (``unshare --net``, then ``lo``
up): nothing listens beyond this process tree. Both servers flush every instance to disk
before they acknowledge it (Orthanc's ``SyncStorageArea``, medai's fsync + SQLite
``synchronous=FULL``), store uncompressed files, and keep an index (Orthanc: SQLite;
medai: SQLite in WAL mode).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

ORTHANC_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
STUDY_AE = "BENCH"  # the project's AE title (medai) / Orthanc's AE title
CALLER = "SENDER"


@dataclass
class Receiver:
    """A running receiver: where to send DICOM, where its DICOMweb root is, its process."""

    name: str
    process: subprocess.Popen[bytes]
    dicom_port: int
    http: str  # base URL of the DICOMweb service (…/dicom-web or …/dicomweb/projects/P)
    ae_title: str
    headers: dict[str, str]

    def rss_mib(self) -> tuple[float, float]:
        """(current, peak) resident memory of the server and its children, MiB."""
        now = peak = 0.0
        for pid in _tree(self.process.pid):
            status = _status(pid)
            now += status.get("VmRSS", 0.0)
            peak += status.get("VmHWM", 0.0)
        return now / 1024, peak / 1024

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _tree(pid: int) -> list[int]:
    pids = [pid]
    for child in Path(f"/proc/{pid}/task").glob("*/children"):
        for text in child.read_text().split():
            pids += _tree(int(text))
    return sorted(set(pids))


def _status(pid: int) -> dict[str, float]:
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    out = {}
    for line in lines:
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = float(value.split()[0])  # kB
    return out


def _wait_http(url: str, headers: dict[str, str], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, headers=headers, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {seconds:.0f} s")


def start_orthanc(work: Path, *, dicom_port: int = 4242, http_port: int = 8043) -> Receiver:
    """A fresh Orthanc with the DICOMweb plugin, storing under ``work``."""
    if shutil.which("Orthanc") is None or not ORTHANC_PLUGIN.is_file():
        raise SystemExit("install the peer: apt-get install orthanc orthanc-dicomweb")
    work.mkdir(parents=True, exist_ok=True)
    config = {
        "Name": "bench",
        "StorageDirectory": str(work / "storage"),
        "IndexDirectory": str(work / "index"),
        "DicomAet": STUDY_AE,
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": False,
        "StorageCompression": False,
        "SyncStorageArea": True,
        "OverwriteInstances": False,
        "Plugins": [str(ORTHANC_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    path = work / "orthanc.json"
    path.write_text(json.dumps(config, indent=1))
    log = (work / "orthanc.log").open("wb")
    process = subprocess.Popen(["Orthanc", str(path)], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{http_port}"
    _wait_http(f"{base}/system", {})
    return Receiver("Orthanc", process, dicom_port, f"{base}/dicom-web", STUDY_AE, {})


def _medai(*args: str) -> str:
    medai = Path(sys.executable).with_name("medai")
    run = subprocess.run([str(medai), *args], capture_output=True, text=True, check=False)
    if run.returncode != 0:
        raise RuntimeError(f"medai {' '.join(args)} failed:\n{run.stdout}\n{run.stderr}")
    return run.stdout


def start_medai(
    work: Path, *, quiet_seconds: float = 2.0, workers: int = 1, settings: dict | None = None
) -> tuple[Receiver, str]:
    """A fresh ``medai serve`` with project ``bench`` (AE BENCH, caller SENDER) and user
    ``bench``; returns the receiver and the user's token."""
    root = work / "medai"
    root.mkdir(parents=True, exist_ok=True)
    if settings:
        import yaml

        (root / "service.yaml").write_text(yaml.safe_dump(settings))
    _medai("serve", "project", "add", str(root), "bench", "--ae", STUDY_AE, "--caller", CALLER)
    out = _medai(
        "serve", "user", "add", str(root), "bench", "--cpu", "2", "--project", "bench",
        "--role", "owner",
    )  # fmt: skip
    token = next(w for w in out.split() if w.startswith("medai_"))
    log = (work / "medai.log").open("wb")
    medai = Path(sys.executable).with_name("medai")
    process = subprocess.Popen(
        [str(medai), "serve", str(root), "--port", "0", "--dicom-port", "0",
         "--quiet-seconds", str(quiet_seconds), "--workers", str(workers)],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    info_path = root / "server.json"
    deadline = time.monotonic() + 60
    while not info_path.is_file():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"medai serve did not start; see {work / 'medai.log'}")
        time.sleep(0.1)
    info = json.loads(info_path.read_text())
    headers = {"Authorization": f"Bearer {token}"}
    base = f"http://127.0.0.1:{info['http_port']}"
    _wait_http(f"{base}/api/me", headers)
    receiver = Receiver(
        "medai", process, int(info["dicom_port"]), f"{base}/dicomweb/projects/bench", STUDY_AE,
        headers,
    )  # fmt: skip
    return receiver, token


def send_storescu(receiver: Receiver, files: list[Path]) -> float:
    """Seconds for dcmtk's ``storescu`` (one association, every file) to send ``files``.

    ``TCP_NODELAY=1`` is set for it (dcmtk reads it): without it, dcmtk's writes wait on
    the receiver's delayed ACKs and every receiver measures dcmtk at about 18 instances/s.
    """
    args = ["storescu", "-aet", CALLER, "-aec", receiver.ae_title, "127.0.0.1",
            str(receiver.dicom_port)]  # fmt: skip
    env = {**os.environ, "TCP_NODELAY": "1"}  # dcmtk otherwise waits on delayed ACKs
    started = time.perf_counter()
    subprocess.run([*args, *map(str, files)], check=True, capture_output=True, env=env)
    return time.perf_counter() - started


def send_pynetdicom(receiver: Receiver, files: list[Path]) -> float:
    """Seconds for a second Python process to send ``files`` with pynetdicom (one association)."""
    script = Path(__file__).with_name("ingest_send.py")
    run = subprocess.run(
        [sys.executable, str(script), CALLER, receiver.ae_title, str(receiver.dicom_port),
         *map(str, files)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return float(run.stdout.strip().splitlines()[-1])


def send_stow(receiver: Receiver, files: list[Path], *, batch: int = 20) -> float:
    """Seconds to send ``files`` by STOW-RS, ``batch`` instances per request."""
    boundary = "medaibenchboundary"
    with httpx.Client(timeout=120, headers=receiver.headers) as client:
        started = time.perf_counter()
        for first in range(0, len(files), batch):
            parts = []
            for path in files[first : first + batch]:
                parts.append(
                    f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
                    + path.read_bytes()
                    + b"\r\n"
                )
            body = b"".join(parts) + f"--{boundary}--\r\n".encode()
            ctype = f'multipart/related; type="application/dicom"; boundary={boundary}'
            answer = client.post(
                f"{receiver.http}/studies", content=body, headers={"Content-Type": ctype}
            )
            if answer.status_code != 200:
                raise RuntimeError(
                    f"STOW-RS to {receiver.name}: {answer.status_code} {answer.text}"
                )
        return time.perf_counter() - started

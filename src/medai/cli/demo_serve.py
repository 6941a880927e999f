"""``medai demo OUT --serve``: end the demo with the hospital service running on its data.

The service gets a fresh root (``OUT/service``): project ``demo`` (AE title ``DEMO``,
accepting the callers ``DEMO_SCANNER`` and ``STORESCU``), user ``demo`` (its token in
``OUT/service/demo_token.txt``, mode 0600), the demo's segmentation bundle registered as
``glioma-seg``, and a standing segmentation job for every complete study that has the
bundle's contrasts. Once it listens, the demo's DICOM test study is sent to it by C-STORE,
so the job runs while you watch; send more with ``storescu`` (the README says how).
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

from medai.cli.console import console
from medai.fsutil import write_secret_text

__all__ = ["prepare_demo_service", "send_study", "serve_demo"]

PROJECT, AE_TITLE, CALLERS, BUNDLE = "demo", "DEMO", ["DEMO_SCANNER", "STORESCU"], "glioma-seg"


def _selection(channels: list[str]) -> str:
    clauses = [f'has series c{i} (SeriesDescription = "{name}")' for i, name in enumerate(channels)]
    return "select study where " + " and ".join(clauses)


def prepare_demo_service(root: Path, bundle: Path, *, quiet_seconds: float = 3.0) -> str:
    """Set up a fresh service root for the demo; returns the demo user's token."""
    from medai.cli.serve_cmd import register_bundle
    from medai.runtime import load_bundle
    from medai.service.auth import add_member, add_project, add_user
    from medai.service.config import load_config, save_config
    from medai.service.context import open_context
    from medai.service.jobs import JobKind, submit_job

    shutil.rmtree(root, ignore_errors=True)
    config = load_config(root, quiet_seconds=quiet_seconds)
    context = open_context(config)
    save_config(config)
    try:
        register_bundle(root, bundle, name=BUNDLE)
        channels = list(load_bundle(bundle).plan.channels)
        with context.factory() as session:
            project = add_project(session, PROJECT, ae_title=AE_TITLE, callers=CALLERS)
            user, token = add_user(session, "demo", cpu_slots=1)
            add_member(session, user, project, "owner")
            session.flush()
            submit_job(
                session, user, project, JobKind.SEGMENTATION, _selection(channels),
                bundle=BUNDLE, standing=True, bundles=root / "bundles",
            )  # fmt: skip
            session.commit()
    finally:
        context.close()
    write_secret_text(root / "demo_token.txt", token + "\n", overwrite=True)
    return token


def send_study(study: Path, port: int, *, calling: str = CALLERS[0]) -> int:
    """C-STORE every file under ``study`` to the demo project; returns how many were stored."""
    import pydicom
    from pynetdicom import AE, StoragePresentationContexts

    files = sorted(p for p in study.rglob("*") if p.is_file())
    ae = AE(ae_title=calling)
    ae.requested_contexts = StoragePresentationContexts
    assoc = ae.associate("127.0.0.1", port, ae_title=AE_TITLE)
    if not assoc.is_established:
        raise RuntimeError(f"the service refused the association on port {port}")
    stored = 0
    try:
        for path in files:
            status = assoc.send_c_store(pydicom.dcmread(path))
            stored += int(bool(status) and status.Status == 0x0000)
    finally:
        assoc.release()
    return stored


def _send_when_listening(root: Path, study: Path) -> None:
    from medai.service.server import server_info

    deadline = time.monotonic() + 120
    while (info := server_info(root)) is None or not info.get("dicom_port"):
        if time.monotonic() > deadline:
            console.print("[red]the service did not start listening; nothing was sent[/]")
            return
        time.sleep(0.2)
    stored = send_study(study, int(info["dicom_port"]))
    url = f"http://{info['host']}:{info['http_port']}"
    console.print(
        f"sent the test study ({stored} instances) to AE {AE_TITLE} on port "
        f"{info['dicom_port']}; the standing job segments it once the study is quiet.\n"
        f"API docs: {url}/docs · web UI: {url}/ui/ · token: {root / 'demo_token.txt'}\n"
        "Ctrl-C stops the service."
    )


def serve_demo(out: Path, *, bundle: Path, study: Path) -> None:
    """Set up ``out/service``, start the service, send ``study`` to it; runs until Ctrl-C."""
    from medai.service.config import load_config
    from medai.service.server import serve

    root = out / "service"
    prepare_demo_service(root, bundle)
    sender = threading.Thread(target=_send_when_listening, args=(root, study), daemon=True)
    sender.start()
    serve(load_config(root))

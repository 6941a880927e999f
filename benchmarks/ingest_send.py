"""Send DICOM files with pynetdicom over one association; print the seconds it took.

Usage: ingest_send.py CALLING_AE CALLED_AE PORT FILE… (host 127.0.0.1). Run as its own
process by ``ingest.py`` so that the sender's CPU is not the receiver's.
"""

from __future__ import annotations

import sys
import time

import pydicom
from pynetdicom import AE, StoragePresentationContexts


def main() -> None:
    calling, called, port, *files = sys.argv[1:]
    datasets = [pydicom.dcmread(f) for f in files]
    ae = AE(ae_title=calling)
    ae.requested_contexts = StoragePresentationContexts
    started = time.perf_counter()
    assoc = ae.associate("127.0.0.1", int(port), ae_title=called)
    if not assoc.is_established:
        raise SystemExit(f"association to {called} on port {port} was not established")
    failed = 0
    for ds in datasets:
        status = assoc.send_c_store(ds)
        failed += int(not status or status.Status != 0x0000)
    assoc.release()
    if failed:
        raise SystemExit(f"{failed} of {len(datasets)} instances were not stored")
    print(f"{time.perf_counter() - started:.6f}")


if __name__ == "__main__":
    main()

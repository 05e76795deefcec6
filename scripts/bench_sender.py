"""A modality for the benchmarks: a pynetdicom Storage SCU that sends files over one association.

The DCMTK-free counterpart of ``storescu -v`` for ``bench_e2e --peers pynetdicom`` (the GPU
machine has no DCMTK). It sends each file as it is on disk (pynetdicom streams a file path's
encoded data set without decoding it, as storescu does), with Nagle off, and prints one line
per C-STORE response as it arrives::

    response <index> <status, hex> <time.monotonic()>

``time.monotonic()`` is the system-wide monotonic clock, so the benchmark compares it with the
PACS's arrival times from another process. Exit status 1 when the association is refused or
any response is not Success.

Usage::

    python -m scripts.bench_sender --port 11112 --called-ae CXR_AI --files-from list.txt
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pydicom
from pynetdicom import AE, evt

from dicom_node.tcp import on_connection_open

CALLING_AE = "BENCH_SCU"
MAX_PDU = 131072  # storescu's in bench_e2e, the node's default


def presentation_contexts(files: list[Path]) -> set[tuple[str, str]]:
    """(SOP Class UID, Transfer Syntax UID) of each file, read from its meta and header only."""
    contexts = set()
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
        contexts.add((str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)))
    return contexts


def send(host: str, port: int, called_ae: str, files: list[Path], calling_ae: str = CALLING_AE) -> int:
    """C-STORE ``files`` in order over one association; print each response; 0 when all succeed."""
    ae = AE(ae_title=calling_ae)
    ae.maximum_pdu_size = MAX_PDU
    for sop_class, syntax in sorted(presentation_contexts(files)):
        ae.add_requested_context(sop_class, syntax)
    assoc = ae.associate(host, port, ae_title=called_ae, evt_handlers=[(evt.EVT_CONN_OPEN, on_connection_open)])
    if not assoc.is_established:
        print(f"bench_sender: association to {called_ae}@{host}:{port} not established", file=sys.stderr)
        return 1
    failures = 0
    try:
        for index, path in enumerate(files):
            status = assoc.send_c_store(path)
            code = int(status.Status) if "Status" in status else -1
            print(f"response {index} {code:04x} {time.monotonic():.6f}", flush=True)
            failures += code != 0
    finally:
        assoc.release()
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--called-ae", required=True)
    parser.add_argument("--calling-ae", default=CALLING_AE)
    parser.add_argument("--files-from", type=Path, required=True, help="text file: one DICOM file path a line")
    args = parser.parse_args(argv)
    files = [Path(line) for line in args.files_from.read_text().splitlines() if line.strip()]
    return send(args.host, args.port, args.called_ae, files, args.calling_ae)


if __name__ == "__main__":
    sys.exit(main())

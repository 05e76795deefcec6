"""A counting PACS for the soak run: a pynetdicom Store SCP that logs every C-STORE it answers.

For each C-STORE it appends one JSON line to ``--log`` (SOP Instance UID, SOP Class UID,
Study Instance UID, the SOP Instance UIDs the object references, this process's PID, time),
flushed and fsync'd *before* it answers Success. A line therefore exists for every object
the sender was told is stored; an object whose process was killed before the line was
written got no Success either, and is resent. The only duplicates are objects whose line
was written but whose response was lost when the process died: the sender cannot tell
those from a lost object, and sends them again by design.

The soak keeps nothing else (it counts arrivals, it does not keep reports); ``bench_e2e
--peers pynetdicom`` also passes ``--store DIR``, where each object is written as a DICOM file
before its line, and reads each line's ``monotonic`` arrival time (the system-wide clock its
sender process reads too). It is stopped by its PID (SIGKILL or SIGTERM), to play a PACS that
goes down::

    python -m scripts.soak_pacs --port 11113 --log /tmp/pacs.jsonl [--store /tmp/pacs]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, StoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicom_node.tcp import on_connection_open

PACS_AE_TITLE = "SOAK_PACS"
SR_CLASS_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
RESULT_KINDS = {
    "1.2.840.10008.5.1.4.1.1.7": "sc", "1.2.840.10008.5.1.4.1.1.66.4": "seg", "1.2.840.10008.5.1.4.1.1.88.59": "ko",
}


def result_kind(sop_class_uid: str) -> str:
    """``sr``, ``sc``, ``seg`` or ``ko`` for a result object's SOP class (``other`` otherwise).

    >>> result_kind("1.2.840.10008.5.1.4.1.1.88.33"), result_kind("1.2.840.10008.5.1.4.1.1.88.59")
    ('sr', 'ko')
    """
    if sop_class_uid in RESULT_KINDS:  # the KOS's class is in the SR range too
        return RESULT_KINDS[sop_class_uid]
    return "sr" if sop_class_uid.startswith(SR_CLASS_PREFIX) else "other"


def referenced_instances(ds: Dataset) -> Iterator[str]:
    """Every Referenced SOP Instance UID anywhere in ``ds`` (evidence, content tree)."""
    stack = [ds]
    while stack:
        item = stack.pop()
        for element in item:
            if element.VR == "SQ":
                stack.extend(element.value)
            elif element.keyword == "ReferencedSOPInstanceUID":
                yield str(element.value)


class ArrivalLog:
    """Appends one fsync'd JSON line per C-STORE; one writer at a time (associations are threads)."""

    def __init__(self, path: Path, store: Path | None = None) -> None:
        self._file: IO[str] = open(path, "a", encoding="utf-8")
        self._lock = threading.Lock()
        self._store = store

    def handle_store(self, event: evt.Event) -> int:
        ds = event.dataset
        if self._store is not None:  # as received, in DICOM file format
            (self._store / f"{ds.SOPInstanceUID}.dcm").write_bytes(event.encoded_dataset(include_meta=True))
        record = {
            "sop_instance_uid": str(ds.SOPInstanceUID),
            "sop_class_uid": str(ds.SOPClassUID),
            "study_instance_uid": str(ds.get("StudyInstanceUID", "")),
            "references": sorted(set(referenced_instances(ds))),
            "pid": os.getpid(),
            "time": time.time(),
            "monotonic": time.monotonic(),
        }
        with self._lock:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
            os.fsync(self._file.fileno())  # logged durably before the sender hears Success
        return 0x0000


def main(argv: list[str] | None = None) -> int:
    """Serve C-STORE and C-ECHO on ``127.0.0.1:--port`` until killed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log", type=Path, required=True, help="JSON lines file, appended")
    parser.add_argument("--ae-title", default=PACS_AE_TITLE)
    parser.add_argument("--store", type=Path, default=None, help="folder to write each object to (created)")
    args = parser.parse_args(argv)
    if args.store is not None:
        args.store.mkdir(parents=True, exist_ok=True)
    log = ArrivalLog(args.log, args.store)
    ae = AE(ae_title=args.ae_title)
    ae.require_called_aet = True
    ae.maximum_pdu_size = 131072
    for context in StoragePresentationContexts:
        ae.add_supported_context(str(context.abstract_syntax), ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification)
    handlers: list[Any] = [(evt.EVT_C_STORE, log.handle_store), (evt.EVT_C_ECHO, lambda _event: 0x0000),
                           (evt.EVT_CONN_OPEN, on_connection_open)]  # Nagle off, as a real PACS should
    # A restart on the same port right after a SIGKILL: the old socket may linger briefly.
    for _ in range(50):
        try:
            ae.start_server(("127.0.0.1", args.port), block=True, evt_handlers=handlers)
            return 0
        except OSError:
            time.sleep(0.1)
    print(f"soak_pacs: cannot listen on 127.0.0.1:{args.port}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())

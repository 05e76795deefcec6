"""A counting PACS for the soak run: a pynetdicom Store SCP that logs every C-STORE it answers.

For each C-STORE it appends one JSON line to ``--log`` (SOP Instance UID, SOP Class UID,
Study Instance UID, the SOP Instance UIDs the object references, this process's PID, time),
flushed and fsync'd *before* it answers Success. A line therefore exists for every object
the sender was told is stored; an object whose process was killed before the line was
written got no Success either, and is resent. The only duplicates are objects whose line
was written but whose response was lost when the process died: the sender cannot tell
those from a lost object, and sends them again by design.

It stores nothing else (the soak counts arrivals, it does not keep reports) and is stopped
by its PID (SIGKILL or SIGTERM), to play a PACS that goes down::

    python -m scripts.soak_pacs --port 11113 --log /tmp/pacs.jsonl
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

PACS_AE_TITLE = "SOAK_PACS"


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

    def __init__(self, path: Path) -> None:
        self._file: IO[str] = open(path, "a", encoding="utf-8")
        self._lock = threading.Lock()

    def handle_store(self, event: evt.Event) -> int:
        ds = event.dataset
        record = {
            "sop_instance_uid": str(ds.SOPInstanceUID),
            "sop_class_uid": str(ds.SOPClassUID),
            "study_instance_uid": str(ds.get("StudyInstanceUID", "")),
            "references": sorted(set(referenced_instances(ds))),
            "pid": os.getpid(),
            "time": time.time(),
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
    args = parser.parse_args(argv)
    log = ArrivalLog(args.log)
    ae = AE(ae_title=args.ae_title)
    ae.require_called_aet = True
    ae.maximum_pdu_size = 131072
    for context in StoragePresentationContexts:
        ae.add_supported_context(str(context.abstract_syntax), ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification)
    handlers: list[Any] = [(evt.EVT_C_STORE, log.handle_store), (evt.EVT_C_ECHO, lambda _event: 0x0000)]
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

"""The least a pynetdicom Storage SCP does per instance: a peer for ``bench_ingest``.

Stock pynetdicom (its own loops and DIMSE decoding, the data set collected in memory), Nagle
off, the node's maximum PDU (128 KiB). Each C-STORE's data set is written as received to
``<store>/<SOP Instance UID>``, without a check, file meta, fsync or log line, and answered
Success. Any receiver built on pynetdicom does at least this much per instance, so its rate is
the ceiling of such a receiver on this machine, as storescp's is of a C++ one::

    python -m scripts.bare_pynetdicom_scp --port 11114 --store /tmp/bare [--ae-title CXR_AI]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, cast

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, StoragePresentationContexts, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicom_node.tcp import on_connection_open

SUCCESS = 0x0000


def store_as_received(event: Event, store: Path) -> int:
    """Write the data set's bytes as they came (no decode) under its SOP Instance UID."""
    request = cast(C_STORE, event.request)
    uid = str(request.AffectedSOPInstanceUID)
    data = request.DataSet
    if data is None or not uid or "/" in uid:
        return 0xC000  # Cannot understand
    (store / uid).write_bytes(data.getbuffer())
    return SUCCESS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--store", type=Path, required=True, help="folder for the received data sets")
    parser.add_argument("--ae-title", default="CXR_AI")
    args = parser.parse_args(argv)
    args.store.mkdir(parents=True, exist_ok=True)
    ae = AE(ae_title=args.ae_title)
    ae.maximum_pdu_size = 131072
    for context in StoragePresentationContexts:
        ae.add_supported_context(cast(str, context.abstract_syntax), ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification)
    handlers: list[Any] = [(evt.EVT_C_STORE, store_as_received, [args.store]), (evt.EVT_CONN_OPEN, on_connection_open)]
    ae.start_server(("127.0.0.1", args.port), block=True, evt_handlers=handlers)
    return 0


if __name__ == "__main__":
    sys.exit(main())

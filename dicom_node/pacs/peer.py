"""The PACS the node queries: AE title, host and port, and the SCU side of the node that talks to it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pynetdicom import AE
from pynetdicom.association import Association

from dicom_node.receive.scp import configure_pynetdicom_logging
from dicom_node.tcp import no_delay

_PEER = re.compile(r"(?P<ae>[^@]{1,16})@(?P<host>[^:]+):(?P<port>\d{1,5})")


@dataclass(frozen=True)
class PacsPeer:
    """A DICOM peer: ``AE@HOST:PORT`` on the command line.

    >>> PacsPeer.parse("ORTHANC@pacs.local:4242")
    PacsPeer(ae_title='ORTHANC', host='pacs.local', port=4242)
    >>> PacsPeer.parse("pacs.local:4242")
    Traceback (most recent call last):
    ...
    ValueError: Argument "pacs" must be AE@HOST:PORT, got 'pacs.local:4242'.
    """

    ae_title: str
    host: str
    port: int

    def __post_init__(self) -> None:
        if not (0 < self.port < 65536):
            raise ValueError(f'Argument "port" must be in 1..65535, got {self.port}.')

    @classmethod
    def parse(cls, text: str) -> PacsPeer:
        match = _PEER.fullmatch(text.strip())
        if match is None:
            raise ValueError(f'Argument "pacs" must be AE@HOST:PORT, got {text!r}.')
        return cls(match["ae"].strip(), match["host"], int(match["port"]))

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def scu_ae(calling_ae_title: str, timeout: float = 30.0) -> AE:
    """An AE for the node's SCU associations, with pynetdicom's identifier logging off (patient data)."""
    configure_pynetdicom_logging()
    ae = AE(ae_title=calling_ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    return ae


def associate(ae: AE, peer: PacsPeer, **kwargs: Any) -> Association:
    """An association with ``peer`` (check ``is_established``), without Nagle's delay (:mod:`dicom_node.tcp`)."""
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, **kwargs)
    if assoc.is_established:
        no_delay(assoc)
        keep_responses(assoc)
    return assoc



def keep_responses(assoc: Association) -> None:
    """Give a response pynetdicom's reactor took by mistake back to the request waiting for it (pynetdicom 3.0 race).

    Between two requests pynetdicom lets its reactor thread read incoming messages; a
    ``send_c_*`` call waits for it to pause but can see a stale "paused" flag, and the reactor
    then takes the first response as an "unexpected" request and drops it (pynetdicom issue
    #875): a C-FIND match is lost without an error, or the final status, and the request waits
    out the DIMSE timeout. Here such a response goes back to the front of the message queue
    while a request is in progress (its checkpoint cleared); otherwise it is dropped as before.
    Private attributes of the pinned pynetdicom (3.0.4); absent, nothing changes.
    """
    serve = getattr(assoc, "_serve_request", None)
    checkpoint = getattr(assoc, "_reactor_checkpoint", None)
    messages = getattr(getattr(assoc, "dimse", None), "msg_queue", None)
    if serve is None or checkpoint is None or messages is None:
        return

    def serve_or_give_back(msg: Any, context_id: int) -> None:
        if not msg.is_valid_request and not checkpoint.is_set():
            with messages.mutex:
                messages.queue.appendleft((context_id, msg))
                messages.not_empty.notify()
            return
        serve(msg, context_id)

    assoc._serve_request = serve_or_give_back  # type: ignore[method-assign]

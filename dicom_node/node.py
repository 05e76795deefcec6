"""The running node: spool recovery, the DICOM listener, and a clean shutdown."""

from __future__ import annotations

import logging
import threading
import time

from pynetdicom import AE
from pynetdicom.transport import ThreadedAssociationServer

from dicom_node.config import NodeConfig
from dicom_node.handlers import build_event_handlers
from dicom_node.scp import STORAGE_SOP_CLASSES, TRANSFER_SYNTAXES, build_ae
from dicom_node.spool import Spool

logger = logging.getLogger(__name__)


class ReceiverNode:
    """The DICOM receiver: C-ECHO and C-STORE into a durable spool.

    Parameters
    ----------
    config : NodeConfig
        Validated configuration.
    """

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.spool = Spool(config.spool, fsync=config.fsync)
        self.ae: AE = build_ae(config)
        self._server: ThreadedAssociationServer | None = None

    def start(self) -> None:
        """Recover the spool, then listen. Returns once the port accepts associations."""
        self.spool.recover()
        self._server = self.ae.start_server(
            (self.config.bind, self.config.port),
            block=False,
            evt_handlers=build_event_handlers(self.config, self.spool),
        )
        logger.info(
            "listening: ae_title=%s bind=%s port=%d spool=%s fsync=%s sop_classes=%d transfer_syntaxes=%d "
            "allowed_callers=%s",
            self.config.ae_title, self.config.bind, self.config.port, self.config.spool.resolve(),
            self.config.fsync, len(STORAGE_SOP_CLASSES), len(TRANSFER_SYNTAXES),
            ",".join(c.ae_title for c in self.config.allowed_callers) or "any",
        )

    def stop(self) -> None:
        """Stop listening, let associations in flight finish within the grace period, abort the rest.

        Instances are written with temp file + rename, so an aborted transfer leaves no
        file that looks complete; the modality did not get Success and will resend.
        """
        if self._server is None:
            return
        server, self._server = self._server, None
        server.shutdown()  # no new associations; established ones go on
        deadline = time.monotonic() + self.config.shutdown_grace_seconds
        while any(a.is_established for a in server.active_associations) and time.monotonic() < deadline:
            time.sleep(0.05)
        remaining = server.active_associations  # incl. connections that never sent a request
        in_flight = sum(a.is_established for a in remaining)
        if in_flight:
            logger.warning("shutdown: aborting %d association(s) still in flight", in_flight)
        for assoc in remaining:
            assoc.abort()
        for assoc in remaining:
            assoc.join(timeout=5)  # let a handler that is mid-write finish its rename
        self.ae.shutdown()
        logger.info("stopped")

    def serve_until(self, stop_event: threading.Event) -> None:
        """Start, block until ``stop_event`` is set, then stop cleanly."""
        self.start()
        try:
            while not stop_event.wait(0.5):
                pass
        finally:
            self.stop()

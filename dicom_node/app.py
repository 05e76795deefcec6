"""The running node: spool recovery, the DICOM listener, and a clean shutdown."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from pynetdicom import AE
from pynetdicom.transport import ThreadedAssociationServer

from dicom_node.analyse.worker import InferenceWorker, WorkerSettings
from dicom_node.config import NodeConfig
from dicom_node.errors import ConfigError
from dicom_node.receive.handlers import build_event_handlers
from dicom_node.receive.incoming import IncomingFiles
from dicom_node.receive.scp import STORAGE_SOP_CLASSES, TRANSFER_SYNTAXES, build_ae
from dicom_node.report.sr import AlgorithmInfo
from dicom_node.send.outbox import Outbox, RetryPolicy
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
        # Received data sets stream to temp files in the spool, capped at max_instance_bytes.
        self.incoming = IncomingFiles(self.spool.instances_dir, config.max_instance_bytes)
        self.incoming.install()
        self._server: ThreadedAssociationServer | None = None
        self.outbox = Outbox(
            self.spool, config.destinations, RetryPolicy.from_config(config), config.ae_title,
            timeout=config.acse_timeout,
        )
        self._stop_outbox = threading.Event()
        self._outbox_thread: threading.Thread | None = None
        self.worker: InferenceWorker | None = None
        self._stop_worker = threading.Event()
        self._worker_thread: threading.Thread | None = None

    def start(self) -> None:
        """Recover the spool, load the models, start worker and outbox, then listen.

        Returns once the port accepts associations.
        """
        self.spool.recover()
        if self.config.analysis:
            self.worker = build_worker(self.config, self.spool, on_result=self.outbox.wake.set)
            self._worker_thread = threading.Thread(
                target=self.worker.run, args=(self._stop_worker,), name="inference", daemon=True
            )
            self._worker_thread.start()
        if self.config.destinations:
            self._outbox_thread = threading.Thread(
                target=self.outbox.run, args=(self._stop_outbox,), name="outbox", daemon=True
            )
            self._outbox_thread.start()
        self._server = self.ae.start_server(
            (self.config.bind, self.config.port),
            block=False,
            evt_handlers=build_event_handlers(
                self.config, self.spool, on_stored=self.worker.wake.set if self.worker else None,
                incoming=self.incoming,
            ),
        )
        logger.info(
            "listening: ae_title=%s bind=%s port=%d spool=%s fsync=%s sop_classes=%d transfer_syntaxes=%d "
            "allowed_callers=%s destinations=%s",
            self.config.ae_title, self.config.bind, self.config.port, self.config.spool.resolve(),
            self.config.fsync, len(STORAGE_SOP_CLASSES), len(TRANSFER_SYNTAXES),
            ",".join(c.ae_title for c in self.config.allowed_callers) or "any",
            ",".join(f"{d.name}({d.ae_title}@{d.host}:{d.port})" for d in self.config.destinations) or "none",
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
        if self.worker is not None and self._worker_thread is not None:
            self._stop_worker.set()
            self.worker.wake.set()
            self._worker_thread.join(timeout=60)  # the batch in progress; a cut one is redone after restart
        self._stop_outbox.set()
        self.outbox.wake.set()
        if self._outbox_thread is not None:
            self._outbox_thread.join(timeout=self.config.acse_timeout + 5)  # one C-STORE at most
        logger.info("stopped")

    def serve_until(self, stop_event: threading.Event) -> None:
        """Start, block until ``stop_event`` is set, then stop cleanly."""
        self.start()
        try:
            while not stop_event.wait(0.5):
                pass
        finally:
            self.stop()


def build_worker(config: NodeConfig, spool: Spool, on_result: Callable[[], None] | None = None) -> InferenceWorker:
    """Load the bundle's models and index, log their identity, and build the worker.

    Raises
    ------
    dicom_node.errors.ConfigError
        The bundle lacks a config, weights or the index, or the device is unusable.
    """
    import torch  # torch and MONAI load only when the node analyses

    from monai_app.inference import BundleAnalyser

    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    started = time.monotonic()
    try:
        analyser = BundleAnalyser(config.bundle, config.device, load_index=config.similar_k > 0)
    except (FileNotFoundError, RuntimeError) as exc:
        raise ConfigError(
            f"cannot load the model bundle {config.bundle}: {exc} "
            "(train it as the README says, point inference.bundle at one, or set inference.analysis = false)"
        ) from exc
    identity = analyser.identity
    threshold = analyser.threshold if config.threshold is None else config.threshold
    logger.info(
        "model: name=%r version=%s bundle=%s sha256=%s %s device=%s threads=%d threshold=%g (%s) loaded_in=%.1fs",
        identity.name, identity.version, config.bundle.resolve(), identity.sha256,
        " ".join(f"{name}={digest}" for name, digest in identity.files),
        analyser.device, torch.get_num_threads(), threshold, "bundle" if config.threshold is None else "node config",
        time.monotonic() - started,
    )
    algorithm = AlgorithmInfo(
        name=identity.name[:64], version=identity.version, weights_sha256=identity.sha256,
        manufacturer=identity.authors[:64],
    )
    settings = WorkerSettings(
        batch_size=config.batch_size, batch_wait_seconds=config.batch_wait_ms / 1000,
        similar_k=config.similar_k, threshold=threshold,
        destinations=tuple(d.name for d in config.destinations),
    )
    return InferenceWorker(spool, analyser, algorithm, settings, on_result=on_result)

"""The running node: spool recovery, the DICOM listener, and a clean shutdown."""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from pynetdicom import AE

from dicom_node import __version__
from dicom_node.analyse.process import AnalysisProcess
from dicom_node.analyse.worker import InferenceWorker, WorkerSettings
from dicom_node.audit import AuditLog, open_audit_log, record_purge
from dicom_node.config import NodeConfig
from dicom_node.errors import ConfigError
from dicom_node.metrics import MetricsServer, NodeMetrics
from dicom_node.receive.handlers import build_event_handlers
from dicom_node.receive.incoming import IncomingFiles
from dicom_node.receive.scp import STORAGE_SOP_CLASSES, TRANSFER_SYNTAXES, build_ae, connection_limits
from dicom_node.receive.server import EdgeAssociationServer, SlotPool, bind_edge_server, serve_edge_server
from dicom_node.report.sr import AlgorithmInfo
from dicom_node.send.delivery import client_context
from dicom_node.send.outbox import Outbox, RetryPolicy
from dicom_node.spool import JobState, Spool
from dicom_node.spool.owner import SpoolOwnership
from dicom_node.spool.purge_loop import PeriodicPurge
from dicom_node.spool.retention import PurgeOutcome, policy_from_config
from dicom_node.tls import build_server_context, quiet_pynetdicom_tls_errors

if TYPE_CHECKING:
    from dicom_node.analyse.index_growth import IndexGrowthLoop

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
        # Before anything touches the spool: a second node on it stops here (exit 2).
        self.ownership = SpoolOwnership(config.spool).acquire()
        try:
            self.spool = Spool(config.spool, fsync=config.fsync)
            # After the lock: two nodes never write one audit file (None: [audit] enabled = false).
            self.audit: AuditLog | None = open_audit_log(config)
            self.metrics = NodeMetrics(self.spool)
            self.ae: AE = build_ae(config)
            # Received data sets stream to temp files in the spool, capped at max_instance_bytes.
            self.incoming = IncomingFiles(self.spool.instances_dir, config.max_instance_bytes, writeback=config.fsync)
            self.incoming.install()
            # TLS files are read now, before the models load: a bad one stops start-up (exit 2).
            self.tls_context = build_tls_context(config)
            for destination in config.destinations:
                if destination.tls:
                    client_context(destination)
            if config.analysis and config.index_grow and config.similar_k:
                from dicom_node.analyse.index_growth import index_salt

                index_salt()  # no salt stops start-up now (exit 2), not after the models load
        except BaseException:
            self.ownership.release()
            raise
        quiet_pynetdicom_tls_errors()
        self._servers: list[EdgeAssociationServer] = []
        self.outbox = Outbox(
            self.spool, config.destinations, RetryPolicy.from_config(config), config.ae_title,
            timeout=config.acse_timeout, metrics=self.metrics, audit=self.audit,
        )
        self._metrics_server: MetricsServer | None = None
        self._stop_outbox = threading.Event()
        self._outbox_thread: threading.Thread | None = None
        # The models, the worker and the index growth: in a child process (analyse.process).
        self.analysis: AnalysisProcess | None = None
        self._analysis_ready = False
        self.purger = PeriodicPurge(
            self.spool, policy_from_config(config), config.retention_interval_minutes * 60,
            on_purged=self._record_purge,
        )
        self._stop_purger = threading.Event()
        self._purger_thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind the ports, recover the spool, start the outbox and the purge, accept
        associations, then load the models and start the worker.

        The ports are bound first, so a port in use stops the node at once
        (:class:`~dicom_node.errors.ConfigError` naming address and port). Receiving needs no
        model: the node accepts and stores while the models load, and analyses what arrived
        once they are loaded. Returns once both are done; a bundle that cannot be loaded
        raises :class:`~dicom_node.errors.ConfigError` (what was stored stays in the spool).
        """
        started = time.monotonic()
        servers = self._bind()
        try:
            if self.config.metrics_port:
                self._metrics_server = self._start_metrics()
            self.spool.recover()
        except BaseException:
            for server in servers:
                server.server_close()
            if self._metrics_server is not None:
                self._metrics_server.stop()
            raise
        if self.config.destinations:
            self._outbox_thread = _start_thread("outbox", self.outbox.run, self._stop_outbox)
        if self.config.retention_enabled:
            self._purger_thread = _start_thread("retention", self.purger.run, self._stop_purger)
        self._servers = servers
        for server in servers:
            serve_edge_server(self.ae, server)
        self._log_listening(time.monotonic() - started)
        if self.config.analysis:
            logger.info("loading the models from %s (receiving meanwhile)", self.config.bundle.resolve())
            self.analysis = AnalysisProcess(self.config, self.outbox.wake.set, metrics=self.metrics, audit=self.audit)
            algorithm = self.analysis.start()
            self.metrics.model.info({
                "name": algorithm.name, "version": algorithm.version, "weights_sha256": algorithm.weights_sha256,
            })
            self._analysis_ready = True
        logger.info(
            "ready: %s in %.1f s from start", "analysing" if self.config.analysis else "receiving only (analysis off)",
            time.monotonic() - started,
        )

    def _log_listening(self, seconds: float) -> None:
        logger.info(
            "listening: ae_title=%s bind=%s port=%s tls_port=%s mutual_tls=%s spool=%s fsync=%s sop_classes=%d "
            "transfer_syntaxes=%d allowed_callers=%s destinations=%s max_associations=%d per_host=%d "
            "association_request_timeout=%ds retention=%s after=%.1fs",
            self.config.ae_title, self.config.bind, self.config.plaintext_port or "off",
            self.config.tls_port if self.config.tls_enabled else "off",
            "on" if self.config.tls_enabled and self.config.tls_ca_file else "off",
            self.config.spool.resolve(), self.config.fsync, len(STORAGE_SOP_CLASSES), len(TRANSFER_SYNTAXES),
            ",".join(c.ae_title for c in self.config.allowed_callers) or "any",
            ",".join(
                f"{d.name}({d.ae_title}@{d.host}:{d.port}{' tls' if d.tls else ''})" for d in self.config.destinations
            ) or "none",
            self.config.max_associations, self.config.max_associations_per_host,
            self.config.association_request_timeout,
            (
                f"instances {self.config.retention_instances_days:g}d results {self.config.retention_results_days:g}d "
                f"records {self.config.retention_records_days:g}d high_water {self.config.retention_high_water_percent:g}%"
                if self.config.retention_enabled else "off"
            ),
            seconds,
        )

    def _start_metrics(self) -> MetricsServer:
        address = (self.config.metrics_bind, self.config.metrics_port)
        try:
            server = MetricsServer(address, self.metrics, self.readiness).start()
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {address[0]}:{address[1]} (metrics.bind, metrics.port): {exc.strerror or exc}"
            ) from None
        logger.info("metrics: http://%s:%d/metrics, /healthz, /readyz", address[0], server.port)
        return server

    def _record_purge(self, outcome: PurgeOutcome) -> None:
        counts = outcome.plan.counts()
        for kind in ("instances", "results", "records"):
            self.metrics.purged_files.labels(kind.removesuffix("s")).inc(counts[kind])
        self.metrics.purged_bytes.inc(counts["bytes"])
        if self.audit is not None:
            record_purge(self.audit, counts, "retention policy (serve)")

    def readiness(self) -> list[str]:
        """What keeps the node from serving fully (empty: ready): for ``/readyz``."""
        problems = []
        if not self._servers:
            problems.append("not listening")
        if not os.access(self.spool.root, os.W_OK):
            problems.append("spool not writable")
        if self.config.analysis and not self._analysis_ready:
            problems.append("models loading (receiving meanwhile)" if self._servers else "models not loaded")
        if self.analysis is not None and self.analysis.exited:
            problems.append("analysis process exited")
        return problems

    def _bind(self) -> list[EdgeAssociationServer]:
        """Bind and listen on the plaintext and the TLS port (connections wait in the backlog
        until the node accepts). Both listeners share one ``max_associations`` pool."""
        evt_handlers = build_event_handlers(
            self.config, self.spool, on_stored=lambda: self.analysis.wake() if self.analysis else None,
            incoming=self.incoming, metrics=self.metrics, audit=self.audit,
        )
        limits = connection_limits(self.config)
        slots = SlotPool(limits.max_associations)
        listeners: list[tuple[int, str, ssl.SSLContext | None]] = []
        if self.config.plaintext_port is not None:
            listeners.append((self.config.plaintext_port, "node.bind, node.port", None))
        if self.tls_context is not None:
            listeners.append((self.config.tls_port, "node.bind, tls.port", self.tls_context))
        servers: list[EdgeAssociationServer] = []
        for port, keys, context in listeners:
            try:
                servers.append(bind_edge_server(
                    self.ae, (self.config.bind, port), limits, evt_handlers, slots=slots, ssl_context=context,
                    audit=self.audit, metrics=self.metrics,
                ))
            except OSError as exc:
                for server in servers:
                    server.server_close()
                raise ConfigError(
                    f"cannot listen on {self.config.bind}:{port} ({keys}): {exc.strerror or exc}"
                ) from None
        return servers

    def stop(self) -> None:
        """Stop listening, let associations in flight finish within the grace period, abort the rest.

        Connections that never completed an association, and peers that stall, are closed
        at once: the node exits within the grace period plus a few seconds whatever they do.
        Instances are written with temp file + rename, so an aborted transfer leaves no
        file that looks complete; the modality did not get Success and will resend.
        """
        if not self._servers:
            return
        servers, self._servers = self._servers, []
        for server in servers:
            server.shutdown()  # no new connections; established associations go on

        def established() -> int:
            return sum(server.established_count() for server in servers)

        deadline = time.monotonic() + self.config.shutdown_grace_seconds
        while established() and time.monotonic() < deadline:
            time.sleep(0.05)
        in_flight = established()
        if in_flight:
            logger.warning("shutdown: aborting %d association(s) still in flight", in_flight)
        for server in servers:
            server.close_connections()  # A-ABORT, then every transport closed; bounded
        if self.analysis is not None:
            self.analysis.stop()  # the batch in progress; a cut one is redone after restart
        self._stop_outbox.set()
        self.outbox.wake.set()
        if self._outbox_thread is not None:
            self._outbox_thread.join(timeout=self.config.acse_timeout + 5)  # one C-STORE at most
        self._stop_purger.set()
        self.purger.wake.set()
        if self._purger_thread is not None:
            self._purger_thread.join(timeout=60)  # a purge in progress finishes its deletions
        if self._metrics_server is not None:
            self._metrics_server.stop()
            self._metrics_server = None
        logger.info("stopped")

    def serve_until(self, stop_event: threading.Event) -> None:
        """Start, block until ``stop_event`` is set, then stop cleanly; the audit trail gets
        an application start and stop record around it."""
        self._audit_application("start")
        try:
            self.start()
            while not stop_event.wait(0.5):
                pass
        finally:
            self.stop()
            self._audit_application("stop")
            self.ownership.release()

    def _audit_application(self, result: str) -> None:
        if self.audit is not None:
            self.audit.record("application", result, called_ae=self.config.ae_title, detail=f"cxr-node {__version__}",
                              pid=os.getpid())
            if result == "stop":
                self.audit.close()


def _start_thread(name: str, loop: Callable[[threading.Event], None], stop: threading.Event) -> threading.Thread:
    """Run ``loop(stop)`` in a daemon thread (it returns once ``stop`` is set)."""
    thread = threading.Thread(target=loop, args=(stop,), name=name, daemon=True)
    thread.start()
    return thread


def build_worker(
    config: NodeConfig,
    spool: Spool,
    on_result: Callable[[], None] | None = None,
    metrics: NodeMetrics | None = None,
    audit: AuditLog | None = None,
) -> InferenceWorker:
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
        analyser: BundleAnalyser
        if config.backend == "ray":  # the networks on a Serve deployment; the rest of the bundle here
            from dicom_node.analyse.remote import RemoteBundleAnalyser

            analyser = RemoteBundleAnalyser(
                config.bundle, config.serve_url, config.serve_application, timeout=config.serve_timeout_seconds,
                accept_other_model=config.accept_other_model, metrics=metrics, load_index=config.similar_k > 0,
                index_dir=config.index_directory,
            )
        else:
            analyser = BundleAnalyser(
                config.bundle, config.device, load_index=config.similar_k > 0, index_dir=config.index_directory,
                runtime=config.runtime,
            )
    except (FileNotFoundError, RuntimeError) as exc:
        raise ConfigError(
            f"cannot load the model bundle {config.bundle}: {exc} "
            "(train it as the README says, point inference.bundle at one, or set inference.analysis = false)"
        ) from exc
    identity = analyser.identity
    threshold = analyser.threshold if config.threshold is None else config.threshold
    # The bundle's operating point holds for its own threshold only, not for one the node sets.
    operating_point = analyser.operating_point if config.threshold is None else None
    logger.info(
        "model: name=%r version=%s bundle=%s sha256=%s %s device=%s runtime=%s threads=%d threshold=%g (%s) "
        "calibration=%r calibration_sha256=%s operating_point=%s index=%s loaded_in=%.1fs",
        identity.name, identity.version, config.bundle.resolve(), identity.sha256,
        " ".join(f"{name}={digest}" for name, digest in identity.files),
        analyser.device, analyser.runtime, torch.get_num_threads(), threshold,
        "bundle" if config.threshold is None else "node config",
        identity.calibration, identity.calibration_sha256 or "none",
        "none" if operating_point is None else
        f"sensitivity={operating_point.sensitivity:.3f},specificity={operating_point.specificity:.3f},n={operating_point.n}",
        f"{analyser.index_dir.resolve()} ({len(analyser.index.items)} items)" if analyser.index is not None else "none",
        time.monotonic() - started,
    )
    algorithm = AlgorithmInfo(
        name=identity.name[:64], version=identity.version, weights_sha256=identity.sha256,
        manufacturer=identity.authors[:64],
    )
    settings = WorkerSettings(
        batch_size=config.batch_size, batch_wait_seconds=config.batch_wait_ms / 1000,
        similar_k=config.similar_k, threshold=threshold, operating_point=operating_point,
        calibration=identity.calibration,
        destinations=tuple(d.name for d in config.destinations),
        relevance_map=config.relevance_map, summary_image=config.summary_image,
        lung_segmentation=config.lung_segmentation, key_images=config.key_images,
        backend_retry_max_seconds=config.backend_retry_max_seconds, overlap_reports=config.overlap_reports,
    )
    return InferenceWorker(spool, analyser, algorithm, settings, on_result=on_result, metrics=metrics, audit=audit)


def start_index_growth(config: NodeConfig, spool: Spool, worker: InferenceWorker) -> IndexGrowthLoop:
    """Grow the worker's similar-study index from the node's delivered studies (``[index] grow``).

    The worker queries the latest grown version from now on (a restart picks it up again),
    keeps a pending prior of each study it reports, and the returned loop rebuilds the index
    every ``rebuild_minutes`` with the priors whose results were delivered.
    """
    from dicom_node.analyse.index_growth import GrownIndex, IndexGrowthLoop, index_salt, prior_from_header
    from monai_app.inference import BundleAnalyser
    from monai_app.retrieval.index import SimilarityIndex

    analyser = worker.analyser
    if not isinstance(analyser, BundleAnalyser) or analyser.index is None:
        raise ConfigError("index.grow needs the bundle's similar-study index (inference.similar_k > 0)")
    grown = GrownIndex(config.grown_index_path, analyser.index_dir, worker.algorithm.weights_sha256, fsync=config.fsync)
    if grown.current() != analyser.index_dir:
        analyser.use_index(SimilarityIndex.load(grown.current()))
    salt, source = index_salt(), f"node:{config.ae_title}"
    worker.keep_prior = lambda header, embedding: grown.add_pending(prior_from_header(header, embedding, salt, source))
    assert analyser.index is not None
    logger.info(
        "index: growing from the node's delivered studies, rebuilt every %g min; now %d items (%s)",
        config.index_rebuild_minutes, len(analyser.index.items), grown.current(),
    )
    return IndexGrowthLoop(grown, lambda uid: _delivered(spool, uid), analyser.use_index, config.index_rebuild_minutes * 60)


def _delivered(spool: Spool, sop_instance_uid: str) -> bool:
    """Whether a reported job's result reached every destination (its record purged since counts: only
    finished jobs are purged, and a reported one finishes as sent)."""
    job = spool.find_job(sop_instance_uid)
    return job is None or job.state is JobState.SENT


def build_tls_context(config: NodeConfig) -> ssl.SSLContext | None:
    """The TLS listener's context, ``None`` when ``tls.enabled`` is false.

    Raises
    ------
    dicom_node.errors.ConfigError
        A TLS file is missing, unreadable or invalid; the message names its key.
    """
    if not config.tls_enabled or config.tls_certificate is None or config.tls_private_key is None:
        return None
    return build_server_context(config.tls_certificate, config.tls_private_key, config.tls_ca_file)

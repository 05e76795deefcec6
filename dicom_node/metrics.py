"""What the hospital's monitoring sees: Prometheus metrics and health checks over HTTP.

:class:`NodeMetrics` holds the node's counters and histograms in its own registry (no global
state, no patient identifier in any label: outcomes, status codes, destination names and
job states only). The spool's gauges (jobs per state, oldest undelivered report, bytes and
free space) are read from the spool at each scrape. :class:`MetricsServer` serves
``/metrics`` (Prometheus text), ``/healthz`` (the process answers) and ``/readyz`` (listening,
spool writable, models loaded) on a loopback port by default.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, Info, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from dicom_node.spool import JobState, Spool

logger = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0)
_CALL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)  # remote calls: milliseconds up


class SpoolCollector(Collector):
    """Gauges read from the spool at scrape time: jobs per state, oldest undelivered, disk."""

    def __init__(self, spool: Spool, clock: Callable[[], float] = time.time) -> None:
        self.spool = spool
        self.clock = clock

    def collect(self) -> Iterator[GaugeMetricFamily]:
        counts = self.spool.counts()
        jobs = GaugeMetricFamily("cxr_jobs", "Jobs in each spool state.", labels=["state"])
        for state in JobState:
            jobs.add_metric([state.value], counts[state.value])
        yield jobs
        yield GaugeMetricFamily("cxr_spool_instances", "Received instances in the spool.", value=counts["instances"])
        oldest = 0.0
        for job in self.spool.jobs(JobState.OUTBOX):
            oldest = max(oldest, self.clock() - datetime.fromisoformat(job.received_at).timestamp())
        yield GaugeMetricFamily(
            "cxr_oldest_undelivered_seconds", "Age of the oldest job whose result is not delivered yet (0: none).",
            value=oldest,
        )
        yield GaugeMetricFamily("cxr_spool_bytes", "Bytes of files in the spool.", value=self.spool.size_bytes())
        yield GaugeMetricFamily(
            "cxr_spool_free_bytes", "Free bytes on the spool's file system.", value=shutil.disk_usage(self.spool.root).free
        )


class NodeMetrics:
    """The node's metrics, in their own registry.

    Parameters
    ----------
    spool : Spool or None
        The spool whose state is exported at each scrape (``None``: no spool gauges).
    """

    def __init__(self, spool: Spool | None = None) -> None:
        self.registry = CollectorRegistry()
        self.associations = Counter(
            "cxr_associations", "Associations by outcome (accepted, rejected, released, aborted).",
            ["outcome"], registry=self.registry,
        )
        self.connections_refused = Counter(
            "cxr_connections_refused",
            "Connections the network edge refused or closed before they made an association, by reason "
            "(per_host_limit, max_associations, request_timeout, tls_handshake, pdu_too_large, pdu_stalled, protocol_error).",
            ["reason"], registry=self.registry,
        )
        self.c_store_responses = Counter(
            "cxr_c_store_responses", "C-STORE responses sent, by status (hex).", ["status"], registry=self.registry
        )
        self.received_bytes = Counter("cxr_received_bytes", "Bytes of instances stored.", registry=self.registry)
        self.batch_seconds = Histogram(
            "cxr_analysis_batch_seconds", "Time to analyse one batch.", buckets=_LATENCY_BUCKETS, registry=self.registry
        )
        self.analysed = Counter("cxr_analysed", "Jobs analysed, by outcome (report, not_analysed, retry).",
                                ["outcome"], registry=self.registry)
        self.report_ready_seconds = Histogram(
            "cxr_receipt_to_report_seconds", "From receipt of an instance to its result in the outbox.",
            buckets=_LATENCY_BUCKETS, registry=self.registry,
        )
        self.delivered_seconds = Histogram(
            "cxr_receipt_to_delivery_seconds", "From receipt of an instance to its result delivered to a destination.",
            ["destination"], buckets=_LATENCY_BUCKETS, registry=self.registry,
        )
        self.delivery_attempts = Counter(
            "cxr_delivery_attempts", "Delivery attempts, by destination and outcome (delivered, failed).",
            ["destination", "outcome"], registry=self.registry,
        )
        self.purged_files = Counter(
            "cxr_purged_files", "Files deleted by the retention policy, by kind (instance, result, record).",
            ["kind"], registry=self.registry,
        )
        self.purged_bytes = Counter("cxr_purged_bytes", "Bytes deleted by the retention policy.", registry=self.registry)
        self.model = Info("cxr_model", "The models that make the results.", registry=self.registry)
        # [inference] backend = "ray": the calls to the Serve deployment (dicom_node/analyse/remote.py).
        self.backend_calls = Counter(
            "cxr_backend_calls", "Calls to the remote analysis backend, by route (lung, predict) and outcome "
            "(ok, unavailable, refused).", ["route", "outcome"], registry=self.registry,
        )
        self.backend_bytes = Counter(
            "cxr_backend_bytes", "HTTP body bytes to and from the remote analysis backend, by direction (sent, received).",
            ["direction"], registry=self.registry,
        )
        self.backend_seconds = Histogram(
            "cxr_backend_call_seconds", "Time of one answered call to the remote analysis backend, by route.",
            ["route"], buckets=_CALL_BUCKETS, registry=self.registry,
        )
        self.backend_waits = Counter(
            "cxr_backend_waits", "Batches handed back to received because the analysis backend was unavailable or "
            "refused (the jobs wait; receiving goes on).", registry=self.registry,
        )
        self.analysis_restarts = Counter(
            "cxr_analysis_restarts", "Analysis processes started again after one died on its own (receiving goes on).",
            registry=self.registry,
        )
        if spool is not None:
            self.registry.register(SpoolCollector(spool))

    def text(self) -> bytes:
        """Everything, in the Prometheus text format."""
        return generate_latest(self.registry)

    @staticmethod
    def since(received_at: str, now: float | None = None) -> float:
        """Seconds from a job's ``received_at`` to ``now``."""
        return max(0.0, (time.time() if now is None else now) - datetime.fromisoformat(received_at).timestamp())

    # pynetdicom notification handlers (``evt.EVT_ACCEPTED`` and the like): counts only.
    def on_accepted(self, _event: Any) -> None:
        self.associations.labels("accepted").inc()

    def on_rejected(self, _event: Any) -> None:
        self.associations.labels("rejected").inc()

    def on_released(self, _event: Any) -> None:
        self.associations.labels("released").inc()

    def on_aborted(self, _event: Any) -> None:
        self.associations.labels("aborted").inc()


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._answer(200, self.server.metrics.text(), CONTENT_TYPE)
        elif path == "/healthz":
            self._answer(200, b"ok\n")
        elif path == "/readyz":
            problems = self.server.readiness()
            self._answer(503 if problems else 200, ("\n".join(problems) or "ready").encode() + b"\n")
        else:
            self._answer(404, b"not found\n")

    def _answer(self, code: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("metrics: " + format, *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], metrics: NodeMetrics, readiness: Callable[[], list[str]]) -> None:
        super().__init__(address, _Handler)
        self.metrics = metrics
        self.readiness = readiness


class MetricsServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` on ``address``, in a daemon thread.

    Parameters
    ----------
    address : (str, int)
        Where to listen; port 0 picks a free one (see :attr:`port`).
    metrics : NodeMetrics
        What ``/metrics`` serves.
    readiness : callable
        Returns what keeps the node from being ready (empty list: ready).

    Raises
    ------
    OSError
        The address cannot be bound (the caller names the config key).
    """

    def __init__(self, address: tuple[str, int], metrics: NodeMetrics, readiness: Callable[[], list[str]]) -> None:
        self._server = _Server(address, metrics, readiness)
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

"""The analysis stage in a process of its own, so that it never starves the receiver.

In the node's process the models' Python work (decoding, the report objects, highdicom) took
the GIL from the associations' threads, and their native threads took the cores: with analysis
on, C-STORE ingest fell to 0.4–0.7 of the same node with analysis off (docs/benchmarks.md).
Here the models, the :class:`~dicom_node.analyse.worker.InferenceWorker` and the index growth
run in a child process (``spawn``: a fresh interpreter, no thread or lock of the receiver
copied into it), at a lower scheduling priority (:data:`ANALYSIS_NICENESS`), which every
thread it starts (PyTorch's, OpenVINO's) inherits. The receiver keeps its GIL, and a core
whenever it needs one; an idle receiver leaves the analysis both cores.

Both processes work on the one spool, which is made for it (its job lock is ``flock``). Two
one-way pipes join them:

- node to child: ``"wake"`` (an instance was stored; coalesced, sent by one thread, so no
  association ever waits on the child) and ``"stop"``;
- child to node: ``("ready", AlgorithmInfo)`` or ``("error", text)`` once, then
  ``("result",)`` (wake the outbox), ``("metric", ...)`` and ``("audit", ...)``: the node's
  Prometheus registry and audit file stay single-writer, in the node's process.

If the node dies (``kill -9``), the child sees its pipe close and exits at once, as the node
would have: a batch in progress is redone after the restart (:meth:`Spool.recover`). If the
child dies on its own (a crash in a native library, the OOM killer), the node keeps receiving
and starts a new child after :data:`RESTART_DELAYS_SECONDS`; the new child first returns the
dead one's ``processing`` jobs to ``received``.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any, cast

from dicom_node.errors import ConfigError

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess

    from dicom_node.audit import AuditLog
    from dicom_node.config import NodeConfig
    from dicom_node.metrics import NodeMetrics
    from dicom_node.report.sr import AlgorithmInfo

logger = logging.getLogger(__name__)

# Added to the child's nice value: under contention the receiver (nice 0) gets about ten
# times the CPU share of each analysis thread (CFS weights 1024 against 110).
ANALYSIS_NICENESS = 10
# Waits before each restart of a child that died on its own; the last one repeats. A child
# that ran STABLE_SECONDS before dying starts the sequence again (a crash loop backs off).
RESTART_DELAYS_SECONDS = (2.0, 10.0, 60.0, 300.0)
STABLE_SECONDS = 600.0
_METRIC_METHODS = frozenset({"inc", "observe", "set"})


class AnalysisProcess:
    """The node's side of the analysis child process.

    Parameters
    ----------
    config : NodeConfig
        The node's configuration (sent to the child).
    on_result : callable
        Called when the child put results in the outbox (wakes the outbox).
    metrics, audit
        Where the child's metric updates and audit records go.
    """

    def __init__(
        self,
        config: NodeConfig,
        on_result: Callable[[], None],
        metrics: NodeMetrics | None = None,
        audit: AuditLog | None = None,
    ) -> None:
        self.config = config
        self.on_result = on_result
        self.metrics = metrics
        self.audit = audit
        self.algorithm: AlgorithmInfo | None = None
        self.exited = False  # the child ended without being asked to
        self._process: BaseProcess | None = None
        self._to_child: Connection | None = None
        self._from_child: Connection | None = None
        self._answer = threading.Event()  # ready or error arrived (or the child died)
        self._error = ""
        self._stopping = False
        self._pending_wake = threading.Event()
        self._stop_requested = threading.Event()
        self._threads: list[threading.Thread] = []
        self._ready_at = 0.0
        self._restarts = 0  # restarts since the child last ran STABLE_SECONDS

    def start(self) -> AlgorithmInfo:
        """Start the child and wait until its models are loaded.

        Raises
        ------
        dicom_node.errors.ConfigError
            The child could not load the bundle (its message), or died before it did.
        """
        algorithm = self._launch()
        if algorithm is None:
            self.stop()
            raise ConfigError(self._error or f"the analysis process exited with code {self._exitcode()}")
        return algorithm

    def _launch(self) -> AlgorithmInfo | None:
        """Start a child and its two threads; its algorithm once ready, ``None`` if it failed."""
        self.algorithm, self._error = None, ""
        self._answer.clear()
        context = multiprocessing.get_context("spawn")
        to_child_read, self._to_child = context.Pipe(duplex=False)
        self._from_child, from_child_write = context.Pipe(duplex=False)
        self._process = context.Process(
            target=run_child, args=(self.config, to_child_read, from_child_write), name="cxr-analysis", daemon=False
        )
        self._process.start()
        to_child_read.close()  # the child's ends: only the child holds them now, so EOF means it is gone
        from_child_write.close()
        self._threads = [
            _daemon("analysis-reader", self._read),
            _daemon("analysis-waker", self._send_wakes),
        ]
        self._answer.wait()
        if self.algorithm is not None:
            self._ready_at = time.monotonic()
            logger.info("analysis process: pid=%d nice=+%d", self._process.pid, ANALYSIS_NICENESS)
        return self.algorithm

    def _restart_after_exit(self) -> None:
        """The child died on its own: wait, then start another (until the node stops)."""
        ran = time.monotonic() - self._ready_at
        self._restarts = 0 if ran >= STABLE_SECONDS else self._restarts
        while not self._stopping:
            delay = RESTART_DELAYS_SECONDS[min(self._restarts, len(RESTART_DELAYS_SECONDS) - 1)]
            self._restarts += 1
            logger.error("analysis process exited (code %s): nothing is analysed; restart %d in %.0f s",
                         self._exitcode(), self._restarts, delay)
            if self._stop_requested.wait(delay):
                return
            self._close_pipes()
            if self.metrics is not None:
                self.metrics.analysis_restarts.inc()
            if self._launch() is not None:
                self.exited = False
                self._pending_wake.set()  # what arrived meanwhile
                logger.info("analysis process restarted (restart %d)", self._restarts)
                return
            logger.error("analysis process restart %d failed: %s", self._restarts, self._error or "exited")

    def _exitcode(self) -> int | None:
        return None if self._process is None else self._process.exitcode

    def _close_pipes(self) -> None:
        for conn in (self._to_child, self._from_child):
            if conn is not None:
                conn.close()

    def wake(self) -> None:
        """An instance was stored: tell the child (never blocks)."""
        self._pending_wake.set()

    def stop(self, timeout: float = 60) -> None:
        """Let the child finish its batch in progress and exit; kill it after ``timeout`` s."""
        self._stopping = True
        self._stop_requested.set()  # a restart waiting to happen does not
        self._pending_wake.set()  # the waker sends "stop" and ends
        process = self._process
        if process is None:
            return
        process.join(timeout)
        if process.is_alive():
            logger.warning("analysis process did not stop within %.0f s: killed", timeout)
            process.kill()
            process.join(5)
        for thread in self._threads:
            thread.join(5)
        self._close_pipes()

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def _send_wakes(self) -> None:
        assert self._to_child is not None
        try:
            while True:
                self._pending_wake.wait()
                self._pending_wake.clear()
                if self._stopping:
                    self._to_child.send("stop")
                    return
                self._to_child.send("wake")
        except OSError:
            return  # the child is gone; the reader says so

    def _read(self) -> None:
        assert self._from_child is not None
        while True:
            try:
                message = self._from_child.recv()
            except (EOFError, OSError):
                break
            try:
                self.handle(message)
            except Exception:
                logger.exception("analysis process: message not applied")
        if self._process is not None:
            self._process.join(5)  # its exit code, for the log
        died_on_its_own = not self._stopping and self.algorithm is not None  # before ready, _launch says so
        self._answer.set()
        if died_on_its_own:
            self.exited = True
            self._restart_after_exit()

    def handle(self, message: tuple[Any, ...]) -> None:
        """Act on one message of the child (in the reader thread)."""
        kind = message[0]
        if kind == "ready":
            self.algorithm = message[1]
            self._answer.set()
        elif kind == "error":
            self._error = str(message[1])
            self._answer.set()
        elif kind == "result":
            self.on_result()
        elif kind == "metric" and self.metrics is not None:
            apply_metric(self.metrics, *message[1:])
        elif kind == "audit" and self.audit is not None:
            self.audit.record(*message[1], **message[2])


def apply_metric(metrics: NodeMetrics, name: str, labels: tuple[str, ...], method: str, value: float) -> None:
    """Apply a metric update the child sent: ``metrics.<name>[.labels(*labels)].<method>(value)``."""
    if method not in _METRIC_METHODS or name.startswith("_"):
        raise ValueError(f"not a metric update: {name}.{method}")
    metric = getattr(metrics, name)
    if labels:
        metric = metric.labels(*labels)
    getattr(metric, method)(value)


class _Channel:
    """The child's pipe to the node, shared by its threads."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._lock = threading.Lock()

    def send(self, message: tuple[Any, ...]) -> None:
        with self._lock:
            self._conn.send(message)


class RemoteMetric:
    """One metric (or labelled child) of :class:`RemoteMetrics`."""

    def __init__(self, channel: _Channel, name: str, labels: tuple[str, ...] = ()) -> None:
        self._channel, self._name, self._labels = channel, name, labels

    def labels(self, *values: str) -> RemoteMetric:
        return RemoteMetric(self._channel, self._name, tuple(values))

    def inc(self, amount: float = 1.0) -> None:
        self._channel.send(("metric", self._name, self._labels, "inc", amount))

    def observe(self, value: float) -> None:
        self._channel.send(("metric", self._name, self._labels, "observe", value))

    def set(self, value: float) -> None:
        self._channel.send(("metric", self._name, self._labels, "set", value))


class RemoteMetrics:
    """:class:`~dicom_node.metrics.NodeMetrics` as the child's worker uses it: every update
    is sent to the node's registry."""

    def __init__(self, channel: _Channel) -> None:
        self._channel = channel

    def __getattr__(self, name: str) -> RemoteMetric:
        return RemoteMetric(self._channel, name)

    @staticmethod
    def since(received_at: str, now: float | None = None) -> float:
        from dicom_node.metrics import NodeMetrics

        return NodeMetrics.since(received_at, now)


class RemoteAudit:
    """:meth:`~dicom_node.audit.AuditLog.record` as the child's worker uses it: sent to the node."""

    def __init__(self, channel: _Channel) -> None:
        self._channel = channel

    def record(self, *args: Any, **fields: Any) -> None:
        self._channel.send(("audit", args, fields))


def run_child(config: NodeConfig, from_node: Connection, to_node: Connection) -> None:
    """The child process: load the models, then run the worker (and the index growth) until
    the node says stop; exit at once when the node is gone."""
    os.nice(ANALYSIS_NICENESS)  # first: every thread started from here on inherits it
    # Ctrl-C reaches the whole process group, systemd's stop the whole unit: the node decides
    # when its analysis stops (its "stop" lets the batch in progress finish; its death ends us).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from dicom_node.serving_process import keep_evaluation_packages_out

    keep_evaluation_packages_out()  # before anything imports MONAI
    from dicom_node.cli import setup_logging

    setup_logging(config.log_level)
    from dicom_node.app import build_worker, start_index_growth
    from dicom_node.spool import Spool

    channel = _Channel(to_node)
    spool = Spool(config.spool, fsync=config.fsync)
    requeued = spool.requeue_processing("requeued: the analysis process restarted")
    if requeued:
        logger.info("analysis process: %d interrupted job(s) requeued", requeued)
    try:
        worker = build_worker(
            config, spool, on_result=lambda: channel.send(("result",)),
            metrics=cast("NodeMetrics", RemoteMetrics(channel)), audit=cast("AuditLog", RemoteAudit(channel)),
        )
        growth = start_index_growth(config, spool, worker) if config.index_grow and config.similar_k else None
    except ConfigError as exc:
        channel.send(("error", str(exc)))
        return
    channel.send(("ready", worker.algorithm))
    stop = threading.Event()
    threads = [_daemon("inference", lambda: worker.run(stop))]
    if growth is not None:
        threads.append(_daemon("index-growth", lambda: growth.run(stop)))
    while True:
        try:
            message = from_node.recv()
        except (EOFError, OSError):
            os._exit(1)  # the node died: so does its analysis, as one process would have
        if message == "stop":
            break
        worker.wake.set()
    stop.set()
    worker.wake.set()
    if growth is not None:
        growth.wake.set()
    for thread in threads:
        thread.join(60)  # the batch or rebuild in progress; a cut one is redone after restart


def _daemon(name: str, target: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread

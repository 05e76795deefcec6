"""The inference worker: received jobs -> models (through :class:`~dicom_node.analyse.analyser.Analyser`) -> TID 1500 SR in the outbox.

It runs in its own thread, never in a C-STORE handler. Each job is moved to ``processing``
(durably, with its attempt counted) before any work, so a crash leaves it there and
:meth:`Spool.recover` hands it back; a job that has crashed the node ``MAX_ATTEMPTS``
times is not tried again. The report is written to the spool before the job leaves
``processing``: from then on the outbox owns it.

A remote backend that cannot answer (:class:`~dicom_node.analyse.analyser.BackendUnavailableError`,
e.g. a Ray cluster down) is no analysis error: the batch goes back to ``received`` with its
tries intact and ``backend_attempts`` counted, and the worker waits with capped exponential
backoff before the next batch. Receiving goes on; the backlog shows in ``cxr-node status``
and the ``cxr_jobs`` gauge.

With ``overlap_reports``, a batch's result objects are built and spooled in a second thread
while the next batch is decoded and goes through the networks: the report building is mostly
single-threaded Python and the networks mostly native code that lets go of the GIL, so the
two fill each other's idle cores. At most one batch waits for its reports; its jobs stay in
``processing`` until then (a crash hands them back as any other).
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from dicom_node.analyse.analyser import Analyser, BackendUnavailableError, Neighbour, Prediction, PreparedImage
from dicom_node.analyse.applicability import check_header, check_image
from dicom_node.analyse.image_evidence import image_evidence
from dicom_node.audit import AuditLog
from dicom_node.log_safety import describe_exception
from dicom_node.metrics import NodeMetrics
from dicom_node.report.result import build_result
from dicom_node.report.sr import AlgorithmInfo, Finding, SimilarStudy
from dicom_node.send.delivery import next_retry_delay
from dicom_node.spool import Job, JobState, Spool
from monai_app.calibration import OperatingPoint
from monai_app.errors import UndecodableImageError, find_cause
from monai_app.labels import DEFAULT_THRESHOLD

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
"""Tries per job (a crash mid-analysis counts) before it is set aside as not analysed."""


@dataclass(frozen=True)
class WorkerSettings:
    """How the worker batches and reports."""

    batch_size: int = 4
    batch_wait_seconds: float = 0.1  # how long the oldest waiting job may wait for a fuller batch
    similar_k: int = 4
    threshold: float = DEFAULT_THRESHOLD
    operating_point: OperatingPoint | None = None  # validation sensitivity / specificity at threshold
    calibration: str = "uncalibrated"  # how the probability was calibrated (the bundle's), in words
    destinations: tuple[str, ...] = ()
    relevance_map: bool = True  # Grad-CAM, for the SR's region and the summary image's heatmap
    summary_image: bool = True
    lung_segmentation: bool = False
    key_images: bool = True  # the Key Object Selection of the similar images
    backend_retry_initial_seconds: float = 1.0  # first wait after the remote backend failed, then doubling
    backend_retry_max_seconds: float = 60.0
    overlap_reports: bool = False  # build a batch's reports while the next one is analysed


def similar_studies(neighbours: Sequence[Neighbour]) -> list[SimilarStudy]:
    """The report's similar studies from index neighbours (nearest first)."""
    return [
        SimilarStudy(
            study_instance_uid=n.item.study_instance_uid,
            series_instance_uid=n.item.series_instance_uid,
            sop_instance_uid=n.item.sop_instance_uid,
            sop_class_uid=n.item.sop_class_uid,
            distance=max(0.0, float(n.distance)),
            label=n.item.label,
            similarity=None if n.similarity is None else float(n.similarity),
            study_date=n.item.study_date or None,
        )
        for n in neighbours
    ]


def encode(dataset: Dataset) -> bytes:
    """A data set as a DICOM file (preamble, file meta, data set) in memory."""
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def batch_wait_left(oldest_received_at: str, waiting: int, settings: WorkerSettings, now: float) -> float:
    """Seconds the batch may still wait for company (0 when it is full or its oldest job waited enough)."""
    if waiting >= settings.batch_size:
        return 0.0
    waited = now - datetime.fromisoformat(oldest_received_at).timestamp()
    return max(0.0, settings.batch_wait_seconds - waited)


def batch_is_due(oldest_received_at: str, waiting: int, settings: WorkerSettings, now: float) -> bool:
    """Start a batch when it is full or its oldest job has waited ``batch_wait_seconds``.

    >>> s = WorkerSettings(batch_size=4, batch_wait_seconds=0.1)
    >>> batch_is_due("2026-01-01T00:00:00.000+00:00", 4, s, 0.0)
    True
    >>> t = datetime.fromisoformat("2026-01-01T00:00:00.000+00:00").timestamp()
    >>> batch_is_due("2026-01-01T00:00:00.000+00:00", 1, s, t + 0.05), batch_is_due("2026-01-01T00:00:00.000+00:00", 1, s, t + 0.2)
    (False, True)
    """
    return batch_wait_left(oldest_received_at, waiting, settings, now) == 0.0


class InferenceWorker:
    """Analyses received jobs in batches and puts their reports in the outbox.

    Parameters
    ----------
    spool : Spool
        The node's spool.
    analyser : Analyser
        The models and the similar-study index (in-process: the bundle's).
    algorithm : AlgorithmInfo
        What goes into the reports as the algorithm.
    settings : WorkerSettings
        Batching, k, threshold and the destinations of each report.
    on_result : callable, optional
        Called after reports were put in the outbox (wakes the outbox).
    clock : callable
        Unix time now.
    metrics : NodeMetrics or None
        Where batch times and outcomes are counted.
    audit : AuditLog or None
        Where each job's outcome is recorded: its report's UID and finding, or why not.
    keep_prior : callable or None
        Called with each reported image's header and embedding before its result enters the
        outbox (``[index] grow``: the study becomes a pending prior of the grown index).
    """

    def __init__(
        self,
        spool: Spool,
        analyser: Analyser[Any],
        algorithm: AlgorithmInfo,
        settings: WorkerSettings,
        *,
        on_result: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.time,
        metrics: NodeMetrics | None = None,
        audit: AuditLog | None = None,
        keep_prior: Callable[[Dataset, np.ndarray], None] | None = None,
    ) -> None:
        self.metrics = metrics
        self.audit = audit
        self.keep_prior = keep_prior
        self.spool = spool
        self.analyser = analyser
        self.algorithm = algorithm
        self.settings = settings
        self.on_result = on_result
        self.clock = clock
        self.wake = threading.Event()
        self.backend_failures = 0  # consecutive batches the backend could not answer
        self.backend_retry_at = 0.0  # no batch before this (Unix time)
        self._reporter: ThreadPoolExecutor | None = None  # started by the first overlapped batch
        self._reports_pending: Future[None] | None = None

    def run(self, stop: threading.Event, poll_seconds: float = 1.0) -> None:
        """Work until ``stop`` is set, then finish the reports in progress; errors are logged and
        the loop goes on."""
        try:
            while not stop.is_set():
                try:
                    if self.run_once():
                        continue
                    self.finish_reports()  # idle: nothing to overlap with
                except Exception:
                    logger.exception("worker: unexpected error; retrying in %.0f s", poll_seconds)
                self.wake.wait(poll_seconds)
                self.wake.clear()
        finally:
            self.finish_reports()

    def finish_reports(self) -> None:
        """Wait until the batch whose reports are being built (``overlap_reports``) is in the outbox."""
        pending, self._reports_pending = self._reports_pending, None
        if pending is not None:
            pending.result()  # _report_batch catches each job's errors: nothing is raised here

    def run_once(self) -> int:
        """Analyse one batch if one is due; return the number of jobs taken."""
        if self.clock() < self.backend_retry_at:
            return 0
        waiting = list(self.spool.jobs(JobState.RECEIVED))
        if not waiting:
            return 0
        wait = batch_wait_left(waiting[0].received_at, len(waiting), self.settings, self.clock())
        if wait > 0:
            self.wake.wait(wait)
            self.wake.clear()
            waiting = list(self.spool.jobs(JobState.RECEIVED))
        batch = waiting[: self.settings.batch_size]
        self.analyse(batch)
        return len(batch)

    def analyse(self, jobs: Sequence[Job]) -> None:
        """Analyse ``jobs`` (in ``received``) to the end: outbox, not analysed, or back to received."""
        started = time.monotonic()
        ready: list[tuple[Job, Dataset, PreparedImage]] = []
        for job in jobs:
            job = self.spool.transition(job, JobState.PROCESSING, attempts=job.attempts + 1)
            try:
                prepared = self._prepare(job)
            except BackendUnavailableError as exc:
                self._backend_unavailable([*(j for j, _, _ in ready), job], exc)
                return
            if prepared is not None:
                ready.append((job, *prepared))
        if not ready:
            return
        try:
            predictions = self.analyser.predict(
                [image for _, _, image in ready], relevance=self.settings.relevance_map
            )
        except BackendUnavailableError as exc:
            self._backend_unavailable([j for j, _, _ in ready], exc)
            return
        except Exception as exc:
            for job, _, _ in ready:
                self._retry_or_give_up(job, exc)
            return
        self.backend_failures = 0
        self.finish_reports()  # the previous batch's: one waits at most
        if not self.settings.overlap_reports:
            self._report_batch(ready, predictions, len(jobs), started)
            return
        if self._reporter is None:
            self._reporter = ThreadPoolExecutor(1, thread_name_prefix="reports")
        self._reports_pending = self._reporter.submit(self._report_batch, ready, predictions, len(jobs), started)

    def _report_batch(
        self, ready: Sequence[tuple[Job, Dataset, PreparedImage]], predictions: Sequence[Prediction],
        taken: int, started: float,
    ) -> None:
        """Each classified job's report into the outbox (or its retry); never raises."""
        for (job, header, image), prediction in zip(ready, predictions):
            try:
                self._report(job, header, image, prediction)
            except Exception as exc:
                self._retry_or_give_up(job, exc)
        elapsed_ms = (time.monotonic() - started) * 1000
        if self.metrics is not None:
            self.metrics.batch_seconds.observe(elapsed_ms / 1000)
        logger.info("batch: %d job(s), %d classified, %.0f ms", taken, len(ready), elapsed_ms)
        if self.on_result is not None:
            self.on_result()

    def _prepare(self, job: Job) -> tuple[Dataset, PreparedImage] | None:
        """Header check, decoding and preprocessing; ``None`` when the job ended here."""
        if job.attempts > MAX_ATTEMPTS:
            self._not_analysed(job, f"analysis error: gave up after {MAX_ATTEMPTS} attempts")
            return None
        path = self.spool.instance_path(job.sop_instance_uid)
        unavailable: BaseException | None = None
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
            verdict = check_header(header)
            if not verdict.applicable:
                self._not_analysed(job, verdict.reason)
                return None
            image = self.analyser.prepare(path)
        except Exception as exc:
            # The remote U-Net inside the preprocessing (MONAI wraps it): raised below, out of this
            # block, so MONAI's wrapper (which may quote data) is not chained to it.
            unavailable = find_cause(exc, BackendUnavailableError)
            if unavailable is None:
                cause = find_cause(exc, (UndecodableImageError, pydicom.errors.InvalidDicomError))
                if cause is not None:
                    self._not_analysed(job, f"undecodable: {describe_exception(cause)}")
                else:
                    self._retry_or_give_up(job, exc)
                return None
        if unavailable is not None:
            raise unavailable
        verdict = check_image(image)
        if not verdict.applicable:  # never a finding on what the classifier was not made for
            self._not_analysed(job, verdict.reason)
            return None
        return header, image

    def _report(self, job: Job, header: Dataset, image: PreparedImage, prediction: Prediction) -> None:
        finding = Finding(
            probability=prediction.probability, threshold=self.settings.threshold,
            operating_point=self.settings.operating_point, calibration=self.settings.calibration,
        )
        similar = similar_studies(self.analyser.similar(
            prediction.embedding, self.settings.similar_k, exclude_study=str(header.get("StudyInstanceUID", ""))
        ))
        result = build_result(
            header, finding, similar, self.algorithm, image_evidence(image, prediction.relevance),
            summary_image=self.settings.summary_image, lung_segmentation=self.settings.lung_segmentation,
            key_images=self.settings.key_images,
        )
        if self.keep_prior is not None:
            self.keep_prior(header, prediction.embedding)
        self.spool.put_result(
            job, encode(result.report), self.settings.destinations,
            companions=[(kind, encode(dataset)) for kind, dataset in result.companions],
        )
        if self.metrics is not None:
            self.metrics.analysed.labels("report").inc()
            self.metrics.report_ready_seconds.observe(self.metrics.since(job.received_at, self.clock()))
        logger.info(
            "job %s: covid_probability=%.3f finding=%s similar=%d lung=%.0f%% report=%s with=%s",
            job.job_id, finding.probability, "present" if finding.is_present else "absent",
            len(similar), 100 * image.lung_fraction, result.report.SOPInstanceUID,
            ",".join(kind for kind, _ in result.companions) or "-",
        )
        if self.audit is not None:
            self.audit.record(
                "analysis", "report", calling_ae=job.calling_ae_title, sop_instance_uid=job.sop_instance_uid,
                report_uid=str(result.report.SOPInstanceUID), finding="present" if finding.is_present else "absent",
            )

    def _not_analysed(self, job: Job, reason: str) -> None:
        self.spool.transition(job, JobState.NOT_ANALYSED, detail=reason)
        if self.metrics is not None:
            self.metrics.analysed.labels("not_analysed").inc()
        # The log gets the reason's category only: its detail may quote a header value (a body
        # part, a view); the job record keeps it for `cxr-node status`.
        logger.warning("job %s: not analysed (%s)", job.job_id, reason.split(":", 1)[0])
        if self.audit is not None:  # the category only, as in the log
            self.audit.record(
                "analysis", "not_analysed", calling_ae=job.calling_ae_title, sop_instance_uid=job.sop_instance_uid,
                detail=reason.split(":", 1)[0],
            )

    def _backend_unavailable(self, jobs: Sequence[Job], error: BackendUnavailableError) -> None:
        """Hand ``jobs`` (in processing) back to received, their tries intact, and back off."""
        self.backend_failures += 1
        delay = next_retry_delay(
            self.backend_failures, initial=self.settings.backend_retry_initial_seconds,
            maximum=self.settings.backend_retry_max_seconds,
        )
        self.backend_retry_at = self.clock() + delay
        what = describe_exception(error)  # our own messages: URLs, statuses, model identities
        for job in jobs:
            self.spool.transition(
                job, JobState.RECEIVED, attempts=job.attempts - 1, backend_attempts=job.backend_attempts + 1,
                detail=f"waiting for the analysis backend (try {job.backend_attempts + 1}): {what}",
            )
        if self.metrics is not None:
            self.metrics.backend_waits.inc()
        logger.error("backend: %d job(s) back to received, next try in %.0f s (%s)", len(jobs), delay, what)

    def _retry_or_give_up(self, job: Job, error: BaseException) -> None:
        # Exception types (and our own messages) only: pydicom's messages quote raw values.
        cause = error.__cause__ if isinstance(error, RuntimeError) and error.__cause__ else error  # MONAI's wrapper
        what = describe_exception(cause)
        if job.attempts >= MAX_ATTEMPTS:
            self._not_analysed(job, f"analysis error: {what}")
        else:
            self.spool.transition(job, JobState.RECEIVED, detail=f"attempt {job.attempts} failed: {what}")
            if self.metrics is not None:
                self.metrics.analysed.labels("retry").inc()
            logger.error("job %s: attempt %d failed (%s); will retry", job.job_id, job.attempts, what)
            if self.audit is not None:
                self.audit.record(
                    "analysis", "retry", calling_ae=job.calling_ae_title, sop_instance_uid=job.sop_instance_uid,
                    detail=f"attempt {job.attempts} failed: {what}", attempt=job.attempts,
                )

"""The outbox: deliver each result (the report and the objects it references) to each PACS destination, retrying until done or given up.

The decisions are pure functions of a job's record and the time (:func:`record_attempt`,
:func:`is_due`, :func:`final_state`); :class:`Outbox` is the thin loop around them that
talks to the network and the spool. Every attempt is written to the job's record before
the next one, so a restart resumes where the node stopped: a report delivered just before
a crash may be sent once more, and the PACS stores it once (same SOP Instance UID).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

from dicom_node.audit import AuditLog, peer_address
from dicom_node.config import NodeConfig, PacsDestination
from dicom_node.metrics import NodeMetrics
from dicom_node.send.delivery import DeliveryResult, next_retry_delay, send_files
from dicom_node.spool import DeliveryState, Job, JobState, Spool
from dicom_node.spool.store import JobMovedError

logger = logging.getLogger(__name__)

SendFiles = Callable[..., DeliveryResult]
""":func:`dicom_node.send.delivery.send_files` or a stand-in: ``(paths, destination, **options)``."""


@dataclass(frozen=True)
class RetryPolicy:
    """When to try again, and when to give up."""

    max_attempts: int
    max_age_seconds: float
    initial_delay: float
    max_delay: float

    @classmethod
    def from_config(cls, config: NodeConfig) -> RetryPolicy:
        return cls(
            max_attempts=config.max_attempts,
            max_age_seconds=config.max_age_hours * 3600.0,
            initial_delay=float(config.retry_initial_seconds),
            max_delay=float(config.retry_max_seconds),
        )


def is_due(delivery: DeliveryState, now: float) -> bool:
    """Whether a delivery should be tried at ``now``."""
    return not delivery.delivered and delivery.next_attempt_at <= now


def record_attempt(delivery: DeliveryState, result: DeliveryResult, now: float, policy: RetryPolicy) -> DeliveryState:
    """The delivery's state after one attempt with ``result`` at ``now``."""
    attempts = delivery.attempts + 1
    if result.delivered:
        return replace(delivery, delivered=True, attempts=attempts, last_status=result.status, last_error="")
    delay = next_retry_delay(attempts, initial=policy.initial_delay, maximum=policy.max_delay)
    return replace(
        delivery,
        attempts=attempts,
        next_attempt_at=now + delay,
        last_status=result.status,
        last_error=result.error or "not delivered",
    )


def final_state(deliveries: Sequence[DeliveryState], ready_since: float, now: float, policy: RetryPolicy) -> tuple[JobState, str] | None:
    """``(SENT | FAILED, why)`` once the outbox is done with a job, else ``None``.

    With no destination at all the report stays in the outbox: that is where a hospital
    finds it, and it goes out once a destination is configured.
    """
    if not deliveries:
        return None
    pending = [d for d in deliveries if not d.delivered]
    if not pending:
        return JobState.SENT, "delivered to " + ", ".join(d.destination for d in deliveries)
    exhausted = [d for d in pending if d.attempts >= policy.max_attempts]
    if exhausted:
        return JobState.FAILED, "; ".join(
            f"{d.destination}: gave up after {d.attempts} attempts ({d.last_error})" for d in exhausted
        )
    if now - ready_since > policy.max_age_seconds:
        return JobState.FAILED, "; ".join(
            f"{d.destination}: not delivered within {policy.max_age_seconds / 3600:g} h ({d.last_error})"
            for d in pending
        )
    return None


@dataclass(frozen=True)
class DestinationDown:
    """A destination that gave no answer: how many times in a row, and until when it is left alone."""

    failures: int
    until: float  # Unix time


def next_down(previous: DestinationDown | None, now: float, policy: RetryPolicy) -> DestinationDown:
    """The state after one more attempt without an answer: the retry policy's backoff, per destination.

    >>> policy = RetryPolicy(max_attempts=20, max_age_seconds=3600, initial_delay=10, max_delay=60)
    >>> [next_down(DestinationDown(n, 0), 100.0, policy).until for n in (0, 1, 2, 5)]
    [110.0, 120.0, 140.0, 160.0]
    """
    failures = (previous.failures if previous else 0) + 1
    delay = next_retry_delay(failures, initial=policy.initial_delay, maximum=policy.max_delay)
    return DestinationDown(failures, now + delay)


def with_destinations(deliveries: Sequence[DeliveryState], names: Iterable[str]) -> tuple[DeliveryState, ...]:
    """Add a fresh delivery for every configured destination the job does not have yet."""
    known = {d.destination for d in deliveries}
    return (*deliveries, *(DeliveryState(n) for n in names if n not in known))


class Outbox:
    """Sends the outbox's reports, one job and one destination at a time.

    Parameters
    ----------
    spool : Spool
        Where the jobs and reports are.
    destinations : Sequence[PacsDestination]
        The configured PACS.
    policy : RetryPolicy
        Backoff and give-up rules.
    calling_ae_title : str
        The node's AE title, as the PACS knows it.
    send : callable
        :func:`dicom_node.send.delivery.send_files` or a stand-in with its signature.
    clock : callable
        Unix time now.
    metrics : NodeMetrics or None
        Where attempts and delivery times are counted.
    audit : AuditLog or None
        Where every attempt is recorded (destination, its AE and address, status), and a
        job given up.
    """

    def __init__(
        self,
        spool: Spool,
        destinations: Sequence[PacsDestination],
        policy: RetryPolicy,
        calling_ae_title: str,
        *,
        send: SendFiles = send_files,
        clock: Callable[[], float] = time.time,
        timeout: float = 30,
        metrics: NodeMetrics | None = None,
        audit: AuditLog | None = None,
    ) -> None:
        self.metrics = metrics
        self.audit = audit
        self.spool = spool
        self.destinations = {d.name: d for d in destinations}
        self.policy = policy
        self.calling_ae_title = calling_ae_title
        self.send = send
        self.clock = clock
        self.timeout = timeout
        self.wake = threading.Event()  # set when a report is ready, or to stop
        # A PACS that does not answer at all is tried once per backoff step, not once per
        # waiting result: in memory only (a restart tries at once).
        self._unreachable: dict[str, DestinationDown] = {}

    def run_once(self) -> int:
        """Try every delivery that is due; return how many attempts were made."""
        attempts = 0
        for job in list(self.spool.jobs(JobState.OUTBOX)):
            attempts += self._work_on(job)
        return attempts

    def _work_on(self, job: Job) -> int:
        deliveries = with_destinations(job.deliveries, self.destinations)
        if deliveries != job.deliveries:
            job = self.spool.update(replace(job, deliveries=deliveries))
        attempts = 0
        for index, delivery in enumerate(job.deliveries):
            destination = self.destinations.get(delivery.destination)
            if destination is None or not is_due(delivery, self.clock()):
                continue  # a destination removed from the config waits until it is back
            down = self._unreachable.get(destination.name)
            if down is not None and down.until > self.clock():
                continue  # it did not answer a moment ago: this result waits, its attempts uncounted
            result = self.send(
                self.spool.result_paths(job), destination, calling_ae_title=self.calling_ae_title,
                acse_timeout=self.timeout, dimse_timeout=self.timeout, network_timeout=self.timeout,
            )
            updated = record_attempt(delivery, result, self.clock(), self.policy)
            self._note_reachability(destination.name, result)
            if self.metrics is not None:
                self.metrics.delivery_attempts.labels(destination.name, "delivered" if result.delivered else "failed").inc()
                if result.delivered:
                    self.metrics.delivered_seconds.labels(destination.name).observe(
                        self.metrics.since(job.received_at, self.clock())
                    )
            job = self.spool.update(
                replace(job, deliveries=(*job.deliveries[:index], updated, *job.deliveries[index + 1:]))
            )
            attempts += 1
            logger.info(
                "delivery: job=%s destination=%s attempt=%d delivered=%s%s",
                job.job_id, destination.name, updated.attempts, updated.delivered,
                "" if updated.delivered else f" retry_in={updated.next_attempt_at - self.clock():.0f}s",
            )
            if self.audit is not None:
                self.audit.record(
                    "delivery", "delivered" if result.delivered else "failed", calling_ae=self.calling_ae_title,
                    called_ae=destination.ae_title, peer=peer_address(destination.host, destination.port),
                    tls="yes" if destination.tls else "no", destination=destination.name,
                    sop_instance_uid=job.sop_instance_uid,
                    status="" if result.status is None else f"0x{result.status:04X}",
                    detail="" if result.delivered else updated.last_error, attempt=updated.attempts,
                    instances=len(job.companion_files) + 1,
                )
        done = final_state(job.deliveries, job.entered_state_at().timestamp(), self.clock(), self.policy)
        if done is not None:
            state, why = done
            self.spool.transition(job, state, detail=why)
            log = logger.info if state is JobState.SENT else logger.error
            log("job %s: %s (%s)", job.job_id, state.value, why)
            if state is JobState.FAILED and self.audit is not None:
                self.audit.record("delivery", "given_up", sop_instance_uid=job.sop_instance_uid, detail=why)
        return attempts

    def _note_reachability(self, name: str, result: DeliveryResult) -> None:
        if result.status is not None:  # it answered (Success, Warning or a refusal): reachable
            if self._unreachable.pop(name, None) is not None:
                logger.info("delivery: destination %s answers again", name)
            return
        down = next_down(self._unreachable.get(name), self.clock(), self.policy)
        if down.failures == 1:
            logger.warning(
                "delivery: destination %s does not answer; its other results wait, tried again in %.0f s",
                name, down.until - self.clock(),
            )
        self._unreachable[name] = down

    def run(self, stop: threading.Event, poll_seconds: float = 1.0) -> None:
        """Deliver until ``stop`` is set; errors are logged and the loop goes on."""
        while not stop.is_set():
            try:
                self.run_once()
            except Exception:
                logger.exception("outbox: unexpected error; retrying in %.0f s", poll_seconds)
            self.wake.wait(poll_seconds)
            self.wake.clear()


def requeue_failed(spool: Spool, job_ids: Iterable[str] | None = None) -> list[Job]:
    """Move failed jobs that have a report back to the outbox, with fresh retry counts.

    ``job_ids=None`` requeues every such job. Deliveries already made are kept, so only
    the destinations that did not get the report are tried again.
    """
    wanted = None if job_ids is None else set(job_ids)
    requeued = []
    for job in list(spool.jobs(JobState.FAILED)):
        if (wanted is not None and job.job_id not in wanted) or not job.result_file:
            continue
        fresh = tuple(d if d.delivered else DeliveryState(d.destination) for d in job.deliveries)
        try:
            requeued.append(spool.transition(job, JobState.OUTBOX, detail="requeued by resend", deliveries=fresh))
        except JobMovedError:
            continue  # requeued by another resend meanwhile
    return requeued

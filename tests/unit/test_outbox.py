"""The outbox: retry decisions (pure) and the loop with a scripted sender (with Orthanc: tests/integration/test_outbox_node.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from dicom_node.audit import AuditLog
from dicom_node.config import PacsDestination
from dicom_node.send.delivery import DeliveryResult
from dicom_node.send.outbox import (
    Outbox,
    RetryPolicy,
    final_state,
    is_due,
    record_attempt,
    requeue_failed,
    with_destinations,
)
from dicom_node.spool import DeliveryState, JobState, Spool
from testkit.sr import job_in_outbox

POLICY = RetryPolicy(max_attempts=3, max_age_seconds=3600, initial_delay=10, max_delay=60)
FAILED = DeliveryResult(delivered=False, status=None, error="association aborted or no answer")
OK = DeliveryResult(delivered=True, status=0x0000)


def test_a_failed_attempt_schedules_the_next_with_backoff() -> None:
    first = record_attempt(DeliveryState("pacs"), FAILED, now=1000, policy=POLICY)
    assert (first.attempts, first.next_attempt_at, first.delivered) == (1, 1010, False)
    second = record_attempt(first, FAILED, now=1010, policy=POLICY)
    assert second.next_attempt_at == 1030
    assert not is_due(second, 1029) and is_due(second, 1030)


def test_a_successful_attempt_is_final() -> None:
    done = record_attempt(DeliveryState("pacs", attempts=2), OK, now=5, policy=POLICY)
    assert done.delivered and done.attempts == 3 and done.last_error == ""
    assert not is_due(done, 10**9)


def test_job_is_sent_only_when_every_destination_has_it() -> None:
    half = (DeliveryState("a", delivered=True), DeliveryState("b"))
    assert final_state(half, ready_since=0, now=1, policy=POLICY) is None
    both = (DeliveryState("a", delivered=True), DeliveryState("b", delivered=True))
    sent = final_state(both, ready_since=0, now=1, policy=POLICY)
    assert sent is not None and sent[0] is JobState.SENT


def test_job_fails_after_max_attempts_or_max_age() -> None:
    tired = (DeliveryState("a", attempts=3, last_error="refused"),)
    gave_up = final_state(tired, ready_since=0, now=1, policy=POLICY)
    assert gave_up is not None
    state, why = gave_up
    assert state is JobState.FAILED and "gave up after 3 attempts (refused)" in why
    old = (DeliveryState("a", attempts=1),)
    expired = final_state(old, ready_since=0, now=3601, policy=POLICY)
    assert expired is not None and expired[0] is JobState.FAILED


def test_without_destinations_the_report_stays_in_the_outbox() -> None:
    assert final_state((), ready_since=0, now=10**9, policy=POLICY) is None
    assert with_destinations((), ["pacs"]) == (DeliveryState("pacs"),)
    kept = (DeliveryState("pacs", attempts=2),)
    assert with_destinations(kept, ["pacs", "backup"]) == (*kept, DeliveryState("backup"))


class ScriptedSend:
    """Answers each send from a list of results and records when it was called."""

    def __init__(self, results: list[DeliveryResult], clock: list[float]) -> None:
        self.results, self.clock = list(results), clock
        self.calls: list[tuple[str, float]] = []

    def __call__(self, paths: list[Path], destination: PacsDestination, **_: object) -> DeliveryResult:
        assert paths and all(path.is_file() for path in paths)
        self.calls.append((destination.name, self.clock[0]))
        return self.results.pop(0)


def _outbox(spool: Spool, send: ScriptedSend, clock: list[float], names: tuple[str, ...] = ("main",)) -> Outbox:
    destinations = [PacsDestination(n, "PACS", "127.0.0.1", 104) for n in names]
    return Outbox(spool, destinations, POLICY, "CXR_AI", send=send, clock=lambda: clock[0])


def test_outbox_retries_on_schedule_and_marks_the_job_sent(tmp_path: Path) -> None:
    spool, clock = Spool(tmp_path), [time.time()]
    job = job_in_outbox(spool, ["main"])
    send = ScriptedSend([FAILED, OK], clock)
    outbox = _outbox(spool, send, clock)
    assert outbox.run_once() == 1
    clock[0] += 9
    assert outbox.run_once() == 0, "tried again before the backoff delay"
    clock[0] += 1
    assert outbox.run_once() == 1
    done = Spool(tmp_path).find_job(job.job_id)  # read back from disk
    assert done is not None
    assert done.state is JobState.SENT and done.deliveries[0].attempts == 2


def test_outbox_gives_up_after_max_attempts_and_resend_requeues(tmp_path: Path) -> None:
    spool, clock = Spool(tmp_path), [time.time()]
    job = job_in_outbox(spool, ["main", "backup"])
    send = ScriptedSend([OK, FAILED, FAILED, FAILED], clock)
    outbox = _outbox(spool, send, clock, names=("main", "backup"))
    for _ in range(3):
        outbox.run_once()
        clock[0] += 60
    failed = spool.find_job(job.job_id)
    assert failed is not None
    assert failed.state is JobState.FAILED and "backup: gave up after 3 attempts" in failed.detail
    (requeued,) = requeue_failed(spool)
    assert requeued.state is JobState.OUTBOX
    assert requeued.deliveries == (failed.deliveries[0], DeliveryState("backup"))  # main keeps its delivery


def test_every_attempt_and_the_give_up_are_in_the_audit_trail(tmp_path: Path) -> None:
    spool, clock = Spool(tmp_path / "spool"), [time.time()]
    job = job_in_outbox(spool, ["main", "backup"])
    audit = AuditLog(tmp_path / "audit")
    destinations = [PacsDestination("main", "PACS", "127.0.0.1", 104), PacsDestination("backup", "BACKUP", "::1", 11112)]
    send = ScriptedSend([OK, DeliveryResult(False, 0xA700, "status 0xA700"), FAILED, FAILED], clock)
    outbox = Outbox(spool, destinations, POLICY, "CXR_AI", send=send, clock=lambda: clock[0], audit=audit)
    for _ in range(3):
        outbox.run_once()
        clock[0] += 60
    records = [json.loads(line) for path in sorted((tmp_path / "audit").iterdir()) for line in path.read_text().splitlines()]
    assert [(r["result"], r.get("destination"), r.get("status")) for r in records] == [
        ("delivered", "main", "0x0000"), ("failed", "backup", "0xA700"), ("failed", "backup", None),
        ("failed", "backup", None), ("given_up", None, None),
    ]
    delivered, refused = records[0], records[1]
    assert (delivered["calling_ae"], delivered["called_ae"], delivered["peer"]) == ("CXR_AI", "PACS", "127.0.0.1:104")
    assert delivered["sop_instance_uid"] == job.job_id and delivered["atna_action"] == "R" and delivered["outcome"] == 0
    assert refused["peer"] == "[::1]:11112" and refused["detail"] == "status 0xA700" and refused["outcome"] == 4
    assert records[-1]["outcome"] == 8 and "backup: gave up after 3 attempts" in records[-1]["detail"]


def test_a_pacs_that_does_not_answer_costs_one_attempt_per_backoff_step_not_one_per_result(tmp_path: Path) -> None:
    spool, clock = Spool(tmp_path), [time.time()]
    jobs = [job_in_outbox(spool, ["main"], uid=f"1.2.826.0.1.3680043.10.9.{n}") for n in range(5)]
    send = ScriptedSend([FAILED, FAILED, OK, OK, OK, OK, OK], clock)
    outbox = _outbox(spool, send, clock)

    assert outbox.run_once() == 1, "the first result finds the PACS down; the other four wait"
    clock[0] += 5
    assert outbox.run_once() == 0, "within the backoff nobody tries"
    clock[0] += 5
    assert outbox.run_once() == 1, "one more try after 10 s (the policy's first step)"
    clock[0] += 20
    assert outbox.run_once() == 5, "it answers: every due result goes in the same pass"
    assert all((spool.find_job(j.job_id) or j).state is JobState.SENT for j in jobs)
    attempts = sorted(d.attempts for j in jobs for d in (spool.find_job(j.job_id) or j).deliveries)
    assert len(send.calls) == 7 and attempts == [1, 1, 1, 2, 2], "waiting results were not charged for the outage"


def test_a_pacs_that_answers_with_a_refusal_is_reachable(tmp_path: Path) -> None:
    spool, clock = Spool(tmp_path), [time.time()]
    for n in range(3):
        job_in_outbox(spool, ["main"], uid=f"1.2.826.0.1.3680043.10.9.{n}")
    refused = DeliveryResult(delivered=False, status=0xA700, error="status 0xA700")
    send = ScriptedSend([refused, refused, refused], clock)
    assert _outbox(spool, send, clock).run_once() == 3, "a refusal is per result: each is tried"

"""The outbox: retry decisions (pure), the loop with a scripted sender, and Orthanc for real."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian

from tests.conftest import shared_data_dir
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
from dicom_node.spool import DeliveryState, Job, JobState, Spool
from dicom_node.report.sr import AlgorithmInfo, Finding, SimilarStudy, build_report
from tests.orthanc import ORTHANC_AE_TITLE, OrthancServer

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
    assert final_state(both, ready_since=0, now=1, policy=POLICY)[0] is JobState.SENT


def test_job_fails_after_max_attempts_or_max_age() -> None:
    tired = (DeliveryState("a", attempts=3, last_error="refused"),)
    state, why = final_state(tired, ready_since=0, now=1, policy=POLICY)
    assert state is JobState.FAILED and "gave up after 3 attempts (refused)" in why
    old = (DeliveryState("a", attempts=1),)
    assert final_state(old, ready_since=0, now=3601, policy=POLICY)[0] is JobState.FAILED


def test_without_destinations_the_report_stays_in_the_outbox() -> None:
    assert final_state((), ready_since=0, now=10**9, policy=POLICY) is None
    assert with_destinations((), ["pacs"]) == (DeliveryState("pacs"),)
    kept = (DeliveryState("pacs", attempts=2),)
    assert with_destinations(kept, ["pacs", "backup"]) == (*kept, DeliveryState("backup"))


def _report_bytes(source_name: str = "RG1_J2KI.dcm") -> tuple[bytes, str]:
    source = pydicom.dcmread(shared_data_dir() / "dicom" / "pydicom-data" / source_name, stop_before_pixels=True)
    report = build_report(
        source, Finding(0.8),
        [SimilarStudy("1.2.826.0.1.3680043.10.9.1", "1.2.826.0.1.3680043.10.9.1.1",
                      "1.2.826.0.1.3680043.10.9.1.1.1", "1.2.840.10008.5.1.4.1.1.7", 0.25, "covid")],
        AlgorithmInfo("cxr_covid_classifier", "0.0.1", "cd" * 32, "CXR AI node project"),
    )
    buffer = BytesIO()
    report.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue(), str(report.SOPInstanceUID)


def _job_in_outbox(spool: Spool, destinations: list[str], uid: str = "1.2.826.0.1.3680043.10.9.7") -> Job:
    job, _ = spool.store_instance(
        [b"instance"], sop_instance_uid=uid, sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
        transfer_syntax_uid=ExplicitVRLittleEndian, calling_ae_title="DX1",
    )
    report, _ = _report_bytes()
    return spool.put_result(job, report, destinations)


class ScriptedSend:
    """Answers each send from a list of results and records when it was called."""

    def __init__(self, results: list[DeliveryResult], clock: list[float]) -> None:
        self.results, self.clock, self.calls = list(results), clock, []

    def __call__(self, path: Path, destination: PacsDestination, **_: object) -> DeliveryResult:
        assert path.is_file()
        self.calls.append((destination.name, self.clock[0]))
        return self.results.pop(0)


def _outbox(spool: Spool, send: ScriptedSend, clock: list[float], names: tuple[str, ...] = ("main",)) -> Outbox:
    destinations = [PacsDestination(n, "PACS", "127.0.0.1", 104) for n in names]
    return Outbox(spool, destinations, POLICY, "CXR_AI", send=send, clock=lambda: clock[0])


def test_outbox_retries_on_schedule_and_marks_the_job_sent(tmp_path: Path) -> None:
    spool, clock = Spool(tmp_path), [time.time()]
    job = _job_in_outbox(spool, ["main"])
    send = ScriptedSend([FAILED, OK], clock)
    outbox = _outbox(spool, send, clock)
    assert outbox.run_once() == 1
    clock[0] += 9
    assert outbox.run_once() == 0, "tried again before the backoff delay"
    clock[0] += 1
    assert outbox.run_once() == 1
    done = Spool(tmp_path).find_job(job.job_id)  # read back from disk
    assert done.state is JobState.SENT and done.deliveries[0].attempts == 2


def test_outbox_gives_up_after_max_attempts_and_resend_requeues(tmp_path: Path) -> None:
    spool, clock = Spool(tmp_path), [time.time()]
    job = _job_in_outbox(spool, ["main", "backup"])
    send = ScriptedSend([OK, FAILED, FAILED, FAILED], clock)
    outbox = _outbox(spool, send, clock, names=("main", "backup"))
    for _ in range(3):
        outbox.run_once()
        clock[0] += 60
    failed = spool.find_job(job.job_id)
    assert failed.state is JobState.FAILED and "backup: gave up after 3 attempts" in failed.detail
    (requeued,) = requeue_failed(spool)
    assert requeued.state is JobState.OUTBOX
    assert requeued.deliveries == (failed.deliveries[0], DeliveryState("backup"))  # main keeps its delivery


@pytest.fixture
def orthanc(tmp_path: Path):
    server = OrthancServer(tmp_path / "orthanc", calling_ae_titles=("CXR_AI",))
    yield server
    server.stop()


def _node_config(tmp_path: Path, orthanc: OrthancServer) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(
        "[delivery]\nretry_initial_seconds = 1\nretry_max_seconds = 2\n"
        f'[[destinations]]\nname = "orthanc"\nae_title = "{ORTHANC_AE_TITLE}"\n'
        f'host = "127.0.0.1"\nport = {orthanc.dicom_port}\n'
    )
    return path


def _wait_for(predicate, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def test_report_waiting_before_a_restart_reaches_orthanc_started_late(start_node, tmp_path: Path, orthanc) -> None:
    spool_dir = tmp_path / "spool"
    job = _job_in_outbox(Spool(spool_dir), ["orthanc"])
    report_uid = str(pydicom.dcmread(Spool(spool_dir).result_path(job), stop_before_pixels=True).SOPInstanceUID)
    node = start_node(spool_dir, "--config", str(_node_config(tmp_path, orthanc)))
    assert _wait_for(lambda: "delivered=False" in node.log(), 30), node.log()  # PACS down: it retries
    orthanc.start()
    assert _wait_for(lambda: orthanc.find_instances(report_uid) != []), node.log()
    assert _wait_for(lambda: Spool(spool_dir).find_job(job.job_id).state is JobState.SENT)
    assert len(orthanc.find_instances(report_uid)) == 1


def test_status_lists_failed_reports_and_resend_requeues_them(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    job = _job_in_outbox(spool, ["main"])
    spool.transition(job, JobState.FAILED, detail="main: gave up after 20 attempts (association rejected)")
    cli = [sys.executable, "-m", "dicom_node"]
    status = subprocess.run([*cli, "status", "--json", "--spool", str(spool.root)], capture_output=True, text=True)
    assert json.loads(status.stdout)["failed"] == [
        {"job": job.job_id, "detail": "main: gave up after 20 attempts (association rejected)"}
    ]
    resend = subprocess.run([*cli, "resend", "--all", "--spool", str(spool.root)], capture_output=True, text=True)
    assert resend.returncode == 0 and f"requeued {job.job_id}" in resend.stdout
    assert spool.find_job(job.job_id).state is JobState.OUTBOX
    unknown = subprocess.run([*cli, "resend", "1.2.3", "--spool", str(spool.root)], capture_output=True, text=True)
    assert unknown.returncode == 1 and "1.2.3 is not a failed job with a report" in unknown.stderr

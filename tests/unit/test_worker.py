"""The inference worker in process: real spool, shipped bundle, real shared DICOM files."""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from pathlib import Path

import pydicom
import pytest
import torch

from dicom_node.analyse.worker import MAX_ATTEMPTS, InferenceWorker
from dicom_node.app import build_worker
from dicom_node.audit import AuditLog
from dicom_node.config import NodeConfig
from dicom_node.spool import Job, JobState, Spool

CHESTS = (  # real frontal chest files with file meta, as the receiver spools them
    "pydicom-data/RG1_J2KI.dcm",
    "torchxrayvision/SIIM-ACR_1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm",
)


def _store(spool: Spool, path: Path) -> Job:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    job, _ = spool.store_instance(
        [path.read_bytes()], sop_instance_uid=str(ds.SOPInstanceUID), sop_class_uid=str(ds.SOPClassUID),
        transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID), calling_ae_title="TEST",
    )
    return job


@pytest.fixture(scope="module")
def worker_factory():
    cache: dict[str, InferenceWorker] = {}

    def make(spool: Spool, batch_size: int = 4, overlap_reports: bool = False) -> InferenceWorker:
        """The shipped worker on ``spool``; by default its reports are done when ``run_once`` returns."""
        if "worker" not in cache:
            cache["worker"] = build_worker(NodeConfig(spool=spool.root, device="cpu", batch_size=batch_size), spool)
        worker = cache["worker"]
        worker.finish_reports()
        worker.spool = spool
        worker.settings = replace(worker.settings, batch_size=batch_size, batch_wait_seconds=0.0,
                                  overlap_reports=overlap_reports)
        return worker

    return make


def test_waiting_jobs_are_analysed_in_one_batch_into_reports(worker_factory, tmp_path: Path, shared_data: Path) -> None:
    spool = Spool(tmp_path / "spool", fsync=False)
    jobs = [_store(spool, shared_data / "dicom" / name) for name in CHESTS]
    worker = worker_factory(spool, batch_size=4)
    assert worker.run_once() == len(jobs)
    for job in jobs:
        done = spool.find_job(job.job_id)
        assert done is not None
        assert done.state is JobState.OUTBOX and done.deliveries == ()
        report = pydicom.dcmread(spool.result_path(done))
        assert report.Modality == "SR" and report.StudyInstanceUID == pydicom.dcmread(
            spool.instance_path(job.job_id), stop_before_pixels=True).StudyInstanceUID
    assert worker.run_once() == 0, "nothing left"


def test_a_job_that_keeps_failing_is_set_aside_after_max_attempts(worker_factory, tmp_path: Path, shared_data: Path) -> None:
    spool = Spool(tmp_path / "spool", fsync=False)
    job = _store(spool, shared_data / "dicom" / CHESTS[0])
    spool.update(replace(job, attempts=MAX_ATTEMPTS))  # it crashed the node MAX_ATTEMPTS times
    worker = worker_factory(spool, batch_size=1)
    worker.run_once()
    done = spool.find_job(job.job_id)
    assert done is not None
    assert done.state is JobState.NOT_ANALYSED and done.detail.startswith("analysis error: gave up")


def test_the_threshold_is_the_bundles_unless_the_node_config_sets_one(worker_factory, tmp_path: Path) -> None:
    from testkit.bundle import INFERENCE_CLASSIFIER, parser

    spool = Spool(tmp_path / "spool", fsync=False)
    bundle_threshold = parser(INFERENCE_CLASSIFIER).get_parsed_content("threshold")
    worker = worker_factory(spool)
    assert NodeConfig().threshold is None
    assert worker.settings.threshold == worker.analyser.threshold == bundle_threshold
    overridden = build_worker(NodeConfig(spool=spool.root, device="cpu", threshold=0.7, overlap_reports=False), spool)
    assert overridden.settings.threshold == 0.7


def test_the_node_reports_the_bundles_calibrated_probability_with_the_same_decision(
    worker_factory, tmp_path: Path, shared_data: Path
) -> None:
    from monai_app.calibration import sigmoid

    analyser = worker_factory(Spool(tmp_path / "spool", fsync=False)).analyser
    assert analyser.calibration is not None and analyser.calibration.method != "none"
    assert analyser.identity.calibration == analyser.calibration.description
    assert analyser.identity.calibration_sha256 == analyser.calibration.sha256
    images = [analyser.prepare(shared_data / "dicom" / name) for name in CHESTS[:2]]
    predictions = analyser.predict(images)
    with torch.inference_mode():
        logits = analyser.network(torch.stack([image.tensor for image in images])).double()
    for prediction, logit_pair in zip(predictions, logits):
        margin = float(logit_pair[1] - logit_pair[0])
        raw = float(sigmoid(margin))  # the softmax the node reported before the calibration
        assert prediction.probability == pytest.approx(float(analyser.calibration.probability(margin)), abs=1e-6)
        assert prediction.probability != pytest.approx(raw, abs=1e-3)
        assert (prediction.probability >= analyser.threshold) == (raw >= analyser.calibration.raw_threshold)


def test_the_audit_trail_gets_the_report_uid_and_finding_or_the_reason_category_and_no_patient_data(
    worker_factory, tmp_path: Path, shared_data: Path
) -> None:
    spool = Spool(tmp_path / "spool", fsync=False)
    chest = shared_data / "dicom" / CHESTS[0]
    hip = shared_data / "dicom" / "dicom-test-files" / "RG2_JPLL.dcm"
    jobs = [_store(spool, chest), _store(spool, hip)]
    worker = worker_factory(spool)
    worker.audit = AuditLog(tmp_path / "audit")
    try:
        assert worker.run_once() == 2
    finally:
        worker.audit = None
    [path] = (tmp_path / "audit").iterdir()
    raw = path.read_text()
    records = {r["sop_instance_uid"]: r for r in map(json.loads, raw.splitlines())}
    report = records[jobs[0].job_id]
    done = spool.find_job(jobs[0].job_id)
    assert done is not None
    assert report["result"] == "report" and report["finding"] in ("present", "absent")
    assert report["report_uid"] == pydicom.dcmread(spool.result_path(done)).SOPInstanceUID
    assert (report["atna_event"]["code"], report["atna_action"], report["calling_ae"]) == ("110103", "C", "TEST")
    skipped = records[jobs[1].job_id]
    assert skipped["result"] == "not_analysed" and skipped["outcome"] == 4 and ":" not in skipped["detail"]
    for source in (chest, hip):
        ds = pydicom.dcmread(source, stop_before_pixels=True)
        for value in (str(ds.PatientName), str(ds.PatientID), ds.get("PatientBirthDate", ""), ds.BodyPartExamined):
            assert not value or value not in raw, value


def _state(spool: Spool, job_id: str) -> JobState:
    job = spool.find_job(job_id)
    assert job is not None
    return job.state


def test_overlapped_reports_of_a_batch_are_in_the_outbox_before_the_next_batch_is_reported(
    worker_factory, tmp_path: Path, shared_data: Path
) -> None:
    spool = Spool(tmp_path / "spool", fsync=False)
    first, second = (_store(spool, shared_data / "dicom" / name) for name in CHESTS)
    worker = worker_factory(spool, batch_size=1, overlap_reports=True)
    reporting = threading.Event()
    release = threading.Event()
    report = worker._report

    def held_report(job: Job, *args, **kwargs) -> None:  # holds the first batch's report
        if job.job_id == first.job_id:
            reporting.set()
            assert release.wait(30)
        report(job, *args, **kwargs)

    worker._report = held_report
    try:
        assert worker.run_once() == 1  # returns while its report is still being built
        assert reporting.wait(30)
        assert _state(spool, first.job_id) is JobState.PROCESSING
        release.set()
        assert worker.run_once() == 1  # the second batch waits for the first's reports first
        assert _state(spool, first.job_id) is JobState.OUTBOX
        worker.finish_reports()
        assert _state(spool, second.job_id) is JobState.OUTBOX
    finally:
        release.set()
        del worker._report
        worker.finish_reports()


def test_the_worker_finishes_overlapped_reports_when_stopped(worker_factory, tmp_path: Path, shared_data: Path) -> None:
    spool = Spool(tmp_path / "spool", fsync=False)
    jobs = [_store(spool, shared_data / "dicom" / name) for name in CHESTS]
    worker = worker_factory(spool, batch_size=1, overlap_reports=True)
    stop = threading.Event()
    analysed = []
    run_once = worker.run_once

    def run_then_stop() -> int:  # stop as soon as the last batch was taken: its reports are pending
        taken = run_once()
        analysed.append(taken)
        if sum(analysed) == len(jobs):
            stop.set()
        return taken

    worker.run_once = run_then_stop
    try:
        worker.run(stop, poll_seconds=0.05)
    finally:
        del worker.run_once
    assert [_state(spool, job.job_id) for job in jobs] == [JobState.OUTBOX] * len(jobs)


def test_a_failing_overlapped_report_sends_its_job_back_to_be_tried_again(
    worker_factory, tmp_path: Path, shared_data: Path
) -> None:
    spool = Spool(tmp_path / "spool", fsync=False)
    job = _store(spool, shared_data / "dicom" / CHESTS[0])
    worker = worker_factory(spool, batch_size=1, overlap_reports=True)

    def failing_report(*_args, **_kwargs) -> None:
        raise OSError("disk gone")

    worker._report = failing_report
    try:
        assert worker.run_once() == 1
        worker.finish_reports()  # the error stays with the job: nothing raised here
    finally:
        del worker._report
    again = spool.find_job(job.job_id)
    assert again is not None and again.state is JobState.RECEIVED
    assert again.detail.startswith("attempt 1 failed: OSError")

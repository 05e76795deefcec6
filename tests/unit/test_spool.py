"""The spool as a durable state machine: atomic writes, idempotence, recovery after a crash."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import UID, ExplicitVRLittleEndian

from dicom_node.spool import Job, JobState, Spool, is_valid_uid
from dicom_node.spool.durable import TEMP_PREFIX, write_atomically

CR = UID("1.2.840.10008.5.1.4.1.1.1")


def _store(spool: Spool, uid: str, payload: bytes = b"data") -> tuple[Job, bool]:
    return spool.store_instance(
        [payload], sop_instance_uid=uid, sop_class_uid=CR,
        transfer_syntax_uid=ExplicitVRLittleEndian, calling_ae_title="DX1",
    )


def test_write_atomically_leaves_no_temp_file_and_replaces_whole(tmp_path: Path) -> None:
    target = tmp_path / "f.bin"
    write_atomically(target, [b"old"])
    write_atomically(target, [b"new", b"er"])
    assert target.read_bytes() == b"newer"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_write_atomically_removes_its_temp_file_when_writing_fails(tmp_path: Path) -> None:
    def failing_chunks():
        yield b"partial"
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        write_atomically(tmp_path / "f.bin", failing_chunks())
    assert list(tmp_path.iterdir()) == []


def test_store_instance_writes_file_and_received_job(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    job, created = _store(spool, "1.2.3", b"abc")
    assert created and job.state is JobState.RECEIVED and job.size_bytes == 3
    assert spool.instance_path("1.2.3").read_bytes() == b"abc"
    assert spool.find_job("1.2.3") == job
    assert spool.counts() == {"received": 1, "processing": 0, "outbox": 0, "sent": 0, "failed": 0, "not_analysed": 0, "instances": 1}


def test_resending_the_same_instance_keeps_one_job(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    first, _ = _store(spool, "1.2.3")
    spool.transition(first, JobState.SENT)
    again, created = _store(spool, "1.2.3")
    assert not created and again.state is JobState.SENT
    assert spool.counts()["received"] == 0 and spool.counts()["sent"] == 1


def test_transition_moves_the_record_and_keeps_history(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    job, _ = _store(spool, "1.2.3")
    moved = spool.transition(job, JobState.PROCESSING)
    assert not (spool.state_dir(JobState.RECEIVED) / "1.2.3.json").exists()
    found = spool.find_job("1.2.3")
    assert found is not None
    assert [h[0] for h in found.history] == ["received", "processing"]
    assert list(spool.jobs(JobState.PROCESSING)) == [moved]


def test_recover_requeues_interrupted_jobs_and_clears_temp_files(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    job, _ = _store(spool, "1.2.3")
    spool.transition(job, JobState.PROCESSING)
    (spool.instances_dir / f"{TEMP_PREFIX}abc-1.2.4.dcm").write_bytes(b"half")
    report = Spool(tmp_path).recover()
    assert report["requeued"] == 1 and report["temp_files_removed"] == 1
    found = spool.find_job("1.2.3")
    assert found is not None and found.state is JobState.RECEIVED
    assert spool.counts()["instances"] == 1


def test_recover_keeps_the_later_state_of_a_job_caught_mid_transition(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    job, _ = _store(spool, "1.2.3")
    # A crash after writing the new state's record but before unlinking the old one.
    (spool.state_dir(JobState.OUTBOX) / "1.2.3.json").write_bytes(replace(job, state=JobState.OUTBOX).to_json())
    assert Spool(tmp_path).recover()["duplicates_removed"] == 1
    found = spool.find_job("1.2.3")
    assert spool.counts()["received"] == 0 and found is not None and found.state is JobState.OUTBOX


def test_recover_gives_an_orphan_instance_a_job(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    ds = pydicom.Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = CR, "1.2.9"
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = CR, UID("1.2.9")
    ds.save_as(spool.instance_path("1.2.9"), enforce_file_format=True)
    assert spool.recover()["orphans_enqueued"] == 1
    job = spool.find_job("1.2.9")
    assert job is not None
    assert job.state is JobState.RECEIVED and job.sop_class_uid == CR


@pytest.mark.parametrize("uid", ["", ".", "..", "1..2", "1.2.", "../etc/passwd", "1.2.3a", "1" * 65])
def test_unsafe_or_invalid_uids_are_rejected(uid: str, tmp_path: Path) -> None:
    assert not is_valid_uid(uid)
    with pytest.raises(ValueError, match='"sop_instance_uid"'):
        Spool(tmp_path).instance_path(uid)


def test_real_world_uid_with_leading_zero_component_is_accepted() -> None:
    assert is_valid_uid("999.999.01.23.45.6789")


def test_job_records_being_written_are_not_jobs(tmp_path: Path) -> None:
    """A ``.tmp-…json`` record (a write in flight) is never listed, counted or picked up (issue 12)."""
    spool = Spool(tmp_path / "spool", fsync=False)
    in_flight = spool.state_dir(JobState.RECEIVED) / ".tmp-0123abcd-1.2.3.json"
    in_flight.write_bytes(b"{")  # half written
    assert list(spool.jobs(JobState.RECEIVED)) == []
    assert spool.counts()["received"] == 0
    assert spool.recover()["temp_files_removed"] == 1
    assert not in_flight.exists()


def test_put_result_stores_companions_before_the_report_in_sending_order(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    job, _ = _store(spool, "1.2.3")
    job = spool.transition(job, JobState.PROCESSING)

    done = spool.put_result(job, b"report", ["pacs"], companions=[("sc", b"summary"), ("seg", b"lungs")])

    assert done.state is JobState.OUTBOX
    found = Spool(tmp_path).find_job("1.2.3")  # read back from disk
    assert found is not None and found.companion_files == done.companion_files
    paths = spool.result_paths(found)
    assert [p.name for p in paths] == ["1.2.3.sc.dcm", "1.2.3.seg.dcm", "1.2.3.dcm"]
    assert [p.read_bytes() for p in paths] == [b"summary", b"lungs", b"report"]
    assert spool.result_path(found) == paths[-1]


def test_put_result_refuses_a_companion_kind_unfit_for_a_file_name(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    job, _ = _store(spool, "1.2.3")
    with pytest.raises(ValueError, match="companion kind"):
        spool.put_result(job, b"report", [], companions=[("../x", b"")])
    assert spool.find_job("1.2.3").state is JobState.RECEIVED  # type: ignore[union-attr]


def test_a_job_record_written_before_companions_existed_still_reads(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    job, _ = _store(spool, "1.2.3")
    record = job.to_json().replace(b'"companion_files": [],', b"")
    assert b"companion_files" not in record

    old = Job.from_json(record)

    assert old.companion_files == () and spool.result_paths(replace(old, result_file="results/1.2.3.dcm"))[0].name == "1.2.3.dcm"


def test_a_transition_from_a_state_the_job_has_left_writes_nothing(tmp_path: Path) -> None:
    from dicom_node.spool.store import JobMovedError

    spool = Spool(tmp_path)
    job, _ = _store(spool, "1.2.3")
    spool.transition(job, JobState.PROCESSING)
    with pytest.raises(JobMovedError, match="no longer received"):
        spool.transition(job, JobState.NOT_ANALYSED)  # the stale copy read before the move
    with pytest.raises(JobMovedError):
        spool.update(job)
    assert spool.counts()["processing"] == 1 and spool.counts()["not_analysed"] == 0


def _fail_every_job(root: str, uids: list[str]) -> None:
    spool = Spool(Path(root), fsync=True)  # the directory fsync widens the window a lock must close
    for uid in uids:
        job = spool.find_job(uid)
        assert job is not None
        spool.transition(job, JobState.FAILED, detail="gave up")


def test_resend_in_another_process_never_loses_a_job_the_owner_is_moving(tmp_path: Path) -> None:
    # The node moves jobs outbox -> failed while `cxr-node resend` moves them failed -> outbox:
    # with the spool's file lock every job ends in exactly one state.
    import multiprocessing

    from dicom_node.send.outbox import requeue_failed

    spool = Spool(tmp_path, fsync=False)
    uids = [f"1.2.{i}" for i in range(300)]
    for uid in uids:
        job, _ = _store(spool, uid)
        spool.put_result(job, b"report", ["pacs"])
    owner = multiprocessing.get_context("fork").Process(target=_fail_every_job, args=(str(tmp_path), uids))
    owner.start()
    requeued = 0
    while owner.is_alive():
        requeued += len(requeue_failed(spool))
    owner.join()
    requeued += len(requeue_failed(spool))
    assert owner.exitcode == 0
    placed = [state.value for uid in uids for state in JobState if spool.record_path_of(uid, state).exists()]
    assert len(placed) == len(uids) and set(placed) == {"outbox"}, "each job in exactly one state"
    assert requeued > 0

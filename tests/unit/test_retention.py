"""Retention: what a purge deletes, by age and by disk, on a real spool with a clock we set."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pydicom.uid import UID, ExplicitVRLittleEndian

from dicom_node.config import NodeConfig
from dicom_node.errors import ConfigError
from dicom_node.spool import Job, JobState, Spool
from dicom_node.spool.retention import (
    DAY_SECONDS,
    DiskUsage,
    FinishedJob,
    RetentionPolicy,
    SpoolFile,
    finished_jobs,
    plan_purge,
    policy_from_config,
    purge,
)

CR = UID("1.2.840.10008.5.1.4.1.1.1")
ROOMY = DiskUsage(used=10, free=10**12)
NO_DISK_RULE = RetentionPolicy(instances_days=30, results_days=60, records_days=365, high_water_percent=0)


def _received(spool: Spool, uid: str, size: int = 100) -> Job:
    job, _ = spool.store_instance(
        [b"x" * size], sop_instance_uid=uid, sop_class_uid=CR,
        transfer_syntax_uid=ExplicitVRLittleEndian, calling_ae_title="DX1",
    )
    return job


def _sent(spool: Spool, uid: str, size: int = 100) -> Job:
    job = spool.transition(_received(spool, uid, size), JobState.PROCESSING)
    job = spool.put_result(job, b"r" * 10, ["pacs"], companions=[("sc", b"s" * 20)])
    return spool.transition(job, JobState.SENT, detail="delivered to pacs")


def _files(spool: Spool) -> set[str]:
    return {
        str(p.relative_to(spool.root)) for p in spool.root.rglob("*")
        if p.is_file() and not p.name.endswith(".lock")
    }


def test_nothing_goes_before_its_period(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    _sent(spool, "1.1")
    before = _files(spool)
    outcome = purge(spool, NO_DISK_RULE, now=time.time() + 29 * DAY_SECONDS, disk=lambda _: ROOMY)
    assert outcome.plan.counts()["bytes"] == 0 and _files(spool) == before


def test_each_kind_of_file_goes_after_its_own_period(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    _sent(spool, "1.1")
    now = time.time()
    purge(spool, NO_DISK_RULE, now=now + 31 * DAY_SECONDS, disk=lambda _: ROOMY)
    assert _files(spool) == {"results/1.1.dcm", "results/1.1.sc.dcm", "jobs/sent/1.1.json"}
    purge(spool, NO_DISK_RULE, now=now + 61 * DAY_SECONDS, disk=lambda _: ROOMY)
    assert _files(spool) == {"jobs/sent/1.1.json"}
    outcome = purge(spool, NO_DISK_RULE, now=now + 366 * DAY_SECONDS, disk=lambda _: ROOMY)
    assert _files(spool) == set() and outcome.plan.counts()["records"] == 1


def test_undelivered_and_unfinished_jobs_are_never_deleted(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    _received(spool, "1.1")
    spool.put_result(spool.transition(_received(spool, "1.2"), JobState.PROCESSING), b"r", ["pacs"])  # outbox
    failed = spool.put_result(spool.transition(_received(spool, "1.3"), JobState.PROCESSING), b"r", ["pacs"])
    spool.transition(failed, JobState.FAILED, detail="pacs: gave up")
    before = _files(spool)
    full = DiskUsage(used=99, free=1)
    outcome = purge(spool, NO_DISK_RULE, now=time.time() + 10_000 * DAY_SECONDS, disk=lambda _: full)
    assert outcome.plan.counts()["bytes"] == 0 and _files(spool) == before


def test_not_analysed_jobs_lose_their_instance_like_delivered_ones(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.transition(_received(spool, "1.1"), JobState.NOT_ANALYSED, detail="not a chest radiograph: CT")
    purge(spool, NO_DISK_RULE, now=time.time() + 31 * DAY_SECONDS, disk=lambda _: ROOMY)
    assert _files(spool) == {"jobs/not_analysed/1.1.json"}


def test_an_instance_sent_again_after_its_job_ended_is_kept_from_its_new_arrival(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    instance = SpoolFile(spool.root / "instances/1.1.dcm", 100, modified_at=40 * DAY_SECONDS)
    job = FinishedJob("1.1", finished_at=0.0, record=SpoolFile(spool.root / "r.json", 5, 0.0), instance=instance)
    plan = plan_purge([job], NO_DISK_RULE, now=50 * DAY_SECONDS, disk=ROOMY)
    assert plan.instances == ()
    plan = plan_purge([job], NO_DISK_RULE, now=71 * DAY_SECONDS, disk=ROOMY)
    assert plan.instances == (instance,)


def test_a_record_outlives_its_files(tmp_path: Path) -> None:
    instance = SpoolFile(tmp_path / "i.dcm", 100, modified_at=400 * DAY_SECONDS)  # sent again late
    job = FinishedJob("1.1", finished_at=0.0, record=SpoolFile(tmp_path / "r.json", 5, 0.0), instance=instance)
    plan = plan_purge([job], NO_DISK_RULE, now=400 * DAY_SECONDS, disk=ROOMY)
    assert plan.records == () and plan.instances == ()


def test_above_the_high_water_mark_the_oldest_finished_jobs_go_first(tmp_path: Path) -> None:
    def finished(uid: str, at: float) -> FinishedJob:
        return FinishedJob(
            uid, finished_at=at, record=SpoolFile(tmp_path / f"{uid}.json", 1, at),
            instance=SpoolFile(tmp_path / f"{uid}.dcm", 100, at), results=(SpoolFile(tmp_path / f"{uid}.sr", 10, at),),
        )

    jobs = [finished("new", 3.0), finished("oldest", 1.0), finished("old", 2.0)]
    policy = RetentionPolicy(instances_days=30, results_days=30, records_days=365, high_water_percent=90)
    disk = DiskUsage(used=1000, free=0)  # 100 % used, the mark at 900 bytes; each job frees 110
    plan = plan_purge(jobs, policy, now=4.0, disk=disk)
    assert {f.path.stem for f in plan.instances} == {"oldest"} and plan.by_disk == 1
    assert plan.records == ()  # the disk rule frees files; records stay for their own period
    plan = plan_purge(jobs, policy, now=4.0, disk=DiskUsage(used=1150, free=0))
    assert {f.path.stem for f in plan.instances} == {"oldest", "old"} and plan.by_age == 0
    assert plan_purge(jobs, policy, now=4.0, disk=DiskUsage(used=800, free=200)).bytes == 0


def test_the_disk_rule_counts_what_the_age_rule_frees_already() -> None:
    root = Path("/spool")
    aged = FinishedJob("aged", 0.0, SpoolFile(root / "a.json", 1, 0.0), SpoolFile(root / "a.dcm", 500, 0.0))
    young = FinishedJob(
        "young", 30 * DAY_SECONDS, SpoolFile(root / "y.json", 1, 0.0), SpoolFile(root / "y.dcm", 500, 30 * DAY_SECONDS)
    )
    policy = RetentionPolicy(instances_days=30, results_days=30, records_days=365, high_water_percent=90)
    plan = plan_purge([aged, young], policy, now=31 * DAY_SECONDS, disk=DiskUsage(used=1000, free=0))
    assert [f.path.name for f in plan.instances] == ["a.dcm"] and plan.by_disk == 0


def test_a_purge_cut_before_the_records_leaves_nothing_recovery_would_analyse_again(tmp_path: Path) -> None:
    # The purge deletes every file before any record: a crash between leaves records whose
    # files are gone. Recovery must then see no orphan instance, and the next purge finishes.
    spool = Spool(tmp_path)
    for uid in ("1.1", "1.2"):
        _sent(spool, uid)
    for job in finished_jobs(spool):
        for f in (job.instance, *job.results):
            assert f is not None
            f.path.unlink()  # what the purge had done when it was killed
    report = Spool(tmp_path).recover()
    assert report["orphans_enqueued"] == 0 and spool.counts()["received"] == 0
    outcome = purge(spool, NO_DISK_RULE, now=time.time() + 366 * DAY_SECONDS, disk=lambda _: ROOMY)
    assert outcome.plan.counts()["records"] == 2 and _files(spool) == set()


def test_a_dry_run_deletes_nothing_and_says_what_would_go(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    _sent(spool, "1.1", size=1000)
    before = _files(spool)
    outcome = purge(spool, NO_DISK_RULE, now=time.time() + 31 * DAY_SECONDS, dry_run=True, disk=lambda _: ROOMY)
    assert _files(spool) == before
    assert outcome.plan.counts() == {
        "instances": 1, "results": 0, "records": 0, "bytes": 1000, "jobs_by_age": 1, "jobs_by_disk": 0,
    }


def test_policy_from_the_config_and_its_checks() -> None:
    policy = policy_from_config(NodeConfig(retention_instances_days=7, retention_high_water_percent=80))
    assert policy == RetentionPolicy(instances_days=7, results_days=30, records_days=365, high_water_percent=80)
    with pytest.raises(ConfigError, match="records_days"):
        NodeConfig(retention_records_days=10)
    with pytest.raises(ConfigError, match="high_water_percent"):
        NodeConfig(retention_high_water_percent=100)
    with pytest.raises(ConfigError, match="instances_days"):
        NodeConfig(retention_instances_days=-1)

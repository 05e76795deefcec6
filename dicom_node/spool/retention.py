"""Retention: what the spool may delete once a job is finished, and the crash-safe purge.

A job is *finished* when its result was delivered to every destination (``sent``) or it
ended ``not_analysed``. Only finished jobs lose anything: a job whose report is waiting,
failed or not yet made keeps its instance and its report, whatever the disk. Each kind of
file has its own period after the job finished (``instances_days``, ``results_days``,
``records_days``). Above the disk's high-water mark, the oldest finished jobs' instances and
results go first (their records stay, a few hundred bytes each) until the spool's file
system is back under the mark.

:func:`plan_purge` decides, a pure function of the jobs, the policy, the time and the disk.
:func:`purge` carries a plan out: every instance and result file first, their directories
flushed, and only then the job records. A crash part-way leaves a record whose files are
gone (the state of a job purged by age of its files only), never an instance without its
record, which :meth:`~dicom_node.spool.Spool.recover` would take for a new arrival and
analyse again. Log lines and audit records carry counts, never identifiers.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from dicom_node.config import NodeConfig
from dicom_node.spool.durable import fsync_directory
from dicom_node.spool.store import JobState, Spool

logger = logging.getLogger(__name__)

DAY_SECONDS = 86400.0
FINISHED_STATES = (JobState.SENT, JobState.NOT_ANALYSED)
PURGE_LOCK_FILE = "purge.lock"


@dataclass(frozen=True)
class RetentionPolicy:
    """How long a finished job's files are kept, and the disk's high-water mark.

    ``high_water_percent`` 0 switches the disk rule off.
    """

    instances_days: float = 30.0
    results_days: float = 30.0
    records_days: float = 365.0
    high_water_percent: float = 90.0


@dataclass(frozen=True)
class SpoolFile:
    """One file a finished job still has on disk."""

    path: Path
    size: int
    modified_at: float  # Unix time


@dataclass(frozen=True)
class FinishedJob:
    """A finished job as the policy sees it: when it finished, and the files it still has."""

    job_id: str
    finished_at: float  # Unix time
    record: SpoolFile
    instance: SpoolFile | None
    results: tuple[SpoolFile, ...] = ()


@dataclass(frozen=True)
class DiskUsage:
    """The spool's file system: bytes used, and free for the node (without the blocks
    reserved for root), as ``df`` counts them."""

    used: int
    free: int

    @property
    def usable(self) -> int:
        return self.used + self.free

    @property
    def used_percent(self) -> float:
        """``df``'s Use%."""
        return 100.0 * self.used / self.usable if self.usable else 0.0


@dataclass(frozen=True)
class PurgePlan:
    """The files one purge deletes, by kind, and why."""

    instances: tuple[SpoolFile, ...] = ()
    results: tuple[SpoolFile, ...] = ()
    records: tuple[SpoolFile, ...] = ()
    by_age: int = 0  # jobs losing files because of their age
    by_disk: int = 0  # jobs losing files because the disk is above the high-water mark

    @property
    def bytes(self) -> int:
        return sum(f.size for f in (*self.instances, *self.results, *self.records))

    def counts(self) -> dict[str, int]:
        """Numbers only (for logs, audit records and ``status``)."""
        return {
            "instances": len(self.instances), "results": len(self.results), "records": len(self.records),
            "bytes": self.bytes, "jobs_by_age": self.by_age, "jobs_by_disk": self.by_disk,
        }


def plan_purge(jobs: Iterable[FinishedJob], policy: RetentionPolicy, now: float, disk: DiskUsage) -> PurgePlan:
    """Decide what to delete at ``now``.

    By age: an instance goes ``instances_days`` after its job finished (or after it was last
    received, for a copy a modality sent again later), results ``results_days`` after, and
    the record ``records_days`` after, once none of its files is left. By disk: while the
    file system would still be above ``high_water_percent`` after that, the oldest finished
    jobs lose their instance and results too.
    """
    instances: list[SpoolFile] = []
    results: list[SpoolFile] = []
    records: list[SpoolFile] = []
    kept: list[FinishedJob] = []  # jobs that keep an instance or a result, for the disk rule
    by_age = 0
    for job in jobs:
        age = now - job.finished_at
        instance = job.instance
        instance_goes = instance is not None and (
            now - max(job.finished_at, instance.modified_at) >= policy.instances_days * DAY_SECONDS
        )
        results_go = bool(job.results) and age >= policy.results_days * DAY_SECONDS
        record_goes = (
            (instance is None or instance_goes) and (not job.results or results_go)
            and age >= policy.records_days * DAY_SECONDS
        )
        if instance is not None and instance_goes:
            instances.append(instance)
        if results_go:
            results.extend(job.results)
        if record_goes:
            records.append(job.record)
        by_age += instance_goes or results_go or record_goes
        if (instance is not None and not instance_goes) or (job.results and not results_go):
            kept.append(job)
    by_disk = 0
    if policy.high_water_percent > 0 and disk.usable:
        limit = disk.usable * policy.high_water_percent / 100.0
        used = disk.used - sum(f.size for f in (*instances, *results, *records))
        for job in sorted(kept, key=lambda j: j.finished_at):
            if used <= limit:
                break
            freed = 0
            if job.instance is not None and job.instance not in instances:
                instances.append(job.instance)
                freed += job.instance.size
            for result in job.results:
                if result not in results:
                    results.append(result)
                    freed += result.size
            used -= freed
            by_disk += 1
    return PurgePlan(tuple(instances), tuple(results), tuple(records), by_age, by_disk)


def finished_jobs(spool: Spool) -> Iterator[FinishedJob]:
    """The spool's finished jobs with the files they still have (read from disk)."""
    for state in FINISHED_STATES:
        for job in spool.jobs(state):
            record = _spool_file(spool.record_path(job))
            if record is None:
                continue  # purged or moved meanwhile
            results = tuple(f for f in (_spool_file(p) for p in spool.result_paths(job) if job.result_file) if f)
            yield FinishedJob(
                job_id=job.job_id,
                finished_at=job.entered_state_at().timestamp(),
                record=record,
                instance=_spool_file(spool.instance_path(job.job_id)),
                results=results,
            )


def _spool_file(path: Path) -> SpoolFile | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return SpoolFile(path, stat.st_size, stat.st_mtime)


def disk_usage(path: Path) -> DiskUsage:
    """Used and free bytes of the file system holding ``path``."""
    usage = shutil.disk_usage(path)
    return DiskUsage(used=usage.used, free=usage.free)


@dataclass
class PurgeOutcome:
    """What one purge did (or, dry, would do)."""

    plan: PurgePlan
    dry_run: bool
    missing: int = 0  # files already gone (another purge, or a crash's left-overs)


def purge(
    spool: Spool,
    policy: RetentionPolicy,
    *,
    now: float,
    dry_run: bool = False,
    disk: Callable[[Path], DiskUsage] = disk_usage,
) -> PurgeOutcome:
    """Apply ``policy`` to ``spool`` at ``now``; with ``dry_run``, only say what would go.

    Purges of one spool run one at a time (``purge.lock``), in the node or beside it: a
    ``cxr-node purge`` waits for the node's own and finds its work done.
    """
    with _purge_lock(spool.root):
        plan = plan_purge(finished_jobs(spool), policy, now, disk(spool.root))
        outcome = PurgeOutcome(plan, dry_run)
        if dry_run or not (plan.instances or plan.results or plan.records):
            return outcome
        # Files first, made durable, then the records: never an instance without its record.
        outcome.missing += _unlink_all(f.path for f in (*plan.instances, *plan.results))
        _fsync_parents([*plan.instances, *plan.results], spool.fsync)
        outcome.missing += _unlink_all(f.path for f in plan.records)
        _fsync_parents(plan.records, spool.fsync)
    counts = plan.counts()
    logger.info(
        "purge: deleted instances=%d results=%d records=%d bytes=%d (jobs by age %d, by disk %d)",
        counts["instances"], counts["results"], counts["records"], counts["bytes"],
        counts["jobs_by_age"], counts["jobs_by_disk"],
    )
    return outcome


def _unlink_all(paths: Iterable[Path]) -> int:
    missing = 0
    for path in paths:
        try:
            path.unlink()
        except FileNotFoundError:
            missing += 1
    return missing


def _fsync_parents(files: Sequence[SpoolFile], fsync: bool) -> None:
    if fsync:
        for directory in {f.path.parent for f in files}:
            fsync_directory(directory)


@contextlib.contextmanager
def _purge_lock(root: Path) -> Iterator[None]:
    fd = os.open(Path(root) / PURGE_LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def policy_from_config(config: NodeConfig) -> RetentionPolicy:
    """The ``[retention]`` table's periods and mark."""
    return RetentionPolicy(
        instances_days=config.retention_instances_days,
        results_days=config.retention_results_days,
        records_days=config.retention_records_days,
        high_water_percent=config.retention_high_water_percent,
    )

"""The spool: received instances and their jobs, as a state machine on disk.

Layout under the spool root::

    instances/<SOPInstanceUID>.dcm     each instance exactly as received (preamble + meta + data set)
    jobs/<state>/<SOPInstanceUID>.json one job record per instance, in the directory of its state

A state is a directory and a transition writes the record into the new state's directory
(temp file, fsync, rename) before removing it from the old one, so a crash leaves the job
in one state or, briefly, in two; :meth:`Spool.recover` keeps the later one. Jobs found in
``processing`` at start-up go back to ``received``: their work was interrupted.
``not_analysed`` is final: the image got no finding, and its record says why.

Every change of a job record holds ``jobs.lock`` (``fcntl.flock``) as well as a thread lock,
so ``cxr-node resend`` beside a running ``serve`` cannot interleave with it: a transition
finds its job where it expects it, or fails with :class:`JobMovedError` and writes nothing.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import json
import logging
import os
import re
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pydicom

from dicom_node.errors import SpoolError
from dicom_node.spool.durable import fsync_directory, is_temp_file, move_into_place, remove_temp_files, write_atomically

logger = logging.getLogger(__name__)

JOBS_LOCK_FILE = "jobs.lock"


class JobMovedError(SpoolError):
    """A job was not in the state its caller read it in: another process moved it meanwhile."""

# Tolerant on purpose: digits and dots only (safe as a file name), leading zeros allowed
# because real modalities emit them.
_UID_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class JobState(str, enum.Enum):
    """Where a job stands; the order of members is the order of the pipeline."""

    RECEIVED = "received"
    PROCESSING = "processing"
    OUTBOX = "outbox"
    SENT = "sent"
    FAILED = "failed"
    NOT_ANALYSED = "not_analysed"  # no finding by design: not a frontal chest image, or undecodable

    @property
    def rank(self) -> int:
        return list(JobState).index(self)


def utc_now() -> str:
    """ISO 8601 UTC timestamp used in job records."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def is_valid_uid(uid: str) -> bool:
    """Return whether ``uid`` is usable as a DICOM UID: 1-64 characters, digits and dots."""
    return 0 < len(uid) <= 64 and bool(_UID_PATTERN.match(uid))


@dataclass(frozen=True)
class DeliveryState:
    """Where a job's report stands with one PACS destination."""

    destination: str
    delivered: bool = False
    attempts: int = 0
    next_attempt_at: float = 0.0  # Unix time; 0 = now
    last_status: int | None = None
    last_error: str = ""


@dataclass(frozen=True)
class Job:
    """The record of one received instance and what has happened to it."""

    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    calling_ae_title: str
    received_at: str
    size_bytes: int
    state: JobState = JobState.RECEIVED
    attempts: int = 0
    detail: str = ""
    backend_attempts: int = 0  # tries a remote analysis backend could not answer (not counted in attempts)
    history: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    result_file: str = ""  # the report, relative to the spool root, once there is one
    # Objects the report references (summary image, segmentation), sent before it so the
    # PACS holds them when the report arrives; relative to the spool root.
    companion_files: tuple[str, ...] = ()
    deliveries: tuple[DeliveryState, ...] = field(default_factory=tuple)

    @property
    def job_id(self) -> str:
        return self.sop_instance_uid

    def to_json(self) -> bytes:
        record = asdict(self)
        record["state"] = self.state.value
        record["history"] = [list(h) for h in self.history]
        return json.dumps(record, indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Job:
        record = json.loads(data)
        record["state"] = JobState(record["state"])
        record["history"] = tuple(tuple(h) for h in record.get("history", ()))
        record["deliveries"] = tuple(DeliveryState(**d) for d in record.get("deliveries", ()))
        record["companion_files"] = tuple(record.get("companion_files", ()))  # absent in older records
        return cls(**record)

    def entered_state_at(self) -> datetime:
        """When the job entered its current state (from its history)."""
        for state, at in reversed(self.history):
            if state == self.state.value:
                return datetime.fromisoformat(at)
        return datetime.fromisoformat(self.received_at)


class Spool:
    """Durable storage of received instances and their jobs.

    Parameters
    ----------
    root : pathlib.Path
        Spool directory; created if missing.
    fsync : bool
        Flush every write to stable storage (the "nothing is lost" guarantee).
    """

    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self.root = Path(root)
        self.fsync = fsync
        self.instances_dir = self.root / "instances"
        self.results_dir = self.root / "results"
        self.jobs_dir = self.root / "jobs"
        self._lock = threading.Lock()
        self._lock_fd: int | None = None  # opened on first write: `status` may run read-only
        try:
            for directory in (self.instances_dir, self.results_dir, *(self.state_dir(s) for s in JobState)):
                directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SpoolError(f"cannot create spool directories under {self.root}: {exc}") from exc

    def state_dir(self, state: JobState) -> Path:
        return self.jobs_dir / state.value

    def instance_path(self, sop_instance_uid: str) -> Path:
        if not is_valid_uid(sop_instance_uid):
            raise ValueError(f'Argument "sop_instance_uid" is not a valid UID: {sop_instance_uid!r}')
        return self.instances_dir / f"{sop_instance_uid}.dcm"

    def _job_path(self, state: JobState, job_id: str) -> Path:
        return self.state_dir(state) / f"{job_id}.json"

    def record_path(self, job: Job) -> Path:
        """The file of ``job``'s record in its state's directory."""
        return self._job_path(job.state, job.job_id)

    def record_path_of(self, job_id: str, state: JobState) -> Path:
        """Where the record of job ``job_id`` is while it is in ``state``."""
        return self._job_path(state, job_id)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the spool's job lock: other threads and other processes on this spool wait."""
        with self._lock:
            if self._lock_fd is None:
                self._lock_fd = os.open(self.root / JOBS_LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def close(self) -> None:
        """Close the lock file (the spool's files stay as they are)."""
        with self._lock:
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

    # -- receiving -------------------------------------------------------------------------

    def store_instance(
        self,
        chunks: Iterable[bytes | memoryview],
        *,
        sop_instance_uid: str,
        sop_class_uid: str,
        transfer_syntax_uid: str,
        calling_ae_title: str,
    ) -> tuple[Job, bool]:
        """Persist a received instance from its bytes and its job; return ``(job, created)``.

        The instance file is written first, then the job record, each durably. A re-sent
        instance (same SOP Instance UID) replaces the file atomically and keeps the
        existing job, so sending twice is the same as sending once (``created`` is False).

        Raises
        ------
        OSError
            The instance or its job could not be written (``ENOSPC`` when the disk is full).
        """
        size = write_atomically(self.instance_path(sop_instance_uid), chunks, fsync=self.fsync)
        return self._add_job(sop_instance_uid, sop_class_uid, transfer_syntax_uid, calling_ae_title, size)

    def store_received_file(
        self,
        received: Path,
        *,
        sop_instance_uid: str,
        sop_class_uid: str,
        transfer_syntax_uid: str,
        calling_ae_title: str,
    ) -> tuple[Job, bool]:
        """Persist a received instance already streamed to a temp file in ``instances/``.

        Same contract as :meth:`store_instance`, but the file is flushed and renamed into
        place rather than copied. ``received`` must be a complete Part 10 file on the spool's
        file system.
        """
        size = move_into_place(received, self.instance_path(sop_instance_uid), fsync=self.fsync)
        return self._add_job(sop_instance_uid, sop_class_uid, transfer_syntax_uid, calling_ae_title, size)

    def _add_job(
        self, sop_instance_uid: str, sop_class_uid: str, transfer_syntax_uid: str, calling_ae_title: str, size: int
    ) -> tuple[Job, bool]:
        with self.locked():
            existing = self.find_job(sop_instance_uid)
            if existing is not None:
                return existing, False
            now = utc_now()
            job = Job(
                sop_instance_uid=sop_instance_uid,
                sop_class_uid=sop_class_uid,
                transfer_syntax_uid=transfer_syntax_uid,
                calling_ae_title=calling_ae_title,
                received_at=now,
                size_bytes=size,
                history=((JobState.RECEIVED.value, now),),
            )
            self._write_job(job)
            return job, True

    # -- job records -----------------------------------------------------------------------

    def _write_job(self, job: Job) -> None:
        write_atomically(self._job_path(job.state, job.job_id), [job.to_json()], fsync=self.fsync)

    def find_job(self, job_id: str) -> Job | None:
        """Return the job in its most advanced state, or ``None``."""
        for state in reversed(JobState):
            path = self._job_path(state, job_id)
            try:
                return Job.from_json(path.read_bytes())
            except FileNotFoundError:
                continue
        return None

    def transition(self, job: Job, to_state: JobState, *, detail: str = "", **changes: Any) -> Job:
        """Move ``job`` to ``to_state`` durably, with other fields ``changes``d; return the new record.

        Raises
        ------
        JobMovedError
            ``job``'s record is no longer in ``job.state`` (another process moved it); nothing
            is written.
        """
        with self.locked():
            self._check_in_place(job)
            moved = replace(
                job,
                state=to_state,
                detail=detail,
                history=(*job.history, (to_state.value, utc_now())),
                **changes,
            )
            self._write_job(moved)
            if to_state is not job.state:
                self._job_path(job.state, job.job_id).unlink(missing_ok=True)
                if self.fsync:
                    fsync_directory(self.state_dir(job.state))
            return moved

    def update(self, job: Job) -> Job:
        """Rewrite ``job``'s record in place (same state), durably.

        Raises
        ------
        JobMovedError
            ``job``'s record is no longer in ``job.state``; nothing is written.
        """
        with self.locked():
            self._check_in_place(job)
            self._write_job(job)
        return job

    def _check_in_place(self, job: Job) -> None:
        if not self._job_path(job.state, job.job_id).exists():
            raise JobMovedError(f"job {job.job_id} is no longer {job.state.value}")

    def result_path(self, job: Job) -> Path:
        """The job's report."""
        return self.root / job.result_file

    def result_paths(self, job: Job) -> list[Path]:
        """Every object of the job's result in sending order: the companions, then the report."""
        return [*(self.root / name for name in job.companion_files), self.result_path(job)]

    def put_result(
        self,
        job: Job,
        report: bytes,
        destinations: Iterable[str],
        companions: Sequence[tuple[str, bytes]] = (),
    ) -> Job:
        """Store ``job``'s result durably and move the job to the outbox, one delivery per destination.

        ``companions`` are ``(kind, encoded object)`` pairs (kind: a short lower-case word such
        as ``"sc"``, part of the file name). Every file is on disk before the job enters the
        outbox; a crash before that leaves the job in ``processing``, and its re-analysis
        rewrites the same files (the objects' UIDs are deterministic).
        """
        companion_files = []
        for kind, data in companions:
            if not re.fullmatch(r"[a-z]{1,16}", kind):
                raise ValueError(f"companion kind must be 1-16 lower-case letters, got {kind!r}")
            path = self.results_dir / f"{job.job_id}.{kind}.dcm"
            write_atomically(path, [data], fsync=self.fsync)
            companion_files.append(str(path.relative_to(self.root)))
        path = self.results_dir / f"{job.job_id}.dcm"
        write_atomically(path, [report], fsync=self.fsync)
        return self.transition(
            job, JobState.OUTBOX,
            result_file=str(path.relative_to(self.root)),
            companion_files=tuple(companion_files),
            deliveries=tuple(DeliveryState(name) for name in destinations),
        )

    def jobs(self, state: JobState) -> Iterator[Job]:
        """Iterate the jobs in ``state``, oldest file first."""
        for path in self._job_files(state):
            try:
                yield Job.from_json(path.read_bytes())
            except FileNotFoundError:
                continue  # moved on by another thread meanwhile

    def _job_files(self, state: JobState) -> list[Path]:
        """The job records in ``state``, oldest first; records being written (``.tmp-``) are not jobs."""
        paths = []
        for path in self.state_dir(state).glob("*.json"):  # pathlib's "*" matches dot files too
            if is_temp_file(path):
                continue
            try:
                paths.append((path.stat().st_mtime_ns, path))
            except FileNotFoundError:
                continue  # moved on by another thread meanwhile
        return [path for _, path in sorted(paths)]

    def counts(self) -> dict[str, int]:
        """Number of jobs per state, and of stored instances."""
        counts = {s.value: len(self._job_files(s)) for s in JobState}
        counts["instances"] = sum(1 for p in self.instances_dir.glob("*.dcm") if not is_temp_file(p))
        return counts

    def size_bytes(self) -> int:
        """Bytes of every file in the spool."""
        total = 0
        for folder, _, files in os.walk(self.root):
            for name in files:
                try:
                    total += os.stat(os.path.join(folder, name)).st_size
                except FileNotFoundError:
                    continue  # moved meanwhile
        return total

    # -- start-up --------------------------------------------------------------------------

    def recover(self) -> dict[str, int]:
        """Bring the spool back to a consistent state after a crash or restart.

        Removes temp files, keeps only the most advanced copy of a job found in two
        states, returns interrupted ``processing`` jobs to ``received`` and gives every
        orphan instance (file renamed in place, crash before its job was written) a job.
        """
        report = {"temp_files_removed": 0, "duplicates_removed": 0, "requeued": 0, "orphans_enqueued": 0}
        with self.locked():
            for directory in (self.instances_dir, self.results_dir, *(self.state_dir(s) for s in JobState)):
                report["temp_files_removed"] += remove_temp_files(directory)
            seen: dict[str, JobState] = {}
            for state in reversed(JobState):
                for path in self._job_files(state):
                    if path.stem in seen:
                        path.unlink()
                        report["duplicates_removed"] += 1
                    else:
                        seen[path.stem] = state
        report["requeued"] = self.requeue_processing("requeued after restart")
        for instance in self.instances_dir.glob("*.dcm"):
            if instance.stem not in seen and not is_temp_file(instance):
                self._enqueue_orphan(instance)
                report["orphans_enqueued"] += 1
        if any(report.values()):
            logger.info("spool recovered: %s", ", ".join(f"{k}={v}" for k, v in report.items()))
        return report

    def requeue_processing(self, detail: str) -> int:
        """Return every ``processing`` job to ``received`` (its analysis was cut off); how many.

        Only the one analysis process moves jobs into ``processing``, so when a new one starts
        (with the node, or after the last one died) every such job is one nobody is finishing.
        """
        jobs = list(self.jobs(JobState.PROCESSING))
        for job in jobs:
            self.transition(job, JobState.RECEIVED, detail=detail)
        return len(jobs)

    def _enqueue_orphan(self, instance: Path) -> None:
        meta = pydicom.filereader.read_file_meta_info(instance)
        now = utc_now()
        job = Job(
            sop_instance_uid=instance.stem,
            sop_class_uid=str(meta.get("MediaStorageSOPClassUID", "")),
            transfer_syntax_uid=str(meta.get("TransferSyntaxUID", "")),
            calling_ae_title="",
            received_at=now,
            size_bytes=instance.stat().st_size,
            detail="recovered: instance stored before a crash, job record written at restart",
            history=((JobState.RECEIVED.value, now),),
        )
        self._write_job(job)

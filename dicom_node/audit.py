"""The audit trail: one JSON line per hop of an instance through the node, in the spirit of IHE ATNA.

:class:`AuditLog` appends records to ``audit-YYYY-MM-DD.jsonl`` files (UTC date) in one
directory, ``<spool>/audit`` by default (``[audit]`` in the config). Each record is one JSON
object on one line, UTF-8, ending in ``\\n``, written with a single ``write`` as soon as it is
made, so a crash loses at most the line being written. A new file starts each UTC day and
whenever the next record would take the current file past ``max_bytes``
(``audit-2026-12-01.1.jsonl``, ``.2``, ...); a file is only ever appended to, never rewritten.
With ``keep_days``, whole files older than that many days are deleted when a day's first file
is opened.

A record holds only what an auditor needs to follow an instance and a peer: the time, the
event and its ATNA codes, AE titles, IP addresses and ports, UIDs, DIMSE status codes, the
node's own reasons and counts. Never a patient's name, ID or birth date, and no value of a
received data set: the keyword arguments of :meth:`AuditLog.record` are a fixed list of such
fields, strings from the network are escaped and cut like the log's
(:func:`~dicom_node.log_safety.escape_control`), and anything else must be an integer count.

The events, ``(event, result)`` -> DICOM PS3.15 A.5 audit message codes (scheme DCM):

=================  ============  ==================================  ======================  ======  =======
event              result        EventID                             EventTypeCode           action  outcome
=================  ============  ==================================  ======================  ======  =======
``application``    start, stop   110100 Application Activity         110120 / 110121         E       0
``association``    accepted      110114 User Authentication          110122 Login            E       0
``association``    released      110114 User Authentication          110123 Logout           E       0
``association``    aborted       110114 User Authentication          110123 Logout           E       4
``association``    rejected      110113 Security Alert               110126 Node Auth.       E       4
``connection``     closed        110113 Security Alert               110126 Node Auth.       E       4
``instance``       stored        110104 DICOM Instances Transferred                          C       0
``instance``       refused       110104 DICOM Instances Transferred                          C       4 or 8
``analysis``       report        110103 DICOM Instances Accessed                             C       0
``analysis``       not_analysed  110103 DICOM Instances Accessed                             R       4
``analysis``       retry         110103 DICOM Instances Accessed                             R       4
``delivery``       delivered     110104 DICOM Instances Transferred                          R       0
``delivery``       failed        110104 DICOM Instances Transferred                          R       4
``delivery``       given_up      110104 DICOM Instances Transferred                          R       8
``resend``         requeued      110103 DICOM Instances Accessed                             U       0
``purge``          deleted       110103 DICOM Instances Accessed                             D       0
=================  ============  ==================================  ======================  ======  =======

The caller may give another outcome where one result covers several (an instance refused for
lack of resources is a minor failure, 4; one that cannot be understood a serious one, 8).

Other code records through :func:`open_audit_log`, which gives ``None`` when the audit is off
(then nothing is done at all). The purge, for example::

    audit = open_audit_log(config)
    if audit is not None:
        audit.record("purge", "deleted", instances=12, results=12, records=0, bytes=48_000_000)

Several processes may append to the same directory (``serve`` and ``cxr-node resend``): each
record is one ``O_APPEND`` write, so lines never interleave.
"""

from __future__ import annotations

import enum
import json
import logging
import os
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from dicom_node.errors import ConfigError
from dicom_node.log_safety import escape_control

if TYPE_CHECKING:
    from dicom_node.config import NodeConfig

logger = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 64 * 1024**2
_FILE_NAME = re.compile(r"audit-(\d{4}-\d{2}-\d{2})(?:\.(\d+))?\.jsonl")
_COUNT_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
_SHORT = 128  # AE titles, UIDs, addresses: 16, 64 and 47 characters when well formed
_LONG = 300  # reasons, as in the log (log_safety)


class EventOutcomeIndicatorValues(enum.IntEnum):
    """ATNA EventOutcomeIndicator (RFC 3881, DICOM PS3.15 A.5.1)."""

    SUCCESS = 0
    MINOR_FAILURE = 4  # the action ended without its result, and may be retried
    SERIOUS_FAILURE = 8  # the action was ended for good
    MAJOR_FAILURE = 12  # the action made something unavailable

    @property
    def text(self) -> str:
        return self.name.lower().replace("_", " ")


class EventActionCodeValues(str, enum.Enum):
    """ATNA EventActionCode: what was done to the data."""

    CREATE = "C"
    READ = "R"
    UPDATE = "U"
    DELETE = "D"
    EXECUTE = "E"


@dataclass(frozen=True)
class AuditCode:
    """A coded concept of the DICOM audit message vocabulary (PS3.16, scheme DCM)."""

    value: str
    meaning: str
    scheme: str = "DCM"

    def as_json(self) -> dict[str, str]:
        return {"code": self.value, "scheme": self.scheme, "meaning": self.meaning}


# EventID (PS3.15 A.5.3)
APPLICATION_ACTIVITY = AuditCode("110100", "Application Activity")
INSTANCES_ACCESSED = AuditCode("110103", "DICOM Instances Accessed")
INSTANCES_TRANSFERRED = AuditCode("110104", "DICOM Instances Transferred")
SECURITY_ALERT = AuditCode("110113", "Security Alert")
USER_AUTHENTICATION = AuditCode("110114", "User Authentication")
# EventTypeCode
APPLICATION_START = AuditCode("110120", "Application Start")
APPLICATION_STOP = AuditCode("110121", "Application Stop")
LOGIN = AuditCode("110122", "Login")
LOGOUT = AuditCode("110123", "Logout")
NODE_AUTHENTICATION = AuditCode("110126", "Node Authentication")


@dataclass(frozen=True)
class AuditEvent:
    """What one ``(event, result)`` pair is in ATNA terms."""

    event_id: AuditCode
    action: EventActionCodeValues
    outcome: EventOutcomeIndicatorValues
    event_type: AuditCode | None = None


_Outcome = EventOutcomeIndicatorValues
_Action = EventActionCodeValues

EVENTS: dict[tuple[str, str], AuditEvent] = {
    ("application", "start"): AuditEvent(APPLICATION_ACTIVITY, _Action.EXECUTE, _Outcome.SUCCESS, APPLICATION_START),
    ("application", "stop"): AuditEvent(APPLICATION_ACTIVITY, _Action.EXECUTE, _Outcome.SUCCESS, APPLICATION_STOP),
    # An association is a session of a calling AE: its acceptance a login, its end a logout.
    ("association", "accepted"): AuditEvent(USER_AUTHENTICATION, _Action.EXECUTE, _Outcome.SUCCESS, LOGIN),
    ("association", "released"): AuditEvent(USER_AUTHENTICATION, _Action.EXECUTE, _Outcome.SUCCESS, LOGOUT),
    ("association", "aborted"): AuditEvent(USER_AUTHENTICATION, _Action.EXECUTE, _Outcome.MINOR_FAILURE, LOGOUT),
    # A peer refused, or cut before it made an association: what IHE ATNA reports as a node
    # authentication failure (dcm4chee-arc does the same for rejected associations).
    ("association", "rejected"): AuditEvent(SECURITY_ALERT, _Action.EXECUTE, _Outcome.MINOR_FAILURE, NODE_AUTHENTICATION),
    ("connection", "closed"): AuditEvent(SECURITY_ALERT, _Action.EXECUTE, _Outcome.MINOR_FAILURE, NODE_AUTHENTICATION),
    # Received instances are created here, results are read and sent (IHE: C for the receiver, R for the sender).
    ("instance", "stored"): AuditEvent(INSTANCES_TRANSFERRED, _Action.CREATE, _Outcome.SUCCESS),
    ("instance", "refused"): AuditEvent(INSTANCES_TRANSFERRED, _Action.CREATE, _Outcome.SERIOUS_FAILURE),
    ("analysis", "report"): AuditEvent(INSTANCES_ACCESSED, _Action.CREATE, _Outcome.SUCCESS),
    ("analysis", "not_analysed"): AuditEvent(INSTANCES_ACCESSED, _Action.READ, _Outcome.MINOR_FAILURE),
    ("analysis", "retry"): AuditEvent(INSTANCES_ACCESSED, _Action.READ, _Outcome.MINOR_FAILURE),
    ("delivery", "delivered"): AuditEvent(INSTANCES_TRANSFERRED, _Action.READ, _Outcome.SUCCESS),
    ("delivery", "failed"): AuditEvent(INSTANCES_TRANSFERRED, _Action.READ, _Outcome.MINOR_FAILURE),
    ("delivery", "given_up"): AuditEvent(INSTANCES_TRANSFERRED, _Action.READ, _Outcome.SERIOUS_FAILURE),
    ("resend", "requeued"): AuditEvent(INSTANCES_ACCESSED, _Action.UPDATE, _Outcome.SUCCESS),
    # The spool holds single instances: their deletion is not "DICOM Study Deleted" (110105).
    ("purge", "deleted"): AuditEvent(INSTANCES_ACCESSED, _Action.DELETE, _Outcome.SUCCESS),
}
"""Every record's ``(event, result)``; :meth:`AuditLog.record` refuses any other."""

# The string fields a record may carry, in the order they are written, with their length limit.
_FIELDS: dict[str, int] = {
    "calling_ae": _SHORT,
    "called_ae": _SHORT,
    "peer": _SHORT,
    "tls": _SHORT,
    "certificate_subject": _LONG,
    "destination": _SHORT,
    "sop_instance_uid": _SHORT,
    "report_uid": _SHORT,
    "status": _SHORT,
    "finding": _SHORT,
    "detail": _LONG,
}
_HEAD = ("time", "event", "result", "outcome", "outcome_text", "atna_event", "atna_event_type", "atna_action")


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _clean(value: object, limit: int) -> str:
    """A value on one line, at most ``limit`` characters (its end cut off)."""
    text = escape_control(str(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def peer_address(host: str, port: int) -> str:
    """``host:port``, an IPv6 address in brackets.

    >>> peer_address("10.1.2.3", 104), peer_address("::1", 104)
    ('10.1.2.3:104', '[::1]:104')
    """
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def audit_file_name(day: date, index: int = 0) -> str:
    """The name of a day's ``index``-th audit file.

    >>> audit_file_name(date(2026, 12, 1)), audit_file_name(date(2026, 12, 1), 2)
    ('audit-2026-12-01.jsonl', 'audit-2026-12-01.2.jsonl')
    """
    return f"audit-{day.isoformat()}.jsonl" if index == 0 else f"audit-{day.isoformat()}.{index}.jsonl"


def parse_audit_file_name(name: str) -> tuple[date, int] | None:
    """``(day, index)`` of an audit file name, ``None`` for any other name.

    >>> parse_audit_file_name("audit-2026-12-01.3.jsonl"), parse_audit_file_name("notes.txt")
    ((datetime.date(2026, 12, 1), 3), None)
    """
    match = _FILE_NAME.fullmatch(name)
    if match is None:
        return None
    try:
        return date.fromisoformat(match[1]), int(match[2] or 0)
    except ValueError:
        return None


class AuditLog:
    """The append-only audit trail in ``directory``; safe to share between threads.

    Parameters
    ----------
    directory : pathlib.Path
        Where the ``audit-*.jsonl`` files go (created if missing, mode 0750).
    max_bytes : int
        Largest size of one file: a record that would take a file past it starts the next
        (a single larger record still gets a file of its own).
    keep_days : int
        Days of files kept, today's included; older whole files are deleted when a day's
        first file is opened. 0: keep every file.
    clock : callable
        The time now, as an aware :class:`~datetime.datetime` (tests pass a fixed one).

    Raises
    ------
    OSError
        The directory or today's file cannot be created or opened.
    """

    def __init__(
        self,
        directory: Path,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        keep_days: int = 0,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
            raise ValueError('Argument "max_bytes" must be an integer >= 1.')
        if isinstance(keep_days, bool) or not isinstance(keep_days, int) or keep_days < 0:
            raise ValueError('Argument "keep_days" must be an integer >= 0.')
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.keep_days = keep_days
        self.clock = clock
        self.lost = 0
        """Records that could not be written (the directory full or gone): logged, never raised."""
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._day: date | None = None
        self._index = 0
        self._size = 0
        self._failing = False
        self.directory.mkdir(mode=0o750, parents=True, exist_ok=True)
        with self._lock:
            self._open_day(self._now().date())  # an unwritable directory stops start-up, not the first record

    @property
    def path(self) -> Path | None:
        """The file records go to now (``None`` after :meth:`close`, until the next record)."""
        return None if self._fd is None or self._day is None else self.directory / audit_file_name(self._day, self._index)

    def record(
        self,
        event: str,
        result: str,
        *,
        outcome: EventOutcomeIndicatorValues | int | None = None,
        calling_ae: str = "",
        called_ae: str = "",
        peer: str = "",
        tls: str = "",
        certificate_subject: str = "",
        destination: str = "",
        sop_instance_uid: str = "",
        report_uid: str = "",
        status: str = "",
        finding: str = "",
        detail: str = "",
        **counts: int,
    ) -> None:
        """Append one record. Empty fields are left out; ``counts`` are integers (``stored=3``).

        ``outcome`` overrides the event's usual EventOutcomeIndicator. A failure to write is
        logged and counted in :attr:`lost`, never raised: the node goes on without its audit
        line rather than refuse an instance.

        Raises
        ------
        ValueError
            ``(event, result)`` is not in :data:`EVENTS`, ``outcome`` is not an
            EventOutcomeIndicator, or a count's name is not a lower-case word.
        TypeError
            A count is not an integer.
        """
        kind = EVENTS.get((event, result))
        if kind is None:
            raise ValueError(f'Arguments "event", "result": unknown audit event {event!r}/{result!r}.')
        indicator = kind.outcome if outcome is None else EventOutcomeIndicatorValues(outcome)
        for name, count in counts.items():
            if not _COUNT_NAME.fullmatch(name) or name in _FIELDS or name in _HEAD:
                raise ValueError(f'Count "{name}": a count is named by a lower-case word that is not a field name.')
            if isinstance(count, bool) or not isinstance(count, int):
                raise TypeError(f'Count "{name}" must be an integer.')
        now = self._now()
        entry: dict[str, Any] = {
            "time": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "event": event,
            "result": result,
            "outcome": int(indicator),
            "outcome_text": indicator.text,
            "atna_event": kind.event_id.as_json(),
        }
        if kind.event_type is not None:
            entry["atna_event_type"] = kind.event_type.as_json()
        entry["atna_action"] = kind.action.value
        values = {
            "calling_ae": calling_ae, "called_ae": called_ae, "peer": peer, "tls": tls,
            "certificate_subject": certificate_subject, "destination": destination,
            "sop_instance_uid": sop_instance_uid, "report_uid": report_uid, "status": status,
            "finding": finding, "detail": detail,
        }
        for name, limit in _FIELDS.items():
            if values[name]:
                entry[name] = _clean(values[name], limit)
        entry.update(counts)
        # Control characters are escaped above, so ensure_ascii=False cannot break the line.
        line = json.dumps(entry, ensure_ascii=False, separators=(",", ":")) + "\n"
        self._write(now.date(), line.encode("utf-8", "backslashreplace"))

    def close(self) -> None:
        """Close the current file (a later record opens it again)."""
        with self._lock:
            self._close_file()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    # ----- files ---------------------------------------------------------------------------

    def _now(self) -> datetime:
        now = self.clock()
        if now.tzinfo is None:
            raise ValueError("the audit clock must return an aware datetime")
        return now.astimezone(UTC)

    def _write(self, day: date, line: bytes) -> None:
        with self._lock:
            try:
                if self._fd is None or day != self._day:
                    self._open_day(day)
                elif self._size and self._size + len(line) > self.max_bytes:
                    self._open_file(day, self._index + 1)
                assert self._fd is not None
                view = memoryview(line)
                while view:  # a regular file takes it in one write unless the disk is full
                    written = os.write(self._fd, view)
                    view = view[written:]
                self._size += len(line)
            except OSError as exc:
                self.lost += 1
                self._close_file()  # a line cut short ends that file: the next record opens another
                if not self._failing:
                    self._failing = True
                    logger.error(
                        "audit log: cannot write to %s (%s); audit records are lost until it can",
                        self.directory, exc.strerror or type(exc).__name__,
                    )
                return
            if self._failing:
                self._failing = False
                logger.warning("audit log: writing again to %s; %d record(s) were lost", self.path, self.lost)

    def _open_day(self, day: date) -> None:
        """Open ``day``'s last file, or the next one when that is full or ends in a cut line."""
        if day != self._day:
            self._expire(day)
        parsed = (parse_audit_file_name(name) for name in os.listdir(self.directory))
        index = max((p[1] for p in parsed if p is not None and p[0] == day), default=0)
        path = self.directory / audit_file_name(day, index)
        if path.exists() and (path.stat().st_size >= self.max_bytes or not _ends_with_newline(path)):
            index += 1
        self._open_file(day, index)

    def _open_file(self, day: date, index: int) -> None:
        self._close_file()
        path = self.directory / audit_file_name(day, index)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        self._size = os.fstat(self._fd).st_size
        self._day, self._index = day, index

    def _close_file(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.close(fd)
            except OSError:
                pass

    def _expire(self, today: date) -> None:
        """Delete whole files from before the last ``keep_days`` days."""
        if not self.keep_days:
            return
        oldest_kept = today - timedelta(days=self.keep_days - 1)
        deleted = 0
        for name in sorted(os.listdir(self.directory)):
            parsed = parse_audit_file_name(name)
            if parsed is not None and parsed[0] < oldest_kept:
                try:
                    (self.directory / name).unlink()
                    deleted += 1
                except FileNotFoundError:
                    continue  # another process expired it
        if deleted:
            logger.info("audit log: deleted %d file(s) from before %s (audit.keep_days = %d)",
                        deleted, oldest_kept.isoformat(), self.keep_days)


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        if f.seek(0, os.SEEK_END) == 0:
            return True
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def open_audit_log(config: NodeConfig, clock: Callable[[], datetime] = _utc_now) -> AuditLog | None:
    """The node's audit log as the config says (``None`` when ``audit.enabled`` is false).

    Raises
    ------
    dicom_node.errors.ConfigError
        The audit directory cannot be created or written; the message names ``audit.directory``.
    """
    if not config.audit_enabled:
        return None
    try:
        return AuditLog(
            config.audit_path, max_bytes=config.audit_max_file_bytes, keep_days=config.audit_keep_days, clock=clock
        )
    except OSError as exc:
        raise ConfigError(
            f"cannot write the audit log in {config.audit_path} (audit.directory): {exc.strerror or exc}"
        ) from None


def record_purge(audit: AuditLog, counts: Mapping[str, int], origin: str) -> None:
    """One ``purge`` record with a purge's counts (:meth:`PurgePlan.counts`); ``origin`` says who purged."""
    audit.record(
        "purge", "deleted", detail=origin,
        instances=counts["instances"], results=counts["results"], records=counts["records"], bytes=counts["bytes"],
        jobs_by_age=counts["jobs_by_age"], jobs_by_disk=counts["jobs_by_disk"],
    )

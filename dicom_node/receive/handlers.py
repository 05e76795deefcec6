"""pynetdicom event handlers: C-ECHO, C-STORE, and the association log lines and audit records.

``handle_store`` answers Success only after the instance, exactly as received, and its job
are durably in the spool. Every failure maps to its own status with an Error Comment, and
no exception leaves a handler. Nothing slow (decoding pixels, inference) runs here: the
handler runs in the association's thread and would stall the modality.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, cast

from pydicom.dataset import Dataset
from pydicom.filereader import _read_file_meta_info
from pydicom.uid import UID
from pynetdicom import evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode_file_meta
from pynetdicom.events import Event

from dicom_node.audit import AuditLog, EventOutcomeIndicatorValues, peer_address
from dicom_node.config import NodeConfig
from dicom_node.errors import MissingIdentifierError, UnreadableDatasetError
from dicom_node.log_safety import describe_exception, escape_control, escape_field
from dicom_node.metrics import NodeMetrics
from dicom_node.receive import dimse_status
from dicom_node.receive.incoming import IncomingFiles
from dicom_node.receive.instance_check import InstanceIdentity, read_instance_identity
from dicom_node.spool import Job, Spool
from dicom_node.tls import Subject, describe_tls, format_subject, peer_subject

logger = logging.getLogger(__name__)

_DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_PREAMBLE = b"\x00" * 128 + b"DICM"


def _status(code: int, comment: str = "") -> Dataset:
    status = Dataset()
    status.Status = code
    if comment:
        status.ErrorComment = comment[:64]  # LO: at most 64 characters
    return status


class AssociationLog:
    """One log line per association event, with how many instances it stored and failed,
    and its audit record when there is an audit log."""

    def __init__(self, audit: AuditLog | None = None) -> None:
        self._lock = threading.Lock()
        self._counts: dict[int, list[int]] = {}
        self.audit = audit

    def count(self, assoc: Any, ok: bool) -> None:
        with self._lock:
            counts = self._counts.setdefault(id(assoc), [0, 0])
            counts[0 if ok else 1] += 1

    def _pop(self, assoc: Any) -> list[int]:
        with self._lock:
            return self._counts.pop(id(assoc), [0, 0])

    def on_association_accepted(self, event: Event) -> None:
        requestor = event.assoc.requestor
        sock = _raw_socket(event.assoc)
        subject = peer_subject(sock)
        tls = describe_tls(sock)
        logger.info(
            "association accepted: calling_ae=%s peer=%s:%s %s%s",
            escape_field(requestor.ae_title), requestor.address, requestor.port, tls,
            f" certificate_subject={escape_control(format_subject(subject))}" if subject else "",
        )
        if self.audit is not None:
            self.audit.record(
                "association", "accepted", calling_ae=requestor.ae_title, called_ae=event.assoc.acceptor.ae_title,
                peer=_peer(event.assoc), tls=tls.removeprefix("tls="),
                certificate_subject=format_subject(subject) if subject else "",
            )

    def on_association_rejected(self, event: Event) -> None:
        assoc = event.assoc
        requestor = assoc.requestor
        calling_ae = requestor.primitive.calling_ae_title if requestor.primitive else ""
        called_ae = requestor.primitive.called_ae_title if requestor.primitive else ""
        reason = rejection_reason(assoc)
        subject = peer_subject(_raw_socket(assoc))
        logger.warning(
            "association rejected: calling_ae=%s called_ae=%s peer=%s:%s reason=%s%s",
            escape_field(calling_ae), escape_field(called_ae), requestor.address, requestor.port, reason,
            f" certificate_subject={escape_control(format_subject(subject))}" if subject else "",
        )
        if self.audit is not None:
            self.audit.record(
                "association", "rejected", calling_ae=calling_ae, called_ae=called_ae, peer=_peer(assoc),
                certificate_subject=format_subject(subject) if subject else "", detail=reason,
            )

    def on_association_released(self, event: Event) -> None:
        stored, failed = self._pop(event.assoc)
        logger.info(
            "association released: calling_ae=%s stored=%d failed=%d",
            escape_field(event.assoc.requestor.ae_title), stored, failed,
        )
        if self.audit is not None:
            self.audit.record(
                "association", "released", calling_ae=event.assoc.requestor.ae_title, peer=_peer(event.assoc),
                stored=stored, failed=failed,
            )

    def on_association_aborted(self, event: Event) -> None:
        stored, failed = self._pop(event.assoc)
        reason = getattr(event.assoc, "abort_reason", "")  # set by receive.server when the node aborts
        logger.warning(
            "association aborted: calling_ae=%s peer=%s:%s stored=%d failed=%d%s",
            escape_field(event.assoc.requestor.ae_title), event.assoc.requestor.address,
            event.assoc.requestor.port, stored, failed, f" reason={reason}" if reason else "",
        )
        if self.audit is not None:
            self.audit.record(
                "association", "aborted", calling_ae=event.assoc.requestor.ae_title, peer=_peer(event.assoc),
                detail=reason or "aborted by the peer or the network", stored=stored, failed=failed,
            )


def _peer(assoc: Any) -> str:
    """``address:port`` of the association's requestor."""
    return peer_address(str(assoc.requestor.address), int(assoc.requestor.port))


# A-ASSOCIATE-RJ (source, reason) -> why, in the log (PS3.8 9.3.4).
_REJECT_REASONS = {
    (0x01, 0x01): "no reason given",
    (0x01, 0x02): "application context name not supported",
    (0x01, 0x03): "calling AE title not recognised",
    (0x01, 0x07): "called AE title not recognised",
    (0x02, 0x01): "no reason given (ACSE)",
    (0x02, 0x02): "protocol version not supported",
    (0x03, 0x01): "temporary congestion",
    (0x03, 0x02): "local limit exceeded",
}


def rejection_reason(assoc: Any) -> str:
    """Why the node rejected ``assoc``: the server's own words for its limits, else the
    A-ASSOCIATE-RJ reason it sent."""
    reason = getattr(assoc, "reject_reason", "")
    if reason:
        return str(reason)
    primitive = assoc.acceptor.primitive
    if primitive is None or primitive.result_source is None:
        return "unknown"
    return _REJECT_REASONS.get((primitive.result_source, primitive.diagnostic), f"diagnostic {primitive.diagnostic}")


def handle_echo(event: Event) -> int:
    """C-ECHO: the node is up."""
    logger.info("C-ECHO: calling_ae=%s status=0x0000", event.assoc.requestor.ae_title)
    return dimse_status.SUCCESS


def handle_store(
    event: Event,
    spool: Spool,
    association_log: AssociationLog,
    on_stored: Callable[[], None] | None = None,
    incoming: IncomingFiles | None = None,
    metrics: NodeMetrics | None = None,
    audit: AuditLog | None = None,
) -> Dataset:
    """C-STORE: persist the instance and its job durably, then answer.

    ``on_stored`` is called after a successful store (it wakes the inference worker).
    ``incoming`` holds the temp files pynetdicom streamed the data set to (see
    :mod:`dicom_node.receive.incoming`); without it the data set is taken from memory.
    With ``audit``, the answer is recorded (status, SOP Instance UID, reason on failure).
    Returns a status data set (with Error Comment on failure); never raises.
    """
    started = time.perf_counter()
    calling_ae = event.assoc.requestor.ae_title
    request_uid = str(getattr(event.request, "AffectedSOPInstanceUID", "") or "")
    code, comment, size = _store(event, spool, calling_ae, incoming)
    association_log.count(event.assoc, code == dimse_status.SUCCESS)
    if metrics is not None:
        metrics.c_store_responses.labels(f"0x{code:04X}").inc()
        if code == dimse_status.SUCCESS:
            metrics.received_bytes.inc(size)
    if code == dimse_status.SUCCESS and on_stored is not None:
        on_stored()
    log = logger.info if code == dimse_status.SUCCESS else logger.warning
    # Only the request's identifiers and our own comment: never a value of the data set.
    log(
        "C-STORE: calling_ae=%s sop_instance_uid=%s status=0x%04X bytes=%d ms=%.1f%s",
        escape_control(calling_ae), escape_control(request_uid), code, size, (time.perf_counter() - started) * 1000,
        f" reason={comment!r}" if comment else "",
    )
    if audit is not None:
        audit.record(
            "instance", "stored" if code == dimse_status.SUCCESS else "refused",
            outcome=_store_outcome(code), calling_ae=calling_ae, called_ae=event.assoc.acceptor.ae_title,
            peer=_peer(event.assoc), sop_instance_uid=request_uid, status=f"0x{code:04X}", detail=comment, bytes=size,
        )
    return _status(code, comment)


def _store_outcome(code: int) -> EventOutcomeIndicatorValues:
    """A C-STORE status as an ATNA outcome: out of resources (A7xx) may pass when the modality
    sends again; any other failure refuses that instance for good."""
    if code == dimse_status.SUCCESS:
        return EventOutcomeIndicatorValues.SUCCESS
    if code >> 8 == 0xA7:
        return EventOutcomeIndicatorValues.MINOR_FAILURE
    return EventOutcomeIndicatorValues.SERIOUS_FAILURE


def _store(event: Event, spool: Spool, calling_ae: str, incoming: IncomingFiles | None) -> tuple[int, str, int]:
    """Do the work of :func:`handle_store`; return ``(status, error comment, bytes)``."""
    received: Path | None = None
    try:
        request = cast(C_STORE, event.request)
        transfer_syntax = UID(event.context.transfer_syntax)
        if incoming is not None:
            received = Path(event.dataset_path)
            capped = incoming.claim(received)
            if capped is not None and capped.exceeded:
                return (
                    dimse_status.OUT_OF_RESOURCES_TOO_LARGE,
                    f"instance larger than {incoming.max_bytes} bytes",
                    capped.received,
                )
            if capped is not None and capped.error is not None:
                raise capped.error  # answered below: storage full or write failed
            return _store_file(request, received, transfer_syntax, spool, calling_ae)
        dataset = request.DataSet
        if dataset is None:
            return dimse_status.CANNOT_UNDERSTAND, "C-STORE request without a data set", 0
        size = dataset.seek(0, os.SEEK_END)
        code, comment, identity = _check(request, dataset, transfer_syntax)
        if identity is None:
            return code, comment, size
        # The received bytes go to disk as they are: no decode, no re-encode.
        with dataset.getbuffer() as data:
            job, created = spool.store_instance(
                [_PREAMBLE, encode_file_meta(event.file_meta), data],
                sop_instance_uid=identity.sop_instance_uid,
                sop_class_uid=identity.sop_class_uid,
                transfer_syntax_uid=str(transfer_syntax),
                calling_ae_title=calling_ae,
            )
        _log_duplicate(job, created)
        return dimse_status.SUCCESS, "", size
    except OSError as exc:
        if exc.errno in _DISK_FULL_ERRNOS:
            logger.error("spool is out of disk space: %s", spool.root)
            return dimse_status.OUT_OF_RESOURCES, "node storage full", 0
        logger.error("cannot write to spool %s: %s", spool.root, exc.strerror)
        return dimse_status.OUT_OF_RESOURCES_WRITE_FAILED, "node storage write failed", 0
    except Exception as exc:
        # The type only: a library's message may quote values of the data set.
        logger.error("unexpected error while storing an instance: %s", describe_exception(exc))
        return dimse_status.PROCESSING_FAILURE, "unexpected node error", 0
    finally:
        if received is not None:
            received.unlink(missing_ok=True)  # refused: no trace; stored: renamed away already


def _store_file(
    request: C_STORE, received: Path, transfer_syntax: UID, spool: Spool, calling_ae: str
) -> tuple[int, str, int]:
    """Check a data set pynetdicom streamed to ``received`` (a Part 10 file) and move it into the spool."""
    with open(received, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(len(_PREAMBLE))
        _read_file_meta_info(f)  # written by pynetdicom: the data set starts after it
        start = f.tell()
        code, comment, identity = _check(request, f, transfer_syntax, start=start)
    if identity is None:
        return code, comment, size - start
    job, created = spool.store_received_file(
        received,
        sop_instance_uid=identity.sop_instance_uid,
        sop_class_uid=identity.sop_class_uid,
        transfer_syntax_uid=str(transfer_syntax),
        calling_ae_title=calling_ae,
    )
    _log_duplicate(job, created)
    return dimse_status.SUCCESS, "", size - start


def _check(
    request: C_STORE, dataset: BinaryIO, transfer_syntax: UID, start: int = 0
) -> tuple[int, str, InstanceIdentity | None]:
    """The receive-time check: ``(status, comment, identity)``, identity ``None`` when refused."""
    try:
        identity = read_instance_identity(dataset, transfer_syntax, start=start)
    except UnreadableDatasetError as exc:
        return dimse_status.CANNOT_UNDERSTAND, str(exc), None
    except MissingIdentifierError as exc:
        return dimse_status.CANNOT_UNDERSTAND_MISSING_UIDS, str(exc), None
    if identity.sop_class_uid != request.AffectedSOPClassUID:
        return dimse_status.DATASET_DOES_NOT_MATCH_SOP_CLASS, "SOP Class UID differs from the C-STORE request", None
    if identity.sop_instance_uid != request.AffectedSOPInstanceUID:
        return dimse_status.CANNOT_UNDERSTAND_UID_MISMATCH, "SOP Instance UID differs from the C-STORE request", None
    return dimse_status.SUCCESS, "", identity


def _log_duplicate(job: Job, created: bool) -> None:
    if not created:
        logger.info(
            "duplicate instance: sop_instance_uid=%s already has a job in state %s",
            job.sop_instance_uid, job.state.value,
        )


def discard_unfinished_transfers(event: Event, incoming: IncomingFiles) -> None:
    """EVT_CONN_CLOSE: delete the temp files of data sets whose transfer the connection cut."""
    incoming.discard_of_thread(getattr(event.assoc.dul, "ident", None))


def _raw_socket(assoc: Any) -> Any:
    """The association's socket (an :class:`ssl.SSLSocket` on the TLS port), or ``None``."""
    dul_socket = getattr(getattr(assoc, "dul", None), "socket", None)
    return getattr(dul_socket, "socket", None)


def reject_unlisted_hosts(event: Event, config: NodeConfig) -> None:
    """EVT_REQUESTED: reject a listed AE title calling from a host, or with a client
    certificate subject, not listed for it.

    AE titles that are not listed at all are rejected by pynetdicom itself
    (``require_calling_aet``); both use the standard reason "calling AE title not recognised".
    """
    assoc = event.assoc
    primitive = assoc.requestor.primitive
    ae_title = primitive.calling_ae_title if primitive is not None else ""
    subject: Subject | None = peer_subject(_raw_socket(assoc))
    why = config.refusal(ae_title, assoc.requestor.address, subject)
    if why is None:
        return
    known_title = any(c.ae_title == ae_title.strip() for c in config.allowed_callers)
    if not known_title:
        return  # pynetdicom rejects it during negotiation and fires EVT_REJECTED
    # Rejected permanent, by the service user, calling AE title not recognised (PS3.8 9.3.4).
    assoc.acse.send_reject(0x01, 0x01, 0x03)
    assoc.is_rejected = True
    cast(Any, assoc).reject_reason = why  # for the rejected line, its count and its audit record, as any rejection
    evt.trigger(assoc, evt.EVT_REJECTED, {})
    assoc.kill()


def build_event_handlers(
    config: NodeConfig,
    spool: Spool,
    on_stored: Callable[[], None] | None = None,
    incoming: IncomingFiles | None = None,
    metrics: NodeMetrics | None = None,
    audit: AuditLog | None = None,
) -> list[tuple[Any, ...]]:
    """Bind the handlers to their dependencies for ``AE.start_server``.

    With ``incoming`` (installed: :meth:`IncomingFiles.install`), data sets are streamed to
    the spool and unfinished transfers are cleaned up when their connection closes. With
    ``metrics``, associations and C-STORE responses are counted; with ``audit``, each
    association event and C-STORE answer gets its audit record.
    """
    association_log = AssociationLog(audit)
    streaming: list[tuple[Any, ...]] = (
        [(evt.EVT_CONN_CLOSE, discard_unfinished_transfers, [incoming])] if incoming is not None else []
    )
    counting: list[tuple[Any, ...]] = (
        [
            (evt.EVT_ACCEPTED, metrics.on_accepted),
            (evt.EVT_REJECTED, metrics.on_rejected),
            (evt.EVT_RELEASED, metrics.on_released),
            (evt.EVT_ABORTED, metrics.on_aborted),
        ]
        if metrics is not None else []
    )
    return [
        *streaming,
        *counting,
        (evt.EVT_REQUESTED, reject_unlisted_hosts, [config]),
        (evt.EVT_ACCEPTED, association_log.on_association_accepted),
        (evt.EVT_REJECTED, association_log.on_association_rejected),
        (evt.EVT_RELEASED, association_log.on_association_released),
        (evt.EVT_ABORTED, association_log.on_association_aborted),
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_C_STORE, handle_store, [spool, association_log, on_stored, incoming, metrics, audit]),
    ]

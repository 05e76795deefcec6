"""Delivery of results to the PACS: destinations, backoff, C-STORE of a result's files.

The pieces the outbox is built from. :func:`next_retry_delay` and :func:`is_delivered`
are pure; :func:`send_files` is the only one touching the network, and it never raises:
whatever happens, it returns a :class:`DeliveryResult` the outbox can record.

"Delivered" means the peer answered the C-STORE with a Success or Warning status
(PS3.4 B.2.3; Warning, e.g. B000 "coercion of data elements", still stores the
instance). No response at all, an abort, a timeout or a Failure status is not delivered.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pynetdicom import AE, evt
from pynetdicom.status import STATUS_SUCCESS, STATUS_WARNING, code_to_category

from dicom_node.config import PacsDestination
from dicom_node.errors import ConfigError
from dicom_node.log_safety import describe_exception
from dicom_node.tcp import on_connection_open
from dicom_node.tls import (
    ClientTLSContext,
    KeyNames,
    build_client_context,
    handshake_failure_reason,
    quiet_failed_tls,
)

logger = logging.getLogger(__name__)


def next_retry_delay(attempts: int, *, initial: float, maximum: float) -> float:
    """Seconds to wait before the next try, after ``attempts`` failed ones.

    Capped exponential backoff: ``initial``, then doubling, never more than ``maximum``.

    Parameters
    ----------
    attempts : int
        Failed attempts so far (at least 1).
    initial : float
        Delay after the first failure, in seconds (> 0).
    maximum : float
        Upper bound of the delay, in seconds (>= ``initial``).

    Returns
    -------
    float
        ``min(maximum, initial * 2 ** (attempts - 1))``.

    Examples
    --------
    >>> [next_retry_delay(n, initial=30, maximum=600) for n in range(1, 7)]
    [30.0, 60.0, 120.0, 240.0, 480.0, 600.0]
    """
    if isinstance(attempts, bool) or not isinstance(attempts, int):
        raise TypeError('Argument "attempts" must be an integer.')
    if attempts < 1:
        raise ValueError('Argument "attempts" must be >= 1.')
    if not (math.isfinite(initial) and initial > 0):
        raise ValueError('Argument "initial" must be a finite number > 0.')
    if not (math.isfinite(maximum) and maximum >= initial):
        raise ValueError('Argument "maximum" must be a finite number >= "initial".')
    # Past 2**64 the cap has long been reached; this also keeps 2.0 ** n finite.
    exponent = min(attempts - 1, 64)
    return float(min(maximum, initial * 2.0**exponent))


def is_delivered(status: Dataset) -> bool:
    """Whether a C-STORE response status means the PACS has the instance.

    Parameters
    ----------
    status : pydicom.dataset.Dataset
        What :meth:`pynetdicom.association.Association.send_c_store` returned. An
        empty data set (no ``Status``) means timeout, abort or invalid response.

    Returns
    -------
    bool
        ``True`` for a Success or Warning status, ``False`` otherwise.
    """
    code = status.get("Status")
    if not isinstance(code, int):
        return False
    return code_to_category(code) in (STATUS_SUCCESS, STATUS_WARNING)


@dataclass(frozen=True)
class DeliveryResult:
    """Outcome of one C-STORE of one file to one destination.

    Attributes
    ----------
    delivered : bool
        The PACS answered Success or Warning.
    status : int or None
        The C-STORE response status, ``None`` when there was no response.
    error : str or None
        Why it was not delivered, for the outbox and the logs (no patient data).
    """

    delivered: bool
    status: int | None = None
    error: str | None = None


def client_context(destination: PacsDestination) -> ClientTLSContext:
    """The TLS context for a destination with ``tls = true``, from its files as they are now.

    Built for every send, so renewed certificates are picked up without a restart; the
    node also builds it once at start-up to stop on a bad file.

    Raises
    ------
    dicom_node.errors.ConfigError
        A TLS file is missing, unreadable or invalid; the message names its key.
    """
    prefix = f"pacs.{destination.name}"
    return build_client_context(
        destination.tls_ca_file, destination.tls_certificate, destination.tls_private_key,
        check_hostname=destination.tls_check_hostname,
        keys=KeyNames(f"{prefix}.tls_certificate", f"{prefix}.tls_private_key", f"{prefix}.tls_ca_file"),
    )


def send_file(
    path: Path | str,
    destination: PacsDestination,
    *,
    calling_ae_title: str,
    acse_timeout: float = 30,
    dimse_timeout: float = 60,
    network_timeout: float = 60,
) -> DeliveryResult:
    """C-STORE one DICOM file to ``destination``; never raises (see :func:`send_files`)."""
    return send_files(
        [path], destination, calling_ae_title=calling_ae_title, acse_timeout=acse_timeout,
        dimse_timeout=dimse_timeout, network_timeout=network_timeout,
    )


def send_files(
    paths: Sequence[Path | str],
    destination: PacsDestination,
    *,
    calling_ae_title: str,
    acse_timeout: float = 30,
    dimse_timeout: float = 60,
    network_timeout: float = 60,
) -> DeliveryResult:
    """C-STORE DICOM files to ``destination`` in order, on one association; never raises.

    Each file is sent in its own transfer syntax, the only one proposed for its SOP
    class, so the bytes the PACS receives are the bytes on disk. The result is delivered
    only when every file is: a failure stops the sending, and the next attempt sends
    them all again (same SOP Instance UIDs, so the PACS stores each once). With
    ``destination.tls`` the association runs over TLS (:func:`client_context`); a failed
    handshake is one "not delivered" line with its reason.

    Parameters
    ----------
    paths : Sequence of pathlib.Path or str
        The DICOM files (with file meta information), in sending order: objects a
        report references come before the report.
    destination : PacsDestination
        Where to send them.
    calling_ae_title : str
        The node's AE title, as registered in the PACS.
    acse_timeout, dimse_timeout, network_timeout : float
        pynetdicom timeouts, in seconds (also the TCP connection timeout).

    Returns
    -------
    DeliveryResult
        ``delivered`` is true only when every file got a Success or Warning response;
        otherwise ``status`` and ``error`` are those of the first file that did not.
    """
    files = [Path(path) for path in paths]
    if not files:
        raise ValueError("send_files needs at least one file")
    contexts: list[tuple[str, str]] = []
    for path in files:
        try:
            header = dcmread(path, stop_before_pixels=True)
            context_key = (str(header.SOPClassUID), str(header.file_meta.TransferSyntaxUID))
        except (OSError, InvalidDicomError, AttributeError) as exc:
            return _failed(path, destination, f"cannot read {path.name}: {type(exc).__name__}")
        if context_key not in contexts:
            contexts.append(context_key)

    ae = AE(ae_title=calling_ae_title)
    ae.acse_timeout = acse_timeout
    ae.dimse_timeout = dimse_timeout
    ae.network_timeout = network_timeout
    ae.connection_timeout = network_timeout
    for sop_class_uid, transfer_syntax in contexts:
        ae.add_requested_context(sop_class_uid, transfer_syntax)
    context: ClientTLSContext | None = None
    first = files[0]
    if destination.tls:
        try:
            context = client_context(destination)
        except ConfigError as exc:  # a file changed since start-up
            return _failed(first, destination, f"TLS configuration: {exc}")
    tls_args = (context, destination.server_name) if context is not None else None
    try:
        with quiet_failed_tls(context):
            assoc = ae.associate(
                destination.host, destination.port, ae_title=destination.ae_title, tls_args=tls_args,
                evt_handlers=[(evt.EVT_CONN_OPEN, on_connection_open)],  # no Nagle delay per message
            )
    except (OSError, RuntimeError, ValueError) as exc:
        return _failed(first, destination, f"association failed: {describe_exception(exc)}")
    if not assoc.is_established:
        if context is not None and context.last_error is not None:
            return _failed(first, destination, f"TLS handshake failed: {handshake_failure_reason(context.last_error)}")
        reason = "rejected" if assoc.is_rejected else "aborted or no answer"
        return _failed(first, destination, f"association {reason}")
    last_code = None
    for path in files:
        try:
            response = assoc.send_c_store(path)
        except (OSError, RuntimeError, ValueError, AttributeError) as exc:
            assoc.abort()
            return _failed(path, destination, f"C-STORE failed: {describe_exception(exc)}")
        code = response.get("Status")
        if not is_delivered(response):
            assoc.release()
            if code is None:
                return _failed(path, destination, "no C-STORE response (timeout or abort)")
            return _failed(path, destination, f"C-STORE status 0x{code:04X}", status=code)
        logger.info("%s delivered to %s, status 0x%04X", path.name, destination.name, code)
        last_code = code
    assoc.release()
    return DeliveryResult(delivered=True, status=last_code)


def _failed(path: Path, destination: PacsDestination, error: str, status: int | None = None) -> DeliveryResult:
    logger.warning("%s not delivered to %s: %s", path.name, destination.name, error)
    return DeliveryResult(delivered=False, status=status, error=error)

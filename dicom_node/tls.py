"""DICOM TLS (PS3.15 Annex B secure transport): TLS contexts built from the node's config.

Pure builders of :class:`ssl.SSLContext` plus the two pieces of TLS policy the node needs
around pynetdicom: certificate subjects as comparable values (for the allow-list), and a
one-line reason for a failed handshake (for the log).

Both sides use TLS 1.2 or newer and, for TLS 1.2, only the forward-secret AEAD cipher suites
of the BCP 195 profile (PS3.15 B.9); TLS 1.3 suites are OpenSSL's, all of which qualify.
A bad file raises :class:`~dicom_node.errors.ConfigError` naming the config key, so a
misconfigured node stops at start-up instead of failing its first handshake.
"""

from __future__ import annotations

import logging
import re
import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

from dicom_node.errors import ConfigError
from dicom_node.log_safety import pynetdicom_loggers

# BCP 195 (RFC 7525) TLS 1.2 suites: ECDHE/DHE key exchange, AES-GCM or ChaCha20-Poly1305.
BCP195_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!eNULL"

# Attribute types as getpeercert() names them -> the short names of RFC 4514 / OpenSSL.
_SHORT_NAMES = {
    "commonName": "CN",
    "countryName": "C",
    "localityName": "L",
    "stateOrProvinceName": "ST",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "streetAddress": "STREET",
    "domainComponent": "DC",
    "userId": "UID",
    "emailAddress": "EMAILADDRESS",
    "serialNumber": "SERIALNUMBER",
    "title": "TITLE",
    "givenName": "GN",
    "surname": "SN",
}
_KNOWN_TYPES = frozenset(_SHORT_NAMES.values()) | {"E"}
_ALIASES = {"E": "EMAILADDRESS"}

Subject = tuple[tuple[str, str], ...]
"""A distinguished name as sorted ``(TYPE, value)`` pairs: order and spacing do not matter."""


class KeyNames(NamedTuple):
    """The config keys a TLS context is built from, for error messages."""

    certificate: str
    private_key: str
    ca_file: str


SERVER_KEYS = KeyNames("tls.certificate", "tls.private_key", "tls.ca_file")


def _read_text(key: str, path: Path) -> str:
    try:
        return Path(path).read_text(encoding="ascii", errors="replace")
    except OSError as exc:
        raise ConfigError(f'"{key}": cannot read {path}: {exc.strerror or exc}') from None


def _check_certificate_file(key: str, path: Path) -> None:
    text = _read_text(key, path)
    block = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", text, re.S)
    try:
        if block is None:
            raise ValueError("no PEM certificate")
        ssl.PEM_cert_to_DER_cert(block.group(0))
    except ValueError:
        raise ConfigError(f'"{key}": {path} holds no PEM certificate ("-----BEGIN CERTIFICATE-----")') from None


def _check_private_key_file(key: str, path: Path) -> None:
    text = _read_text(key, path)
    if not re.search(r"-----BEGIN [A-Z ]*PRIVATE KEY-----", text):
        raise ConfigError(f'"{key}": {path} holds no PEM private key ("-----BEGIN PRIVATE KEY-----")')
    if "ENCRYPTED" in text:
        # OpenSSL would prompt on the terminal for the passphrase; a service has none.
        raise ConfigError(
            f'"{key}": {path} is protected by a passphrase; the node needs an unencrypted key '
            "(protect it with file permissions: chmod 600, owned by the node's user)"
        )


def _no_passphrase() -> bytes:
    raise ConfigError("the private key asks for a passphrase")  # never reached: checked before


def _load_identity(context: ssl.SSLContext, certificate: Path, private_key: Path, keys: KeyNames) -> None:
    _check_certificate_file(keys.certificate, certificate)
    _check_private_key_file(keys.private_key, private_key)
    try:
        context.load_cert_chain(str(certificate), str(private_key), password=_no_passphrase)
    except ssl.SSLError as exc:
        raise ConfigError(
            f'"{keys.private_key}": {private_key} does not load with "{keys.certificate}" {certificate} '
            f"(not the certificate's key, or unreadable): {exc.reason or exc}"
        ) from None


def _load_ca(context: ssl.SSLContext, ca_file: Path, key: str) -> None:
    _check_certificate_file(key, ca_file)
    try:
        context.load_verify_locations(cafile=str(ca_file))
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f'"{key}": cannot load CA certificates from {ca_file}: {exc}') from None


def _restrict(context: ssl.SSLContext) -> None:
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(BCP195_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION  # CRIME; OpenSSL 3 has it off already


def build_server_context(
    certificate: Path, private_key: Path, ca_file: Path | None = None, *, keys: KeyNames = SERVER_KEYS
) -> ssl.SSLContext:
    """TLS context for the node's listening port.

    Parameters
    ----------
    certificate : pathlib.Path
        PEM file with the node's certificate, optionally followed by intermediate CAs.
    private_key : pathlib.Path
        PEM file with the certificate's unencrypted private key.
    ca_file : pathlib.Path or None
        PEM file of the CA certificates client certificates must chain to. Given: every
        client must present a valid certificate (mutual TLS). ``None``: none is asked for.
    keys : KeyNames
        Config keys named in error messages.

    Returns
    -------
    ssl.SSLContext
        Server-side context, TLS 1.2+.

    Raises
    ------
    dicom_node.errors.ConfigError
        A file is missing, unreadable, not PEM, encrypted, or key and certificate differ.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _restrict(context)
    _load_identity(context, certificate, private_key, keys)
    if ca_file is not None:
        _load_ca(context, ca_file, keys.ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class ClientTLSContext(ssl.SSLContext):
    """Client context that remembers why its connection failed, and in which threads.

    pynetdicom reports a failed TLS connection only as "no association", with a traceback
    from whichever of its threads saw the :class:`ssl.SSLError`. Keeping the error here lets
    the outbox log the real reason in its one line, and :func:`quiet_failed_tls` drop
    pynetdicom's records about it. A TLS 1.3 server refuses a missing client certificate
    only after the handshake, so reads are watched as well as the connect.
    """

    last_error: ssl.SSLError | None = None

    def record_failure(self, exc: ssl.SSLError) -> None:
        if self.last_error is None:
            self.last_error = exc
        self.failed_threads.add(threading.get_ident())

    @property
    def failed_threads(self) -> set[int]:
        threads: set[int] | None = self.__dict__.get("_failed_threads")
        if threads is None:
            threads = self.__dict__["_failed_threads"] = set()
        return threads


class _RecordingSSLSocket(ssl.SSLSocket):
    def _record(self, exc: ssl.SSLError) -> None:
        context = self.context
        if isinstance(context, ClientTLSContext):
            context.record_failure(exc)

    def connect(self, addr: Any) -> None:
        try:
            super().connect(addr)
        except ssl.SSLError as exc:
            self._record(exc)
            raise

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        try:
            return super().recv(buflen, flags)
        except ssl.SSLError as exc:
            self._record(exc)
            raise


ClientTLSContext.sslsocket_class = _RecordingSSLSocket


def build_client_context(
    ca_file: Path | None,
    certificate: Path | None = None,
    private_key: Path | None = None,
    *,
    check_hostname: bool = True,
    keys: KeyNames,
) -> ClientTLSContext:
    """TLS context for a C-STORE to a destination; the server's certificate is always verified.

    Parameters
    ----------
    ca_file : pathlib.Path or None
        PEM CA certificates to trust; ``None`` trusts the system's CA store.
    certificate, private_key : pathlib.Path or None
        The node's client certificate and key, for a PACS that requires one (both or neither).
    check_hostname : bool
        Whether the server certificate must name the host (or ``tls_server_name``).
    keys : KeyNames
        Config keys named in error messages.

    Returns
    -------
    ClientTLSContext
        Client-side context, TLS 1.2+, ``CERT_REQUIRED``.

    Raises
    ------
    dicom_node.errors.ConfigError
        As :func:`build_server_context`.
    """
    context = ClientTLSContext(ssl.PROTOCOL_TLS_CLIENT)
    _restrict(context)
    context.check_hostname = check_hostname
    if ca_file is None:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        _load_ca(context, ca_file, keys.ca_file)
    if certificate is not None and private_key is not None:
        _load_identity(context, certificate, private_key, keys)
    return context


# --- certificate subjects ------------------------------------------------------------------

_SPLIT = re.compile(r"(?<!\\)[,+]")


def parse_subject(key: str, text: object) -> Subject:
    """Parse an RFC 4514 distinguished name such as ``"CN=CR-ROOM-1,O=Hospital,C=DE"``.

    Attribute types are case-insensitive short names (CN, O, OU, C, L, ST, DC, UID,
    emailAddress/E, serialNumber, ...); values are case-sensitive, spaces around ``,`` and
    ``=`` are ignored and ``\\,`` escapes a comma. ``openssl x509 -noout -subject -nameopt
    RFC2253 -in cert.pem`` prints a certificate's subject in this form.

    Parameters
    ----------
    key : str
        Config key, for the error message.
    text : object
        The configured value.

    Returns
    -------
    Subject
        Sorted ``(TYPE, value)`` pairs.

    Raises
    ------
    dicom_node.errors.ConfigError
        Not a string, empty, or a part without ``=`` or with an unknown attribute type.

    Examples
    --------
    >>> parse_subject("k", "CN=CR-ROOM-1, O=Test Hospital")
    (('CN', 'CR-ROOM-1'), ('O', 'Test Hospital'))
    """
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f'"{key}" must be a distinguished name such as "CN=CR-ROOM-1,O=Hospital", got {text!r}')
    pairs = []
    for part in _SPLIT.split(text):
        name, sep, value = part.partition("=")
        attribute = name.strip().upper()
        attribute = _ALIASES.get(attribute, attribute)
        value = re.sub(r"\\(.)", r"\1", value.strip())
        if not sep or not value or attribute not in _KNOWN_TYPES:
            raise ConfigError(
                f'"{key}": {part.strip()!r} is not TYPE=value with a known type '
                f'({", ".join(sorted(_KNOWN_TYPES))}), in {text!r}'
            )
        pairs.append((attribute, value))
    return tuple(sorted(pairs))


def subject_from_peercert(peercert: Any) -> Subject | None:
    """The subject of a verified peer certificate, as :func:`parse_subject` returns it.

    Parameters
    ----------
    peercert : dict or None
        :meth:`ssl.SSLSocket.getpeercert`'s result; empty or ``None`` when the peer sent
        no certificate or it was not verified (no CA configured).

    Returns
    -------
    Subject or None
        ``None`` without a verified certificate.
    """
    if not peercert or "subject" not in peercert:
        return None
    pairs = [
        (_SHORT_NAMES.get(name, name.upper()), value)
        for rdn in peercert["subject"]
        for name, value in rdn
    ]
    return tuple(sorted(pairs))


def format_subject(subject: Subject) -> str:
    """A subject as ``TYPE=value`` pairs joined by commas (sorted, for the log).

    >>> format_subject((("CN", "CR-ROOM-1"), ("O", "Test, Hospital")))
    'CN=CR-ROOM-1,O=Test\\\\, Hospital'
    """
    return ",".join(f"{name}={_escape(value)}" for name, value in subject)


def _escape(value: str) -> str:
    return re.sub(r"([,+\\])", r"\\\1", value)


def peer_subject(sock: socket.socket | None) -> Subject | None:
    """The verified client-certificate subject of an accepted connection, ``None`` if none."""
    if not isinstance(sock, ssl.SSLSocket):
        return None
    try:
        return subject_from_peercert(sock.getpeercert())
    except (ValueError, OSError):  # not connected any more
        return None


def describe_tls(sock: socket.socket | None) -> str:
    """``tls=TLSv1.3`` (or ``tls=no``) for an association's log line."""
    if not isinstance(sock, ssl.SSLSocket):
        return "tls=no"
    try:
        return f"tls={sock.version()}"
    except (ValueError, OSError):
        return "tls=yes"


def handshake_failure_reason(exc: BaseException) -> str:
    """One short line saying why a TLS handshake failed (no traceback, no peer data).

    >>> handshake_failure_reason(TimeoutError("timed out"))
    'no TLS handshake in time'
    """
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or type(exc).__name__
        if reason in ("WRONG_VERSION_NUMBER", "HTTP_REQUEST", "UNKNOWN_PROTOCOL", "UNEXPECTED_MESSAGE"):
            return f"{reason}: the client does not speak TLS (a plaintext DICOM client on the TLS port?)"
        verify = getattr(exc, "verify_message", None)
        if isinstance(exc, ssl.SSLCertVerificationError) and verify:
            return f"{reason}: {verify}"
        if reason == "TLSV1_ALERT_UNKNOWN_CA":
            return f"{reason}: the peer does not trust this side's certificate (its CA is not in the peer's list)"
        if reason == "TLSV13_ALERT_CERTIFICATE_REQUIRED":
            return f"{reason}: the peer requires a client certificate"
        if isinstance(exc, ssl.SSLEOFError):
            return "connection closed during the TLS handshake"
        return str(reason)
    if isinstance(exc, TimeoutError):
        return "no TLS handshake in time"
    return f"{type(exc).__name__}: {getattr(exc, 'strerror', None) or exc}"


class SocketErrorsWithoutTraceback(logging.Filter):
    """Keeps pynetdicom's line for a socket or TLS error but drops its traceback.

    pynetdicom logs such errors with ``LOGGER.exception``: a dozen lines of its internals
    for what is a network event. The message (``[SSL: ...] ...``, ``[Errno 104] ...``) stays.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], OSError):
            record.exc_info = None
            record.exc_text = None
        return True


def quiet_pynetdicom_tls_errors() -> None:
    """Install :class:`SocketErrorsWithoutTraceback` on pynetdicom's loggers (idempotent)."""
    for target in pynetdicom_loggers():
        if not any(isinstance(f, SocketErrorsWithoutTraceback) for f in target.filters):
            target.addFilter(SocketErrorsWithoutTraceback())


class _FailedTLSRecords(logging.Filter):
    def __init__(self, context: ClientTLSContext, caller: int) -> None:
        super().__init__()
        self.context = context
        self.caller = caller

    def filter(self, record: logging.LogRecord) -> bool:
        if self.context.last_error is None:
            return True
        return not (record.thread in self.context.failed_threads or record.thread == self.caller)


@contextmanager
def quiet_failed_tls(context: ClientTLSContext | None) -> Iterator[None]:
    """While associating with ``context``: once its TLS connection failed, drop pynetdicom's
    records about it (the caller logs the failure, with its reason, in one line).

    Only records from the threads that saw the error and from the calling thread are
    dropped, so other associations' log lines are untouched.
    """
    if context is None:
        yield
        return
    quiet = _FailedTLSRecords(context, threading.get_ident())
    targets = pynetdicom_loggers()
    for target in targets:
        target.addFilter(quiet)
    try:
        yield
    finally:
        for target in targets:
            target.removeFilter(quiet)

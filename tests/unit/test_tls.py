"""TLS context builders and certificate subjects (the listener with DCMTK and Orthanc: tests/integration/test_tls.py)."""

from __future__ import annotations

import socket
import ssl
import subprocess
import threading
from pathlib import Path

import pytest

from dicom_node.errors import ConfigError
from dicom_node.tls import (
    SERVER_KEYS,
    KeyNames,
    build_client_context,
    build_server_context,
    format_subject,
    handshake_failure_reason,
    parse_subject,
    subject_from_peercert,
)
from testkit.tls import OPENSSL, ThrowawayPKI, make_test_pki

CLIENT_KEYS = KeyNames("pacs.main.tls_certificate", "pacs.main.tls_private_key", "pacs.main.tls_ca_file")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> ThrowawayPKI:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


def test_server_context_is_tls12_or_newer_and_asks_no_certificate_without_a_ca(pki: ThrowawayPKI) -> None:
    context = build_server_context(pki.server.cert, pki.server.key)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_NONE
    assert all("CBC" not in c["name"] or c["protocol"] == "TLSv1.3" for c in context.get_ciphers())


def test_server_context_with_a_ca_requires_client_certificates(pki: ThrowawayPKI) -> None:
    assert build_server_context(pki.server.cert, pki.server.key, pki.ca).verify_mode == ssl.CERT_REQUIRED


def test_client_context_verifies_the_server_and_its_name_by_default(pki: ThrowawayPKI) -> None:
    context = build_client_context(pki.ca, pki.client.cert, pki.client.key, keys=CLIENT_KEYS)
    assert (context.verify_mode, context.check_hostname) == (ssl.CERT_REQUIRED, True)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    relaxed = build_client_context(pki.ca, check_hostname=False, keys=CLIENT_KEYS)
    assert (relaxed.verify_mode, relaxed.check_hostname) == (ssl.CERT_REQUIRED, False)


def _encrypted_key(pki: ThrowawayPKI, tmp_path: Path) -> Path:
    path = tmp_path / "encrypted.key"
    subprocess.run(
        [OPENSSL, "pkey", "-in", str(pki.server.key), "-aes256", "-passout", "pass:secret", "-out", str(path)],
        check=True, capture_output=True,
    )
    return path


@pytest.mark.parametrize(
    ("which", "message"),
    [
        ("missing_certificate", r'"tls.certificate": cannot read .*nowhere.pem'),
        ("key_is_a_certificate", r'"tls.private_key": .* holds no PEM private key'),
        ("certificate_is_a_key", r'"tls.certificate": .* holds no PEM certificate'),
        ("encrypted_key", r'"tls.private_key": .* protected by a passphrase'),
        ("key_of_another_certificate", r'"tls.private_key": .* does not load with "tls.certificate"'),
        ("ca_is_garbage", r'"tls.ca_file": .* holds no PEM certificate'),
        ("missing_ca", r'"tls.ca_file": cannot read'),
    ],
)
def test_bad_server_files_name_their_key(pki: ThrowawayPKI, tmp_path: Path, which: str, message: str) -> None:
    cert, key, ca = pki.server.cert, pki.server.key, pki.ca
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    if which == "missing_certificate":
        cert = tmp_path / "nowhere.pem"
    elif which == "key_is_a_certificate":
        key = pki.server.cert
    elif which == "certificate_is_a_key":
        cert = pki.server.key
    elif which == "encrypted_key":
        key = _encrypted_key(pki, tmp_path)
    elif which == "key_of_another_certificate":
        key = pki.client.key
    elif which == "ca_is_garbage":
        ca = garbage
    elif which == "missing_ca":
        ca = tmp_path / "no-ca.pem"
    with pytest.raises(ConfigError, match=message):
        build_server_context(cert, key, ca, keys=SERVER_KEYS)


def test_bad_client_files_name_the_destination_key(pki: ThrowawayPKI, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r'"pacs.main.tls_ca_file": cannot read'):
        build_client_context(tmp_path / "none.pem", keys=CLIENT_KEYS)
    with pytest.raises(ConfigError, match=r'"pacs.main.tls_private_key"'):
        build_client_context(pki.ca, pki.client.cert, pki.other_client.key, keys=CLIENT_KEYS)


def _handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> tuple[dict | None, str | None, BaseException | None]:
    """One loopback handshake; returns the server's view (peer cert, version, error)."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    seen: dict[str, object] = {}

    def serve() -> None:
        conn, _ = listener.accept()
        conn.settimeout(10)
        try:
            with server.wrap_socket(conn, server_side=True) as tls:
                seen["cert"], seen["version"] = tls.getpeercert(), tls.version()
                tls.recv(1)
        except (OSError, ValueError) as exc:
            seen["error"] = exc

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with client.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(b"x")
                tls.recv(1)  # TLS 1.3: a refused client certificate shows here
    except (OSError, ValueError):
        pass
    thread.join(10)
    listener.close()
    return seen.get("cert"), seen.get("version"), seen.get("error")  # type: ignore[return-value]


def test_mutual_tls_handshake_gives_the_client_subject(pki: ThrowawayPKI) -> None:
    server = build_server_context(pki.server.cert, pki.server.key, pki.ca)
    client = build_client_context(pki.ca, pki.client.cert, pki.client.key, keys=CLIENT_KEYS)
    cert, version, error = _handshake(server, client)
    assert error is None and version in ("TLSv1.2", "TLSv1.3")
    assert subject_from_peercert(cert) == parse_subject("k", "CN=CR-ROOM-1,O=Test Hospital")


def test_client_of_an_untrusted_ca_fails_the_handshake_with_a_short_reason(pki: ThrowawayPKI) -> None:
    server = build_server_context(pki.server.cert, pki.server.key, pki.ca)
    client = build_client_context(pki.ca, pki.rogue_client.cert, pki.rogue_client.key, keys=CLIENT_KEYS)
    _, _, error = _handshake(server, client)
    assert isinstance(error, ssl.SSLError)
    assert handshake_failure_reason(error).startswith("CERTIFICATE_VERIFY_FAILED")


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_tls11_client_is_refused(pki: ThrowawayPKI) -> None:
    server = build_server_context(pki.server.cert, pki.server.key)
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname, old.verify_mode = False, ssl.CERT_NONE
    old.set_ciphers("ALL:@SECLEVEL=0")
    old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
    _, version, error = _handshake(server, old)
    assert version is None and isinstance(error, ssl.SSLError)


def test_plaintext_bytes_on_a_tls_port_are_named_as_such() -> None:
    error = ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number")
    error.reason = "WRONG_VERSION_NUMBER"
    assert "plaintext DICOM client" in handshake_failure_reason(error)
    assert handshake_failure_reason(TimeoutError()) == "no TLS handshake in time"


# --- subjects ------------------------------------------------------------------------------


def test_subjects_compare_regardless_of_order_spacing_and_type_case() -> None:
    assert parse_subject("k", "CN=CR-ROOM-1,O=Test Hospital,C=DE") == parse_subject(
        "k", "c=DE, o = Test Hospital ,cn=CR-ROOM-1"
    )
    assert parse_subject("k", "CN=CR-ROOM-1") != parse_subject("k", "CN=cr-room-1")  # values are exact
    assert parse_subject("k", "E=a@b.example") == parse_subject("k", "emailAddress=a@b.example")


def test_escaped_comma_stays_in_the_value() -> None:
    subject = parse_subject("k", r"O=Hospital\, Radiology,CN=X")
    assert ("O", "Hospital, Radiology") in subject
    assert parse_subject("k", format_subject(subject)) == subject


@pytest.mark.parametrize("bad", ["", "CN", "CN=", "XX=1", "CN=a,,O=b", 7])
def test_bad_subjects_name_the_key(bad: object) -> None:
    with pytest.raises(ConfigError, match=r'"allowed_callers.certificate_subject"'):
        parse_subject("allowed_callers.certificate_subject", bad)


def test_peercert_without_subject_is_none() -> None:
    assert subject_from_peercert({}) is None
    assert subject_from_peercert(None) is None
    cert = {"subject": ((("countryName", "DE"),), (("organizationName", "H"),), (("commonName", "A"),))}
    assert format_subject(subject_from_peercert(cert) or ()) == "C=DE,CN=A,O=H"

"""Throwaway X.509 certificates for TLS tests, made with the ``openssl`` command line.

A test CA signs a server certificate (``CN=localhost``, SAN ``localhost`` and ``127.0.0.1``)
and client certificates; a second, unrelated CA signs a "rogue" client that no node trusts.
RSA 2048 keys, valid two days, unencrypted: for tests only.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"

CLIENT_SUBJECT = "/O=Test Hospital/CN=CR-ROOM-1"
"""Subject of :attr:`ThrowawayPKI.client_cert` in OpenSSL's form; RFC 4514: ``CN=CR-ROOM-1,O=Test Hospital``."""
OTHER_SUBJECT = "/O=Test Hospital/CN=OTHER-ROOM"


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its key, PEM files."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class ThrowawayPKI:
    """Everything a TLS test needs, under one folder."""

    ca: Path
    """The test CA's certificate (trusted by node and peers)."""
    server: KeyPair
    client: KeyPair
    """``CN=CR-ROOM-1,O=Test Hospital``, signed by :attr:`ca`."""
    other_client: KeyPair
    """``CN=OTHER-ROOM,O=Test Hospital``, signed by :attr:`ca`."""
    rogue_ca: Path
    rogue_client: KeyPair
    """Signed by :attr:`rogue_ca`, which nobody trusts."""


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run([OPENSSL, *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _make_ca(folder: Path, name: str) -> tuple[Path, Path]:
    key, cert = folder / f"{name}.key", folder / f"{name}.pem"
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
        "-subj", f"/O=Test Hospital/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=folder,
    )
    return cert, key


def _make_leaf(folder: Path, name: str, subject: str, ca: tuple[Path, Path], san: str) -> KeyPair:
    key, csr, cert, ext = (folder / f"{name}{suffix}" for suffix in (".key", ".csr", ".pem", ".ext"))
    ext.write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth,clientAuth\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
        f"subjectAltName={san}\n"
    )
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", subject, cwd=folder)
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial",
        "-out", str(cert), "-days", "2", "-extfile", str(ext), cwd=folder,
    )
    return KeyPair(cert, key)


def make_test_pki(folder: Path) -> ThrowawayPKI:
    """Create the CA, server and client certificates in ``folder`` (about 2 s)."""
    folder.mkdir(parents=True, exist_ok=True)
    ca = _make_ca(folder, "test-ca")
    rogue = _make_ca(folder, "rogue-ca")
    return ThrowawayPKI(
        ca=ca[0],
        server=_make_leaf(folder, "server", "/O=Test Hospital/CN=localhost", ca, "DNS:localhost,IP:127.0.0.1"),
        client=_make_leaf(folder, "client", CLIENT_SUBJECT, ca, "DNS:cr-room-1"),
        other_client=_make_leaf(folder, "other", OTHER_SUBJECT, ca, "DNS:other-room"),
        rogue_ca=rogue[0],
        rogue_client=_make_leaf(folder, "rogue", CLIENT_SUBJECT, rogue, "DNS:cr-room-1"),
    )

"""A real Orthanc on free loopback ports, for tests that need a PACS.

Started as a plain process with its own config and database in a temporary folder,
accepting C-STORE (and C-FIND, C-GET, C-MOVE) only from the calling AE titles it is given,
and stopped by PID; ``move_destinations`` names the AE titles and ports it may C-MOVE to.
With :class:`OrthancTLS` its DICOM port speaks DICOM TLS only (``DicomTlsEnabled``); with
``dicomweb=True`` it loads Debian's ``orthanc-dicomweb`` plugin (QIDO/WADO-RS under
``/dicom-web/``, WADO-URI at ``/wado``), which the OHIF viewer checks (testkit/viewer.py) read.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from testkit.peers import free_port, stop_process

ORTHANC_AE_TITLE = "ORTHANC"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
DICOMWEB_ROOT = "/dicom-web/"
WADO_URI_ROOT = "/wado"


def orthanc_binary() -> str | None:
    """Path of the Orthanc executable, or ``None`` when it is not installed."""
    return shutil.which("Orthanc") or next(
        (p for p in ("/usr/sbin/Orthanc", "/usr/bin/Orthanc") if Path(p).exists()), None
    )


def dicomweb_plugin() -> Path | None:
    """Path of the DICOMweb plugin (Debian ``orthanc-dicomweb``), or ``None`` when missing."""
    return DICOMWEB_PLUGIN if DICOMWEB_PLUGIN.exists() else None


@dataclass(frozen=True)
class OrthancTLS:
    """Orthanc's DICOM TLS settings (PEM files).

    ``trusted_certificates`` is required by Orthanc even when no client certificate is;
    ``remote_certificate_required`` makes it mutual TLS.
    """

    certificate: Path
    private_key: Path
    trusted_certificates: Path
    remote_certificate_required: bool = True


class OrthancServer:
    """Orthanc listening on ``127.0.0.1:dicom_port`` (AE ``ORTHANC``) and ``http_port``.

    ``dicomweb=True`` adds the DICOMweb plugin with full study/series metadata, as OHIF needs.
    """

    def __init__(
        self,
        workdir: Path,
        calling_ae_titles: tuple[str, ...],
        tls: OrthancTLS | None = None,
        *,
        dicomweb: bool = False,
        move_destinations: dict[str, int] | None = None,
    ) -> None:
        self.workdir = workdir
        self.move_destinations = dict(move_destinations or {})
        self.calling_ae_titles = calling_ae_titles
        self.tls = tls
        self.dicomweb = dicomweb
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> OrthancServer:
        # free_port() can race with another process; only the HTTP port is safe to change
        # (callers may have given the DICOM port to a node already).
        for _ in range(3):
            try:
                return self._start(timeout)
            except RuntimeError as exc:
                if "HTTP server is privileged or already in use" not in str(exc):
                    raise
                self.http_port = free_port()
        return self._start(timeout)

    def _start(self, timeout: float) -> OrthancServer:
        binary = orthanc_binary()
        if binary is None:
            raise RuntimeError("Orthanc is not installed: run scripts/setup.sh")
        plugins: list[str] = []
        if self.dicomweb:
            plugin = dicomweb_plugin()
            if plugin is None:
                raise RuntimeError(f"{DICOMWEB_PLUGIN} missing: run scripts/setup.sh (orthanc-dicomweb)")
            plugins.append(str(plugin))
        db = self.workdir / "db"
        db.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "TEST-PACS",
            "StorageDirectory": str(db),
            "IndexDirectory": str(db),
            "Plugins": plugins,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomAet": ORTHANC_AE_TITLE,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": True,
            "DicomAlwaysAllowEcho": False,
            "DicomAlwaysAllowStore": False,
            "DicomCheckModalityHost": False,
            # Known modalities may C-FIND, C-GET and C-MOVE (Orthanc's per-modality Allow* default to true);
            # a C-MOVE destination needs its real port.
            "DicomModalities": {
                ae.lower(): {"AET": ae, "Host": "127.0.0.1", "Port": self.move_destinations.get(ae, 104)}
                for ae in (*self.calling_ae_titles, *(a for a in self.move_destinations if a not in self.calling_ae_titles))
            },
            "SaveJobs": False,
            "ExecuteLuaEnabled": False,
        }
        if self.dicomweb:
            config["DicomWeb"] = {
                "Enable": True,
                "Root": DICOMWEB_ROOT,
                "EnableWado": True,
                "WadoRoot": WADO_URI_ROOT,
                "StudiesMetadata": "Full",
                "SeriesMetadata": "Full",
            }
        if self.tls is not None:
            config |= {
                "DicomTlsEnabled": True,
                "DicomTlsCertificate": str(self.tls.certificate),
                "DicomTlsPrivateKey": str(self.tls.private_key),
                "DicomTlsTrustedCertificates": str(self.tls.trusted_certificates),
                "DicomTlsRemoteCertificateRequired": self.tls.remote_certificate_required,
            }
        config_path = self.workdir / "orthanc.json"
        config_path.write_text(json.dumps(config, indent=2))
        log = open(self.workdir / "orthanc.log", "ab")
        # Without TCP_NODELAY, Orthanc (DCMTK inside) waits ~50 ms per DIMSE message.
        self.process = subprocess.Popen(
            [binary, str(config_path)], stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "TCP_NODELAY": "1"},
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.process.returncode}:\n{self.log()}")
            try:
                self.get("/system")
                return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer within {timeout} s:\n{self.log()}")

    def log(self) -> str:
        path = self.workdir / "orthanc.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def get(self, route: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{route}", timeout=10) as response:
            return json.load(response)

    def post(self, route: str, body: Any) -> Any:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}{route}", data=json.dumps(body).encode(), method="POST"
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)

    def upload(self, dicom_file: bytes) -> Any:
        """Store one Part 10 file through the REST API (``POST /instances``)."""
        request = urllib.request.Request(f"http://127.0.0.1:{self.http_port}/instances", data=dicom_file, method="POST")
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)

    def find_instances(self, sop_instance_uid: str) -> list[str]:
        """Orthanc IDs of the stored instances with this SOP Instance UID."""
        return self.post("/tools/find", {"Level": "Instance", "Query": {"SOPInstanceUID": sop_instance_uid}})

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM and wait: Orthanc takes 4-5 s to exit and free its ports."""
        stop_process(self.process, timeout)


@contextmanager
def running_orthanc(folder: Path, calling_ae_titles: tuple[str, ...]) -> Iterator[OrthancServer]:
    """A started Orthanc that knows ``calling_ae_titles``, stopped on exit; fails the test when not installed."""
    if orthanc_binary() is None:
        import pytest  # only tests call this

        pytest.fail("Orthanc is not installed: run scripts/setup.sh")
    server = OrthancServer(folder, calling_ae_titles=calling_ae_titles).start()
    try:
        yield server
    finally:
        server.stop()


def c_get_instances(
    server: OrthancServer, calling_ae_title: str, references: list[tuple[str, str, str, str]], timeout: float = 30
) -> set[str]:
    """C-GET each ``(study, series, SOP instance, SOP class)`` from Orthanc at IMAGE level (pynetdicom).

    Returns the SOP Instance UIDs Orthanc sent back on the association (C-STORE sub-operations).
    ``calling_ae_title`` must be one of the server's ``calling_ae_titles``.
    """
    from pynetdicom import AE, build_role, evt
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet  # type: ignore[attr-defined]

    received: set[str] = set()

    def handle_store(event: evt.Event) -> int:
        received.add(str(event.dataset.SOPInstanceUID))
        return 0x0000

    ae = AE(ae_title=calling_ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    sop_classes = sorted({reference[3] for reference in references})
    for sop_class in sop_classes:
        ae.add_requested_context(sop_class)
    # The retrieved instances come back as C-STOREs on this association: we are their SCP.
    assoc = ae.associate(
        "127.0.0.1", server.dicom_port, ae_title=ORTHANC_AE_TITLE,
        ext_neg=[build_role(sop_class, scp_role=True) for sop_class in sop_classes],
        evt_handlers=[(evt.EVT_C_STORE, handle_store)],
    )
    if not assoc.is_established:
        raise RuntimeError(f"Orthanc refused the C-GET association of {calling_ae_title}")
    try:
        for study, series, instance, _ in references:
            query = Dataset()
            query.QueryRetrieveLevel = "IMAGE"
            query.StudyInstanceUID, query.SeriesInstanceUID, query.SOPInstanceUID = study, series, instance
            for _status, _ in assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet):
                pass
    finally:
        assoc.release()
    return received

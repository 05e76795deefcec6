"""DICOM TLS with real peers: DCMTK into the node's TLS port, the node's reports into Orthanc over TLS."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_node.spool import JobState, Spool
from testkit.dicom_factory import make_dx, save
from testkit.orthanc import ORTHANC_AE_TITLE, OrthancServer, OrthancTLS, orthanc_binary
from testkit.peers import NodeProcess, dcmtk, dcmtk_env, free_port, wait_for
from testkit.sr import job_in_outbox
from testkit.tls import ThrowawayPKI, make_test_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> ThrowawayPKI:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def dx_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pixels = (np.arange(64 * 64).reshape(64, 64) % 4096).astype(np.uint16)
    return save(make_dx(pixels, 12), tmp_path_factory.mktemp("dx") / "dx.dcm")


def _tls_config(tmp_path: Path, pki: ThrowawayPKI, *, mutual: bool, extra: str = "") -> tuple[Path, int]:
    port = free_port()
    path = tmp_path / "node.toml"
    path.write_text(
        f'[tls]\nenabled = true\nport = {port}\ncertificate = "{pki.server.cert}"\nprivate_key = "{pki.server.key}"\n'
        + (f'ca_file = "{pki.ca}"\n' if mutual else "")
        + extra
    )
    return path, port


def _dcmtk(tool: str, port: int, *tls: str, calling_ae: str = "MODALITY", files: tuple[Path, ...] = ()) -> str:
    """Run an SCU with the given TLS options; return its output, with the exit code first."""
    result = subprocess.run(
        [dcmtk(tool), "-v", "-to", "10", *tls, "-aet", calling_ae, "-aec", "CXR_AI", "127.0.0.1", str(port),
         *map(str, files)],
        env=dcmtk_env(), capture_output=True, text=True, timeout=60,
    )
    return f"rc={result.returncode}\n{result.stdout}{result.stderr}"


def _with_cert(pki: ThrowawayPKI, which: str = "client") -> tuple[str, ...]:
    pair = getattr(pki, which)
    return ("+tls", str(pair.key), str(pair.cert), "+cf", str(pki.ca))


def _anonymous(pki: ThrowawayPKI) -> tuple[str, ...]:
    return ("+tla", "+cf", str(pki.ca))  # TLS, no client certificate, server verified


def _stored(node: NodeProcess, source: Path) -> Path:
    return node.spool / "instances" / f"{pydicom.dcmread(source, stop_before_pixels=True).SOPInstanceUID}.dcm"


def _no_traceback(node: NodeProcess) -> None:
    assert "Traceback" not in node.log(), node.log()


def test_echoscu_and_storescu_over_tls_without_client_certificates(start_node, tmp_path, pki, dx_file) -> None:
    config, tls_port = _tls_config(tmp_path, pki, mutual=False)
    node = start_node(None, "--config", str(config))
    assert "Received Echo Response (Success)" in _dcmtk("echoscu", tls_port, *_anonymous(pki))
    output = _dcmtk("storescu", tls_port, *_anonymous(pki), files=(dx_file,))
    assert output.startswith("rc=0") and "Received Store Response (Success)" in output, output
    assert pydicom.dcmread(_stored(node, dx_file)).PixelData == pydicom.dcmread(dx_file).PixelData
    assert "tls=TLSv1." in node.log()
    # The plaintext port is still there, beside the TLS one.
    assert "Received Echo Response (Success)" in _dcmtk("echoscu", node.port)
    _no_traceback(node)


def test_mutual_tls_stores_with_a_client_certificate_and_refuses_one_without(start_node, tmp_path, pki, dx_file) -> None:
    config, tls_port = _tls_config(tmp_path, pki, mutual=True)
    node = start_node(None, "--config", str(config))
    output = _dcmtk("storescu", tls_port, *_with_cert(pki), files=(dx_file,))
    assert "Received Store Response (Success)" in output, output
    assert _stored(node, dx_file).is_file()
    assert "certificate_subject=CN=CR-ROOM-1,O=Test Hospital" in node.log()

    refused = _dcmtk("echoscu", tls_port, *_anonymous(pki))
    assert not refused.startswith("rc=0") and "Received Echo Response" not in refused, refused
    rogue = ("+tls", str(pki.rogue_client.key), str(pki.rogue_client.cert), "+cf", str(pki.ca))
    assert "Received Echo Response" not in _dcmtk("echoscu", tls_port, *rogue)
    time.sleep(0.5)
    failures = [line for line in node.log().splitlines() if "TLS handshake failed" in line]
    assert len(failures) == 2, node.log()
    assert "PEER_DID_NOT_RETURN_A_CERTIFICATE" in failures[0] or "CERTIFICATE_REQUIRED" in failures[0]
    assert "CERTIFICATE_VERIFY_FAILED" in failures[1]
    _no_traceback(node)


def test_certificate_subject_allow_list(start_node, tmp_path, pki) -> None:
    allow = '[[allowed_callers]]\nae_title = "MODALITY"\ncertificate_subject = "O=Test Hospital, CN=CR-ROOM-1"\n'
    config, tls_port = _tls_config(tmp_path, pki, mutual=True, extra=allow)
    node = start_node(None, "--config", str(config))
    assert "Received Echo Response (Success)" in _dcmtk("echoscu", tls_port, *_with_cert(pki))
    other = _dcmtk("echoscu", tls_port, *_with_cert(pki, "other_client"))
    assert "Calling AE Title Not Recognized" in other, other
    # The listed AE title over plaintext has no certificate at all: refused too.
    assert "Calling AE Title Not Recognized" in _dcmtk("echoscu", node.port)
    log = node.log()
    assert "reason=certificate subject not allowed certificate_subject=CN=OTHER-ROOM,O=Test Hospital" in log
    assert "reason=no client certificate" in log
    _no_traceback(node)


def test_plaintext_client_on_the_tls_port_is_refused_and_the_node_stays_up(start_node, tmp_path, pki) -> None:
    config, tls_port = _tls_config(tmp_path, pki, mutual=False)
    node = start_node(None, "--config", str(config))
    output = _dcmtk("echoscu", tls_port)
    assert "Received Echo Response" not in output, output
    assert "Received Echo Response (Success)" in _dcmtk("echoscu", tls_port, *_anonymous(pki))
    assert node.process is not None and node.process.poll() is None
    lines = [line for line in node.log().splitlines() if "TLS handshake failed" in line]
    assert len(lines) == 1 and "does not speak TLS" in lines[0], node.log()
    _no_traceback(node)


def test_a_silent_connection_neither_holds_up_other_tls_clients_nor_shutdown(start_node, tmp_path, pki) -> None:
    config, tls_port = _tls_config(tmp_path, pki, mutual=False)
    node = start_node(None, "--config", str(config))
    with socket.create_connection(("127.0.0.1", tls_port)), socket.create_connection(("127.0.0.1", tls_port)):
        started = time.monotonic()
        assert "Received Echo Response (Success)" in _dcmtk("echoscu", tls_port, *_anonymous(pki))
        assert time.monotonic() - started < 10  # pynetdicom alone would handshake in its accept loop
        started = time.monotonic()
        assert node.terminate(timeout=30) == 0
        assert time.monotonic() - started < 15, node.log()  # the handshakes in wait do not delay the exit


def test_tls_only_closes_the_plaintext_port(start_node, tmp_path, pki) -> None:
    config, tls_port = _tls_config(tmp_path, pki, mutual=False, extra="only = true\n")
    node = start_node(None, "--config", str(config))
    assert "Received Echo Response (Success)" in _dcmtk("echoscu", tls_port, *_anonymous(pki))
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", node.port), timeout=5).close()
    assert "port=off" in node.log()


@pytest.mark.parametrize(
    ("tls", "message"),
    [
        ('certificate = "{missing}"\nprivate_key = "{key}"\n', '"tls.certificate": cannot read'),
        ('certificate = "{cert}"\nprivate_key = "{other_key}"\n', '"tls.private_key"'),
        ('certificate = "{cert}"\nprivate_key = "{key}"\nca_file = "{missing}"\n', '"tls.ca_file": cannot read'),
    ],
)
def test_bad_tls_files_stop_start_up_with_exit_2(tmp_path: Path, pki: ThrowawayPKI, tls: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    files = {"missing": tmp_path / "nowhere.pem", "key": pki.server.key, "cert": pki.server.cert,
             "other_key": pki.client.key}
    path.write_text("[tls]\nenabled = true\n" + tls.format(**files))
    result = subprocess.run(
        [sys.executable, "-m", "dicom_node", "serve", "--config", str(path), "--spool", str(tmp_path / "s"),
         "--no-analysis", "--port", str(free_port())],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr


def test_bad_destination_tls_file_stops_start_up_with_exit_2(tmp_path: Path, pki: ThrowawayPKI) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        '[[destinations]]\nname = "pacs"\nae_title = "PACS"\nhost = "127.0.0.1"\nport = 2762\ntls = true\n'
        f'tls_ca_file = "{pki.server.key}"\n'
    )
    result = subprocess.run(
        [sys.executable, "-m", "dicom_node", "serve", "--config", str(path), "--spool", str(tmp_path / "s"),
         "--no-analysis", "--port", str(free_port())],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert '"pacs.pacs.tls_ca_file"' in result.stderr and "holds no PEM certificate" in result.stderr


# --- the node's reports to Orthanc over TLS ------------------------------------------------------


@pytest.fixture
def tls_orthanc(tmp_path: Path, pki: ThrowawayPKI) -> Iterator[OrthancServer]:
    if orthanc_binary() is None:
        pytest.fail("Orthanc is not installed: run scripts/setup.sh")
    server = OrthancServer(
        tmp_path / "orthanc", calling_ae_titles=("CXR_AI",), tls=OrthancTLS(pki.server.cert, pki.server.key, pki.ca)
    ).start()
    yield server
    server.stop()




def _destination(orthanc: OrthancServer, name: str, *tls_lines: str) -> str:
    return (
        f'[[destinations]]\nname = "{name}"\nae_title = "{ORTHANC_AE_TITLE}"\nhost = "127.0.0.1"\n'
        f"port = {orthanc.dicom_port}\ntls = true\n" + "".join(f"{line}\n" for line in tls_lines)
    )


def test_node_delivers_a_report_to_orthanc_over_mutual_tls(start_node, tmp_path, pki, tls_orthanc) -> None:
    spool_dir = tmp_path / "spool"
    job = job_in_outbox(Spool(spool_dir), ["orthanc_tls", "untrusted"])
    report_uid = str(pydicom.dcmread(Spool(spool_dir).result_path(job), stop_before_pixels=True).SOPInstanceUID)
    config = tmp_path / "node.toml"
    config.write_text(
        "[delivery]\nretry_initial_seconds = 60\nretry_max_seconds = 60\n"
        + _destination(tls_orthanc, "orthanc_tls", f'tls_ca_file = "{pki.ca}"', f'tls_certificate = "{pki.client.cert}"',
                       f'tls_private_key = "{pki.client.key}"', 'tls_server_name = "localhost"')
        # Trusts the wrong CA: Orthanc's certificate does not verify.
        + _destination(tls_orthanc, "untrusted", f'tls_ca_file = "{pki.rogue_ca}"', f'tls_certificate = "{pki.client.cert}"',
                       f'tls_private_key = "{pki.client.key}"')
    )
    node = start_node(spool_dir, "--config", str(config))
    assert wait_for(lambda: tls_orthanc.find_instances(report_uid) != []), node.log() + tls_orthanc.log()
    assert wait_for(lambda: "not delivered to untrusted" in node.log()), node.log()
    job_now = Spool(spool_dir).find_job(job.job_id)
    assert job_now is not None and job_now.state is JobState.OUTBOX  # one destination still to go
    delivered = {d.destination: d.delivered for d in job_now.deliveries}
    assert delivered == {"orthanc_tls": True, "untrusted": False}
    failure = [line for line in node.log().splitlines() if "not delivered to untrusted" in line]
    assert len(failure) == 1 and "TLS handshake failed: CERTIFICATE_VERIFY_FAILED" in failure[0], node.log()
    _no_traceback(node)

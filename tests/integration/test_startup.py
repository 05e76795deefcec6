"""Start-up: the node accepts and stores while its models load, and says what it loads and how long it took."""

from __future__ import annotations

import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pydicom

from dicom_node.spool import JobState, Spool
from testkit.peers import NodeProcess, dcmtk, dcmtk_env, free_port, wait_for
from testkit.sr import CANON_DX, DICOM_DIR


def _readyz(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read().decode()


def test_instances_sent_while_the_models_load_are_stored_and_then_analysed(tmp_path: Path) -> None:
    source = DICOM_DIR / CANON_DX
    metrics_port = free_port()
    node = NodeProcess(
        tmp_path / "spool", tmp_path / "node.log", ("--analysis", "--device", "cpu", "--metrics-port", str(metrics_port))
    )
    try:
        _send_while_loading(node, source, metrics_port, tmp_path)
    finally:
        node.kill()


def _send_while_loading(node: NodeProcess, source: Path, metrics_port: int, tmp_path: Path) -> None:
    node.start(until="listening:")

    sent = subprocess.run(  # right after "listening:", while torch and the weights are still loading
        [dcmtk("dcmsend"), "-dn", "-aet", "PORTABLE_DX1", "-aec", "CXR_AI", "127.0.0.1", str(node.port), str(source)],
        capture_output=True, text=True, env=dcmtk_env(), timeout=60,
    )
    status_while_loading = _readyz(metrics_port)

    assert sent.returncode == 0, sent.stderr
    assert wait_for(lambda: "ready: analysing" in node.log(), 120), node.log()
    log = node.log()
    assert log.index("C-STORE: calling_ae=PORTABLE_DX1") < log.index("ready: analysing"), log
    assert "loading the models from" in log and "loaded_in=" in log
    assert status_while_loading == (503, "models loading (receiving meanwhile)\n")
    uid = str(pydicom.dcmread(source, stop_before_pixels=True).SOPInstanceUID)
    spool = Spool(tmp_path / "spool")
    assert wait_for(lambda: _state(spool, uid) is JobState.OUTBOX, 120), node.log()
    assert _readyz(metrics_port) == (200, "ready\n")


def _state(spool: Spool, uid: str) -> JobState | None:
    job = spool.find_job(uid)
    return None if job is None else job.state

"""The outbox in the node: a report waiting before a restart reaches a late Orthanc; ``status`` and ``resend``."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from dicom_node.spool import JobState, Spool
from testkit.orthanc import ORTHANC_AE_TITLE, OrthancServer
from testkit.peers import wait_for
from testkit.sr import job_in_outbox


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[OrthancServer]:
    server = OrthancServer(tmp_path / "orthanc", calling_ae_titles=("CXR_AI",))
    yield server
    server.stop()


def _node_config(tmp_path: Path, orthanc: OrthancServer) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(
        "[delivery]\nretry_initial_seconds = 1\nretry_max_seconds = 2\n"
        f'[[destinations]]\nname = "orthanc"\nae_title = "{ORTHANC_AE_TITLE}"\n'
        f'host = "127.0.0.1"\nport = {orthanc.dicom_port}\n'
    )
    return path




def _state(spool: Spool, job_id: str) -> JobState:
    job = spool.find_job(job_id)
    assert job is not None, f"job {job_id} is not in the spool"
    return job.state


def test_report_waiting_before_a_restart_reaches_orthanc_started_late(start_node, tmp_path: Path, orthanc) -> None:
    spool_dir = tmp_path / "spool"
    job = job_in_outbox(Spool(spool_dir), ["orthanc"])
    report_uid = str(pydicom.dcmread(Spool(spool_dir).result_path(job), stop_before_pixels=True).SOPInstanceUID)
    node = start_node(spool_dir, "--config", str(_node_config(tmp_path, orthanc)))
    assert wait_for(lambda: "delivered=False" in node.log(), 30), node.log()  # PACS down: it retries
    orthanc.start()
    assert wait_for(lambda: orthanc.find_instances(report_uid) != []), node.log()
    assert wait_for(lambda: _state(Spool(spool_dir), job.job_id) is JobState.SENT)
    assert len(orthanc.find_instances(report_uid)) == 1


def test_status_lists_failed_reports_and_resend_requeues_them(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    job = job_in_outbox(spool, ["main"])
    spool.transition(job, JobState.FAILED, detail="main: gave up after 20 attempts (association rejected)")
    cli = [sys.executable, "-m", "dicom_node"]
    status = subprocess.run([*cli, "status", "--json", "--spool", str(spool.root)], capture_output=True, text=True)
    assert json.loads(status.stdout)["failed"] == [
        {"job": job.job_id, "detail": "main: gave up after 20 attempts (association rejected)"}
    ]
    resend = subprocess.run([*cli, "resend", "--all", "--spool", str(spool.root)], capture_output=True, text=True)
    assert resend.returncode == 0 and f"requeued {job.job_id}" in resend.stdout
    assert _state(spool, job.job_id) is JobState.OUTBOX
    unknown = subprocess.run([*cli, "resend", "1.2.3", "--spool", str(spool.root)], capture_output=True, text=True)
    assert unknown.returncode == 1 and "1.2.3 is not a failed job with a report" in unknown.stderr

"""Retention and the maintenance commands against a running node: the periodic purge after a
real delivery to Orthanc, and ``status``, ``purge`` and ``resend`` beside ``serve``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pydicom

from dicom_node.spool import JobState, Spool
from testkit.orthanc import ORTHANC_AE_TITLE, OrthancServer
from testkit.peers import wait_for
from testkit.shared_data import REPO_ROOT
from testkit.sr import job_in_outbox

CLI = [sys.executable, "-m", "dicom_node"]


def _config(tmp_path: Path, orthanc: OrthancServer, retention: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(
        f"[retention]\n{retention}\n"
        "[delivery]\nretry_initial_seconds = 1\nretry_max_seconds = 2\n"
        f'[[destinations]]\nname = "orthanc"\nae_title = "{ORTHANC_AE_TITLE}"\n'
        f'host = "127.0.0.1"\nport = {orthanc.dicom_port}\n'
    )
    return path


def _audit_records(spool: Path) -> list[dict]:
    return [json.loads(line) for path in sorted((spool / "audit").glob("*.jsonl")) for line in path.read_text().splitlines()]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)


def test_serve_purges_a_delivered_study_and_keeps_what_is_not_delivered(start_node, tmp_path: Path, orthanc_pacs) -> None:
    spool = Spool(tmp_path / "spool")
    delivered = job_in_outbox(spool, ["orthanc"], uid="1.2.826.0.1.3680043.10.9.1")
    waiting = job_in_outbox(spool, ["elsewhere"], uid="1.2.826.0.1.3680043.10.9.2")  # destination not configured
    failed = spool.transition(
        job_in_outbox(spool, ["orthanc"], uid="1.2.826.0.1.3680043.10.9.3"), JobState.FAILED, detail="gave up"
    )
    report_uid = str(pydicom.dcmread(spool.result_path(delivered), stop_before_pixels=True).SOPInstanceUID)
    config = _config(
        tmp_path, orthanc_pacs,
        "instances_days = 0\nresults_days = 0\nrecords_days = 1\nhigh_water_percent = 0\ninterval_minutes = 0.01",
    )

    node = start_node(spool.root, "--config", str(config))

    assert wait_for(lambda: orthanc_pacs.find_instances(report_uid) != [], 30), node.log()
    assert wait_for(lambda: not spool.result_path(delivered).exists(), 30), node.log()
    assert not spool.instance_path(delivered.job_id).exists()
    job = spool.find_job(delivered.job_id)
    assert job is not None and job.state is JobState.SENT, "the record outlives the files (records_days = 1)"
    for kept in (waiting, failed):
        assert spool.instance_path(kept.job_id).exists() and spool.result_path(kept).exists()
    purge_lines = [line for line in node.log().splitlines() if "purge: deleted" in line]
    assert purge_lines and "instances=1 results=1 records=0" in purge_lines[0], node.log()
    assert not any(uid in line for line in purge_lines for uid in (delivered.job_id, report_uid))
    purges = [r for r in _audit_records(spool.root) if r["event"] == "purge"]
    assert purges and purges[0]["instances"] == 1 and purges[0]["detail"] == "retention policy (serve)"
    assert purges[0]["atna_action"] == "D"

    # Beside the running node: status reads, purge finds the node's work done, resend requeues.
    status = json.loads(_cli("status", "--json", "--config", str(config), "--spool", str(spool.root)).stdout)
    assert status["jobs"]["sent"] == 1 and status["jobs"]["failed"] == 1
    assert status["storage"]["spool_bytes"] > 0 and status["storage"]["free_bytes"] > 0
    assert status["retention"]["purge_would_delete"]["bytes"] == 0
    dry = _cli("purge", "--dry-run", "--json", "--config", str(config), "--spool", str(spool.root))
    assert dry.returncode == 0 and json.loads(dry.stdout)["bytes"] == 0
    resend = _cli("resend", "--all", "--config", str(config), "--spool", str(spool.root))
    assert resend.returncode == 0 and f"requeued {failed.job_id}" in resend.stdout
    assert wait_for(lambda: (spool.find_job(failed.job_id) or failed).state is JobState.SENT, 30), node.log()
    # Delivered now, so the running node's next purge takes its files too.
    assert wait_for(lambda: not spool.instance_path(failed.job_id).exists(), 30), node.log()
    assert spool.instance_path(waiting.job_id).exists()


def test_purge_on_demand_beside_serve_with_retention_off_in_serve(start_node, tmp_path: Path, orthanc_pacs) -> None:
    spool = Spool(tmp_path / "spool")
    delivered = job_in_outbox(spool, ["orthanc"])
    config = _config(
        tmp_path, orthanc_pacs, "enabled = false\ninstances_days = 0\nresults_days = 0\nrecords_days = 0\nhigh_water_percent = 0"
    )
    node = start_node(spool.root, "--config", str(config))
    assert wait_for(lambda: (spool.find_job(delivered.job_id) or delivered).state is JobState.SENT, 30), node.log()
    assert spool.instance_path(delivered.job_id).exists(), "serve deletes nothing with retention.enabled = false"

    dry = _cli("purge", "--dry-run", "--config", str(config), "--spool", str(spool.root))
    assert dry.returncode == 0 and dry.stdout.startswith("would delete 1 instances, 1 result files, 1 job records")
    assert spool.instance_path(delivered.job_id).exists()
    done = _cli("purge", "--json", "--config", str(config), "--spool", str(spool.root))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) | {"bytes": 0} == {
        "dry_run": False, "instances": 1, "results": 1, "records": 1, "bytes": 0, "jobs_by_age": 1, "jobs_by_disk": 0,
        "already_gone": 0,
    }
    assert spool.find_job(delivered.job_id) is None and not spool.instance_path(delivered.job_id).exists()
    purges = [r for r in _audit_records(spool.root) if r["event"] == "purge"]
    assert [(r["detail"], r["records"]) for r in purges] == [("cxr-node purge", 1)], "a dry run is not audited"
    assert node.process is not None and node.process.poll() is None, "the node goes on"

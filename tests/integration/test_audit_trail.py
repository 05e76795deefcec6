"""The audit trail of a running node: one full study from the modality to Orthanc, rejected
associations, refusals at the network edge, and application start and stop.

One node (with its models, an allow-list and Orthanc as the PACS) serves the first three
tests; the records are read from the files as a SIEM would, line by line.
"""

from __future__ import annotations

import json
import re
import subprocess
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest

from dicom_node.audit import parse_audit_file_name
from dicom_node.spool import Spool
from testkit.orthanc import ORTHANC_AE_TITLE, OrthancServer, orthanc_binary
from testkit.peers import NodeProcess, dcmtk, dcmtk_env, free_port, wait_for
from testkit.rawdicom import A_ASSOCIATE_RJ, connect, read_pdu

NODE_AE = "CXR_AI"
MODALITY = "PORTABLE_DX1"
EDGE_HOST = "127.0.0.3"  # the refusal test's own loopback address: its per-host count is its own
TIMEOUT = 240  # the model load and one CPU analysis on a loaded 2-core machine


@dataclass
class AuditedNode:
    node: NodeProcess
    orthanc: OrthancServer
    metrics_port: int

    @property
    def audit_dir(self) -> Path:
        return self.node.spool / "audit"

    def records(self) -> list[dict]:
        return audit_records(self.audit_dir)

    def raw(self) -> str:
        return "".join(p.read_text(encoding="utf-8") for p in sorted(self.audit_dir.glob("audit-*.jsonl")))

    def wait(self, what: str, predicate: Callable[[list[dict]], bool], timeout: float = 30) -> list[dict]:
        if not wait_for(lambda: predicate(self.records()), timeout):
            pytest.fail(f"timed out waiting for {what}\n{self.raw()[-4000:]}\n{self.node.log()[-4000:]}")
        return self.records()


def audit_records(directory: Path) -> list[dict]:
    """Every record in the directory's files, oldest file first; each line must be whole JSON."""
    records = []
    files = sorted(directory.glob("audit-*.jsonl"), key=lambda p: parse_audit_file_name(p.name) or ())
    for path in files:
        text = path.read_text(encoding="utf-8")
        assert not text or text.endswith("\n"), f"{path.name} ends in a cut line"
        records += [json.loads(line) for line in text.splitlines()]
    return records


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuditedNode]:
    if orthanc_binary() is None:
        pytest.fail("Orthanc is not installed: run scripts/setup.sh")
    tmp = tmp_path_factory.mktemp("audit")
    orthanc = OrthancServer(tmp / "orthanc", calling_ae_titles=(NODE_AE,)).start()
    metrics_port = free_port()
    config = tmp / "node.toml"
    config.write_text(
        "[network]\nmax_associations_per_host = 2\nassociation_request_timeout = 2\n"
        "[delivery]\nretry_initial_seconds = 1\nretry_max_seconds = 2\n"
        '[inference]\ndevice = "cpu"\nsimilar_k = 0\n'
        "[results]\nrelevance_map = false\nsummary_image = false\n"
        f"[metrics]\nport = {metrics_port}\n"
        f'[[destinations]]\nname = "pacs"\nae_title = "{ORTHANC_AE_TITLE}"\nhost = "127.0.0.1"\nport = {orthanc.dicom_port}\n'
        f'[[allowed_callers]]\nae_title = "{MODALITY}"\n'
        '[[allowed_callers]]\nae_title = "ELSEWHERE"\nhosts = ["10.9.9.9"]\n'
    )
    node = NodeProcess(tmp / "spool", tmp / "node.log", ("--analysis", "--config", str(config)))
    try:
        node.start(timeout=120)
        yield AuditedNode(node, orthanc, metrics_port)
    finally:
        node.kill()
        orthanc.stop()


def _index(records: list[dict], **match: object) -> int:
    hits = [i for i, r in enumerate(records) if all(r.get(k) == v for k, v in match.items())]
    assert len(hits) == 1, f"expected one record {match}, found {len(hits)}:\n" + "\n".join(map(json.dumps, records))
    return hits[0]


def test_one_study_is_audited_from_the_modality_to_the_pacs_without_patient_data(
    audited: AuditedNode, shared_data: Path
) -> None:
    source = shared_data / "dicom" / "pydicom-data" / "RG1_J2KI.dcm"  # a real chest DX, 0.7 MB
    ds = pydicom.dcmread(source, stop_before_pixels=True)
    uid = str(ds.SOPInstanceUID)
    sent = subprocess.run(
        [dcmtk("dcmsend"), "-aet", MODALITY, "-aec", NODE_AE, "127.0.0.1", str(audited.node.port), str(source)],
        capture_output=True, text=True, env=dcmtk_env(), timeout=120,
    )
    assert sent.returncode == 0, sent.stderr
    records = audited.wait(
        "the report delivered", lambda rs: any(r["event"] == "delivery" and r.get("sop_instance_uid") == uid for r in rs),
        timeout=TIMEOUT,
    )

    assert records[0]["event"] == "application" and records[0]["result"] == "start"
    assert records[0]["atna_event_type"] == {"code": "110120", "scheme": "DCM", "meaning": "Application Start"}
    accepted = _index(records, event="association", result="accepted", calling_ae=MODALITY)
    stored = _index(records, event="instance", sop_instance_uid=uid)
    released = _index(records, event="association", result="released", calling_ae=MODALITY)
    analysed = _index(records, event="analysis", sop_instance_uid=uid)
    delivered = _index(records, event="delivery", sop_instance_uid=uid)
    assert accepted < stored < released and stored < analysed < delivered

    peer = records[accepted]["peer"]
    assert re.fullmatch(r"127\.0\.0\.1:\d+", peer) and records[accepted]["called_ae"] == NODE_AE
    assert records[accepted]["tls"] == "no" and records[accepted]["atna_event"]["code"] == "110114"
    store = records[stored]
    assert (store["result"], store["status"], store["outcome"], store["peer"]) == ("stored", "0x0000", 0, peer)
    assert (store["atna_event"]["code"], store["atna_action"]) == ("110104", "C") and store["bytes"] > 600_000
    assert (records[released]["stored"], records[released]["failed"], records[released]["peer"]) == (1, 0, peer)

    job = Spool(audited.node.spool).find_job(uid)
    assert job is not None
    report_uid = str(pydicom.dcmread(Spool(audited.node.spool).result_path(job), stop_before_pixels=True).SOPInstanceUID)
    analysis = records[analysed]
    assert (analysis["result"], analysis["report_uid"], analysis["calling_ae"]) == ("report", report_uid, MODALITY)
    assert analysis["finding"] in ("present", "absent") and analysis["atna_event"]["code"] == "110103"
    assert audited.orthanc.find_instances(report_uid), "the report in the audit trail is the one Orthanc holds"
    delivery = records[delivered]
    assert (delivery["result"], delivery["status"], delivery["destination"], delivery["called_ae"]) == (
        "delivered", "0x0000", "pacs", ORTHANC_AE_TITLE)
    assert (delivery["peer"], delivery["calling_ae"], delivery["atna_action"]) == (
        f"127.0.0.1:{audited.orthanc.dicom_port}", NODE_AE, "R")

    raw = audited.raw()
    name = str(ds.PatientName)
    for value in (name, *name.split("^"), str(ds.PatientID), str(ds.PatientBirthDate)):
        assert value and value not in raw, f"{value!r} is in the audit trail"


def test_a_rejected_association_is_recorded_with_its_reason_and_the_peer(audited: AuditedNode) -> None:
    for calling_ae in ("INTRUDER", "ELSEWHERE"):
        echo = subprocess.run(
            [dcmtk("echoscu"), "-aet", calling_ae, "-aec", NODE_AE, "127.0.0.1", str(audited.node.port)],
            capture_output=True, text=True, env=dcmtk_env(), timeout=60,
        )
        assert echo.returncode != 0 and "Calling AE Title Not Recognized" in echo.stdout + echo.stderr
    records = audited.wait("two rejections", lambda rs: sum(r["result"] == "rejected" and r.get("calling_ae") in
                                                            ("INTRUDER", "ELSEWHERE") for r in rs) == 2)
    intruder = records[_index(records, event="association", result="rejected", calling_ae="INTRUDER")]
    elsewhere = records[_index(records, event="association", result="rejected", calling_ae="ELSEWHERE")]
    assert intruder["detail"] == "calling AE title not recognised" and elsewhere["detail"] == "host not allowed"
    for record in (intruder, elsewhere):
        assert re.fullmatch(r"127\.0\.0\.1:\d+", record["peer"]) and record["called_ae"] == NODE_AE
        assert (record["outcome"], record["outcome_text"]) == (4, "minor failure")
        assert record["atna_event"]["meaning"] == "Security Alert"
        assert record["atna_event_type"]["meaning"] == "Node Authentication"
    assert not any(r["result"] == "accepted" and r.get("calling_ae") in ("INTRUDER", "ELSEWHERE") for r in records)


def _metric(port: int, line_start: str) -> float | None:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(line_start + " "):
                return float(line.split()[-1])
    return None


def test_refusals_at_the_network_edge_are_recorded_and_counted(audited: AuditedNode) -> None:
    idle = [connect(audited.node.port, EDGE_HOST) for _ in range(2)]  # max_associations_per_host = 2
    over = connect(audited.node.port, EDGE_HOST)
    try:
        answer = read_pdu(over, timeout=5)
        assert answer is not None and answer[0] == A_ASSOCIATE_RJ
        over_peer = f"{EDGE_HOST}:{over.getsockname()[1]}"
        idle_peers = {f"{EDGE_HOST}:{sock.getsockname()[1]}" for sock in idle}
        records = audited.wait(
            "the idle connections closed after association_request_timeout",
            lambda rs: any(r["event"] == "connection" and r["peer"] in idle_peers for r in rs), timeout=15,
        )
    finally:
        for sock in (*idle, over):
            sock.close()
    refused = records[_index(records, event="association", result="rejected", peer=over_peer)]
    assert "per-host" in refused["detail"] and refused["held_back"] == 0 and refused["called_ae"] == NODE_AE
    closed = [r for r in records if r["event"] == "connection" and r["peer"] in idle_peers]
    assert len(closed) == 1, "the second, like the first within 10 s, is held back as its log line is"
    assert "no complete A-ASSOCIATE-RQ within 2 s" in closed[0]["detail"] and closed[0]["result"] == "closed"
    assert wait_for(lambda: _metric(audited.metrics_port, 'cxr_connections_refused_total{reason="request_timeout"}') == 2,
                    timeout=10)
    assert _metric(audited.metrics_port, 'cxr_connections_refused_total{reason="per_host_limit"}') == 1


def test_the_trail_opens_with_application_start_and_ends_with_stop(start_node, tmp_path: Path) -> None:
    node = start_node(tmp_path / "spool")
    assert node.terminate() == 0
    records = audit_records(tmp_path / "spool" / "audit")
    assert [(r["event"], r["result"]) for r in records] == [("application", "start"), ("application", "stop")]
    assert records[1]["atna_event"]["code"] == "110100" and records[1]["atna_event_type"]["code"] == "110121"
    assert node.process is not None
    assert records[0]["pid"] == records[1]["pid"] == node.process.pid and records[0]["called_ae"] == NODE_AE

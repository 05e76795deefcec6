"""The analysis child's metric updates, audit records and result wakes reach the node's own."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import CTImageStorage as CT_IMAGE_STORAGE
from pydicom.uid import ExplicitVRLittleEndian

from dicom_node.analyse.process import (
    AnalysisProcess,
    RemoteAudit,
    RemoteMetrics,
    _Channel,
    apply_metric,
)
from dicom_node.audit import AuditLog
from dicom_node.config import NodeConfig
from dicom_node.metrics import NodeMetrics
from dicom_node.spool import JobState, Spool


def _sent(send: Any) -> list[tuple[Any, ...]]:
    """What ``send(channel)`` put on a real pipe."""
    read, write = multiprocessing.get_context("spawn").Pipe(duplex=False)
    send(_Channel(write))
    write.close()
    messages = []
    while read.poll(1):
        try:
            messages.append(read.recv())
        except EOFError:
            break
    return messages


def _node(tmp_path: Path, metrics: NodeMetrics | None = None, audit: AuditLog | None = None) -> tuple[AnalysisProcess, list[int]]:
    results: list[int] = []
    process = AnalysisProcess(NodeConfig(spool=tmp_path / "spool"), lambda: results.append(1), metrics, audit)
    return process, results


def test_metric_updates_of_the_child_land_in_the_nodes_registry(tmp_path: Path) -> None:
    def worker_side(channel: _Channel) -> None:
        metrics = RemoteMetrics(channel)
        metrics.analysed.labels("report").inc()
        metrics.analysed.labels("report").inc()
        metrics.batch_seconds.observe(0.25)
        metrics.report_ready_seconds.observe(metrics.since("2026-01-01T00:00:00+00:00", 1767225601.5))

    metrics = NodeMetrics()
    process, _ = _node(tmp_path, metrics)
    for message in _sent(worker_side):
        process.handle(message)
    text = metrics.text().decode()
    assert 'cxr_analysed_total{outcome="report"} 2.0' in text
    assert "cxr_analysis_batch_seconds_sum 0.25" in text
    assert "cxr_receipt_to_report_seconds_sum 1.5" in text


def test_audit_records_of_the_child_are_written_by_the_node(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "audit")
    process, _ = _node(tmp_path, audit=audit)
    for message in _sent(lambda channel: RemoteAudit(channel).record(
        "analysis", "report", sop_instance_uid="1.2.3", finding="present"
    )):
        process.handle(message)
    audit.close()
    (path,) = (tmp_path / "audit").glob("audit-*.jsonl")
    record = json.loads(path.read_text().splitlines()[-1])
    assert (record["event"], record["result"], record["sop_instance_uid"]) == ("analysis", "report", "1.2.3")


def test_a_result_of_the_child_wakes_the_outbox_and_ready_gives_the_algorithm(tmp_path: Path) -> None:
    process, results = _node(tmp_path)
    process.handle(("result",))
    process.handle(("ready", "the algorithm"))
    assert results == [1]
    assert process.algorithm == "the algorithm"


@pytest.mark.parametrize(("name", "method"), [("_registry", "inc"), ("analysed", "clear"), ("analysed", "labels")])
def test_only_metric_updates_are_applied(name: str, method: str) -> None:
    with pytest.raises(ValueError, match="not a metric update"):
        apply_metric(NodeMetrics(), name, (), method, 1.0)


def test_a_new_analysis_process_takes_back_what_the_dead_one_left_in_processing(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    jobs = [spool.store_instance([b"x" * 10], sop_instance_uid=f"1.2.{i}", sop_class_uid=CT_IMAGE_STORAGE,
                                 transfer_syntax_uid=ExplicitVRLittleEndian, calling_ae_title="DX1")[0] for i in range(3)]
    for job in jobs[:2]:
        spool.transition(job, JobState.PROCESSING)
    assert spool.requeue_processing("requeued: the analysis process restarted") == 2
    assert not list(spool.jobs(JobState.PROCESSING))
    requeued = sorted(spool.jobs(JobState.RECEIVED), key=lambda j: j.sop_instance_uid)
    assert [j.sop_instance_uid for j in requeued] == ["1.2.0", "1.2.1", "1.2.2"]
    assert [j.detail for j in requeued[:2]] == ["requeued: the analysis process restarted"] * 2
    assert spool.requeue_processing("requeued: the analysis process restarted") == 0

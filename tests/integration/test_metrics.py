"""The node's /metrics, scraped by a real Prometheus during an end-to-end run, and /healthz, /readyz."""

from __future__ import annotations

import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from dicom_node.spool import Spool
from testkit.orthanc import ORTHANC_AE_TITLE, OrthancServer, orthanc_binary
from testkit.peers import dcmtk, dcmtk_env, free_port, wait_for
from testkit.prometheus import PrometheusServer, prometheus_binary

NODE_AE = "CXR_AI"
TIMEOUT = 240  # two CPU analyses and the model load on a loaded 2-core machine


def _wait(what: str, predicate: Callable[[], bool], log: Callable[[], str], timeout: float = TIMEOUT) -> None:
    if not wait_for(predicate, timeout):
        pytest.fail(f"timed out waiting for {what}\n{log()[-4000:]}")


def _http(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_prometheus_scrapes_what_the_node_received_analysed_and_delivered(
    start_node, tmp_path: Path, shared_data: Path
) -> None:
    if orthanc_binary() is None or prometheus_binary() is None:
        pytest.fail("Orthanc or Prometheus is not installed: run scripts/setup.sh")
    orthanc = OrthancServer(tmp_path / "orthanc", calling_ae_titles=(NODE_AE,)).start()
    metrics_port = free_port()
    prometheus = PrometheusServer(tmp_path / "prometheus", [f"127.0.0.1:{metrics_port}"]).start()
    try:
        config = tmp_path / "node.toml"
        config.write_text(
            f'[inference]\ndevice = "cpu"\nsimilar_k = 0\n[results]\nsummary_image = false\n'
            f"[metrics]\nport = {metrics_port}\n"
            f'[[destinations]]\nname = "pacs"\nae_title = "{ORTHANC_AE_TITLE}"\nhost = "127.0.0.1"\nport = {orthanc.dicom_port}\n'
        )
        node = start_node(tmp_path / "spool", "--analysis", "--config", str(config))
        base = f"http://127.0.0.1:{metrics_port}"
        assert _http(f"{base}/healthz") == (200, "ok\n")
        assert _http(f"{base}/readyz") == (200, "ready\n")
        dicom = shared_data / "dicom"
        files = [dicom / "pydicom-data" / "RG1_J2KI.dcm", dicom / "dicom-test-files" / "RG1_JLSN.dcm",
                 dicom / "dicom-test-files" / "RG2_JPLL.dcm"]  # two chests and a hip (no finding)
        sent = subprocess.run([dcmtk("dcmsend"), "-aet", "DX1", "-aec", NODE_AE, "127.0.0.1", str(node.port),
                               *map(str, files)], capture_output=True, text=True, env=dcmtk_env(), timeout=120)
        assert sent.returncode == 0, sent.stderr
        spool = Spool(tmp_path / "spool")
        _wait("two reports sent and one image not analysed",
              lambda: spool.counts()["sent"] == 2 and spool.counts()["not_analysed"] == 1, node.log)

        expected = {
            'cxr_c_store_responses_total{status="0x0000"}': 3,
            'cxr_jobs{state="sent"}': 2,
            'cxr_jobs{state="not_analysed"}': 1,
            'cxr_jobs{state="outbox"}': 0,
            "cxr_spool_instances": 3,
            'cxr_analysed_total{outcome="report"}': 2,
            'cxr_analysed_total{outcome="not_analysed"}': 1,
            'cxr_delivery_attempts_total{destination="pacs",outcome="delivered"}': 2,
            'cxr_receipt_to_delivery_seconds_count{destination="pacs"}': 2,
            "cxr_receipt_to_report_seconds_count": 2,
            'cxr_associations_total{outcome="accepted"}': 1,
            "cxr_oldest_undelivered_seconds": 0,
        }
        _wait("Prometheus to scrape the final values",
              lambda: all(prometheus.value(q) == v for q, v in expected.items()),
              lambda: "\n".join(f"{q}: {prometheus.value(q)}" for q in expected) + "\n" + prometheus.log(), timeout=60)
        received = prometheus.value("cxr_received_bytes_total")
        assert received is not None and received > 0.9 * sum(p.stat().st_size for p in files)
        [model] = prometheus.query("cxr_model_info")
        assert model["metric"]["version"] and len(model["metric"]["weights_sha256"]) == 64
        assert (prometheus.value("cxr_spool_free_bytes") or 0) > 0 and (prometheus.value("cxr_spool_bytes") or 0) > 0
        _, text = _http(f"{base}/metrics")
        for uid_part in ("1.3.6.1.4.1.5962", "1.2.840.113619"):  # no SOP Instance UID in any label
            assert uid_part not in text
    finally:
        prometheus.stop()
        orthanc.stop()

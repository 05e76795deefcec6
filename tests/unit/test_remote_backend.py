"""The node's side of the Ray backend without a cluster: the wire format, the client's reading of
answers (a real HTTP server on loopback speaking the wire format), and the worker's wait with a
backend that is not there (a closed port)."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_node.analyse.analyser import BackendUnavailableError, ModelMismatchError
from dicom_node.analyse.remote import ServeClient
from dicom_node.app import build_worker
from dicom_node.config import NodeConfig, config_from_mapping
from dicom_node.errors import ConfigError
from dicom_node.metrics import NodeMetrics
from dicom_node.spool import JobState, Spool
from monai_app.serve.wire import NPY, WireIdentity, decode_array, encode_array
from testkit.peers import free_port

IDENTITY = WireIdentity("cxr", "0.8.0", "ab" * 32, "cd" * 32)


class _Deployment(http.server.BaseHTTPRequestHandler):
    """Answers ``POST /cxr/lung`` as the deployment would, with the status and identity of the server."""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        status, identity = self.server.answer  # type: ignore[attr-defined]
        data = encode_array(decode_array(body) * 2) if status == 200 else b"no"
        self.send_response(status)
        for name, value in identity.headers().items():
            self.send_header(name, value)
        self.send_header("Content-Type", NPY)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def deployment() -> Iterator[http.server.ThreadingHTTPServer]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Deployment)
    server.answer = (200, IDENTITY)  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _client(server: http.server.ThreadingHTTPServer, **kwargs: object) -> ServeClient:
    return ServeClient(f"http://127.0.0.1:{server.server_address[1]}", "cxr", IDENTITY, timeout=5, **kwargs)  # type: ignore[arg-type]


def test_an_answer_of_the_expected_model_is_used_and_its_bytes_counted(deployment) -> None:
    metrics = NodeMetrics()
    client = _client(deployment, metrics=metrics)
    images = np.ones((2, 1, 256, 256), np.float32)
    assert np.array_equal(client.lung_logits(images), images * 2)
    assert client.lung_logits(images).shape == (2, 1, 256, 256), "the kept-alive connection serves a second call"
    sent = metrics.registry.get_sample_value("cxr_backend_bytes_total", {"direction": "sent"})
    assert sent == 2 * len(encode_array(images))
    assert metrics.registry.get_sample_value("cxr_backend_calls_total", {"route": "lung", "outcome": "ok"}) == 2


def test_an_answer_of_another_model_is_refused_naming_what_differs_unless_accepted(deployment) -> None:
    deployment.answer = (200, WireIdentity("cxr", "0.9.0", "ab" * 32, "cd" * 32))
    metrics = NodeMetrics()
    with pytest.raises(ModelMismatchError, match=r"version: 0\.8\.0 != 0\.9\.0.*answer refused, nothing reported"):
        _client(deployment, metrics=metrics).lung_logits(np.zeros((1, 1, 256, 256), np.float32))
    assert metrics.registry.get_sample_value("cxr_backend_calls_total", {"route": "lung", "outcome": "refused"}) == 1
    accepted = _client(deployment, accept_other_model=True).lung_logits(np.zeros((1, 1, 256, 256), np.float32))
    assert accepted.shape == (1, 1, 256, 256)


@pytest.mark.parametrize("status", [404, 500, 503])
def test_no_application_an_error_or_overload_means_unavailable(deployment, status: int) -> None:
    deployment.answer = (status, IDENTITY)
    with pytest.raises(BackendUnavailableError, match=f"HTTP {status}"):
        _client(deployment).lung_logits(np.zeros((1, 1, 256, 256), np.float32))


def test_a_malformed_request_is_an_analysis_error_not_a_wait(deployment) -> None:
    deployment.answer = (400, IDENTITY)
    with pytest.raises(RuntimeError, match="HTTP 400") as raised:
        _client(deployment).lung_logits(np.zeros((1, 1, 256, 256), np.float32))
    assert not isinstance(raised.value, BackendUnavailableError)


def test_the_backend_keys_are_checked_by_name() -> None:
    assert NodeConfig().backend == "local"
    for table, message in (
        ({"backend": "remote"}, "inference.backend"), ({"serve_url": "ray://head:10001"}, "inference.serve_url"),
        ({"serve_application": "a/b"}, "inference.serve_application"),
        ({"serve_timeout_seconds": 0}, "inference.serve_timeout_seconds"),
        ({"accept_other_model": "yes"}, "inference.accept_other_model"),
    ):
        with pytest.raises(ConfigError, match=message):
            config_from_mapping({"inference": table})


def test_with_the_backend_away_the_batch_waits_with_its_tries_intact_and_backs_off(
    tmp_path: Path, shared_data: Path
) -> None:
    spool = Spool(tmp_path / "spool", fsync=False)
    source = shared_data / "dicom" / "pydicom-data" / "RG1_J2KI.dcm"
    ds = pydicom.dcmread(source, stop_before_pixels=True)
    job, _ = spool.store_instance(
        [source.read_bytes()], sop_instance_uid=str(ds.SOPInstanceUID), sop_class_uid=str(ds.SOPClassUID),
        transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID), calling_ae_title="TEST",
    )
    config = NodeConfig(spool=spool.root, device="cpu", backend="ray", serve_url=f"http://127.0.0.1:{free_port()}",
                        similar_k=0, backend_retry_max_seconds=4)
    metrics = NodeMetrics(spool)
    worker = build_worker(config, spool, metrics=metrics)
    now = [time.time()]  # the jobs' receipt times are real ones: the batch wait reads them
    worker.clock = lambda: now[0]
    waits = []
    for _ in range(4):
        assert worker.run_once() == 1
        waited = spool.find_job(job.job_id)
        assert waited is not None and waited.state is JobState.RECEIVED
        assert waited.attempts == 0 and "waiting for the analysis backend" in waited.detail
        assert worker.run_once() == 0, "no batch before the backoff is over"
        waits.append(worker.backend_retry_at - now[0])
        now[0] = worker.backend_retry_at
    assert waits == [1.0, 2.0, 4.0, 4.0], "doubling up to backend_retry_max_seconds"
    done = spool.find_job(job.job_id)
    assert done is not None and done.backend_attempts == 4
    assert metrics.registry.get_sample_value("cxr_backend_waits_total") == 4
    assert metrics.registry.get_sample_value("cxr_backend_calls_total", {"route": "lung", "outcome": "unavailable"}) == 4

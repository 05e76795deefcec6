"""The models on a Ray Serve cluster (``[inference] backend = "ray"``): the node's side.

The node keeps what it owns: decoding and the full-resolution preprocessing (their products
build the report), the frontal-chest checks, the similar-study index (it is per site) and
everything after. Only the networks go remote, as the preprocessed tensors
(:mod:`monai_app.serve.wire`): the U-Net's 256² input inside ``prepare`` and the
classifier's 224² input in ``predict``, about 1.3 MB a study against the 10 MB originals
(docs/scale_out.md). The deployment is reached over HTTP, so this module needs no Ray.

Every answer names the model that made it; one from another model than the node's own
bundle is refused (:class:`~dicom_node.analyse.analyser.ModelMismatchError`) unless
``accept_other_model``. A connection refused, a timeout, a 5xx or a missing application
raise :class:`~dicom_node.analyse.analyser.BackendUnavailableError`: the worker hands the
jobs back with backoff and receiving goes on.
"""

from __future__ import annotations

import http.client
import logging
import threading
import time
import urllib.parse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from dicom_node.analyse.analyser import BackendUnavailableError, ModelMismatchError
from dicom_node.metrics import NodeMetrics
from dicom_node.tcp import no_delay_socket
from monai_app.inference import BundleAnalyser, Prediction, PreparedImage
from monai_app.serve.wire import NPY, REPLICA_HEADER, WireIdentity, decode_array, decode_arrays, encode_array

logger = logging.getLogger(__name__)

_UNAVAILABLE_STATUS = frozenset({404, 408, 429, 500, 502, 503, 504})
"""Answers that mean "not now": no application (yet) at the prefix, overload, a replica that died."""


class ServeClient:
    """HTTP calls to the Serve application at ``url`` + ``/<application>``, one kept-alive connection per thread.

    Parameters
    ----------
    url : str
        Serve's HTTP proxy, e.g. ``http://ray-head:8000``.
    application : str
        The application's name (its route prefix).
    expected : WireIdentity
        The model the node's reports name; other answers are refused unless ``accept_other_model``.
    timeout : float
        Seconds a call may take (connect, send, answer).
    """

    def __init__(
        self, url: str, application: str, expected: WireIdentity, *, timeout: float = 60.0,
        accept_other_model: bool = False, metrics: NodeMetrics | None = None,
    ) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f'Argument "url" must be an http(s) URL, got {url!r}')
        self.url = url.rstrip("/")
        self._scheme, self._host, self._port = parsed.scheme, parsed.hostname, parsed.port
        self._prefix = f"{parsed.path.rstrip('/')}/{application.strip('/')}"
        self.endpoint = f"{self._scheme}://{parsed.netloc}{self._prefix}"
        """The application's URL (logs, messages)."""
        self.expected = expected
        self.timeout = timeout
        self.accept_other_model = accept_other_model
        self.metrics = metrics
        self._local = threading.local()
        self._accepted: set[WireIdentity] = set()

    def lung_logits(self, images: np.ndarray) -> np.ndarray:
        """U-Net logits of ``(B, 1, 256, 256)`` float32 inputs."""
        return decode_array(self._call("lung", encode_array(images.astype(np.float32, copy=False))))

    def predict(self, images: np.ndarray, *, relevance: bool) -> dict[str, np.ndarray]:
        """``probability``, ``embedding`` (and ``relevance``) of ``(B, 3, 224, 224)`` float32 classifier inputs."""
        query = "?relevance=1" if relevance else ""
        return decode_arrays(self._call("predict", encode_array(images.astype(np.float32, copy=False)), query))

    def identity(self) -> WireIdentity:
        """What the deployment serves now (one ``GET identity``)."""
        return self._request("identity", "GET", b"", "")[1]

    def _call(self, route: str, body: bytes, query: str = "") -> bytes:
        started = time.monotonic()
        try:
            data, identity = self._request(route, "POST", body, query)
            self._check(identity)
        except ModelMismatchError:
            self._count(route, "refused")
            raise
        except BackendUnavailableError:
            self._count(route, "unavailable")
            raise
        self._count(route, "ok")
        if self.metrics is not None:
            self.metrics.backend_seconds.labels(route).observe(time.monotonic() - started)
            self.metrics.backend_bytes.labels("sent").inc(len(body))
            self.metrics.backend_bytes.labels("received").inc(len(data))
        return data

    def _request(self, route: str, method: str, body: bytes, query: str) -> tuple[bytes, WireIdentity]:
        path = f"{self._prefix}/{route}{query}"
        failure = ""
        for fresh in (False, True):  # a kept-alive connection the server closed meanwhile: once more on a new one
            connection = self._connection(fresh)
            try:
                connection.request(method, path, body=body, headers={"Content-Type": NPY})
                answer = connection.getresponse()
                data = answer.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                connection.close()
                failure = f"{type(exc).__name__}"
                continue
            except (OSError, http.client.HTTPException) as exc:  # refused, timed out, unreachable, garbled
                connection.close()
                failure = f"{type(exc).__name__}: {exc}"
                break
            if answer.status in _UNAVAILABLE_STATUS:
                failure = f"HTTP {answer.status} for {route}"
                break
            if answer.status != 200:  # 400: malformed request, 422: the networks failed on it; analysis errors
                raise RuntimeError(f"{self.endpoint}/{route}: HTTP {answer.status}: {data[:200].decode(errors='replace')}")
            logger.debug("backend: %s answered by %s", route, answer.getheader(REPLICA_HEADER, "?"))
            return data, WireIdentity.from_headers(dict(answer.getheaders()))
        # Raised here, outside the except blocks: no library exception chained (log_safety quotes ours only).
        raise BackendUnavailableError(f"{self.endpoint}: {failure}")

    def _connection(self, fresh: bool) -> http.client.HTTPConnection:
        connection: http.client.HTTPConnection | None = getattr(self._local, "connection", None)
        if connection is not None and not fresh:
            return connection
        if connection is not None:
            connection.close()
        cls = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
        connection = cls(self._host, self._port, timeout=self.timeout)
        failure = ""
        try:
            connection.connect()
        except OSError as exc:
            failure = f"{type(exc).__name__}: {exc}"
        if failure:
            raise BackendUnavailableError(f"{self.endpoint}: {failure}")
        # Headers and body go in separate writes: without this Nagle holds the body ~40 ms.
        no_delay_socket(connection.sock)
        self._local.connection = connection
        return connection

    def _check(self, identity: WireIdentity) -> None:
        differences = self.expected.differences(identity)
        if not differences:
            return
        if not self.accept_other_model:
            raise ModelMismatchError(
                f"the deployment at {self.endpoint} serves another model than this node's bundle "
                f"({'; '.join(differences)}); answer refused, nothing reported "
                "(deploy the node's bundle, or set inference.accept_other_model = true)"
            )
        if identity not in self._accepted:
            self._accepted.add(identity)
            logger.warning("backend: accepting answers of another model (%s): inference.accept_other_model",
                           "; ".join(differences))

    def _count(self, route: str, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.backend_calls.labels(route, outcome).inc()


class RemoteBundleAnalyser(BundleAnalyser):
    """The bundle's :class:`~monai_app.inference.BundleAnalyser` with its networks on a Serve deployment.

    Everything but the networks runs here, from the same bundle (preprocessing, checks,
    calibrated threshold, identity, the similar-study index); the U-Net inside ``prepare`` and
    the classifier with Grad-CAM in ``predict`` are calls to the deployment (:class:`ServeClient`).
    """

    def __init__(
        self, bundle_dir: str | Path, url: str, application: str, *, timeout: float = 60.0,
        accept_other_model: bool = False, metrics: NodeMetrics | None = None, load_index: bool = True,
        index_dir: str | Path | None = None,
    ) -> None:
        super().__init__(
            bundle_dir, "cpu", load_index=load_index, index_dir=index_dir, lung_network=self._remote_lung_logits,
            load_classifier=False,
        )
        identity = self.identity  # of the node's own bundle files: what its reports name
        self.client = ServeClient(
            url, application, WireIdentity(identity.name, identity.version, identity.sha256, identity.calibration_sha256),
            timeout=timeout, accept_other_model=accept_other_model, metrics=metrics,
        )
        self.runtime = f"ray serve {self.client.endpoint}"
        self._probe()

    def _probe(self) -> None:
        """One look at the deployment at start-up, for the log; never fails the start (the cluster
        may come later: analysis waits for it, receiving does not)."""
        try:
            served = self.client.identity()
        except (BackendUnavailableError, RuntimeError) as exc:
            logger.warning("backend: %s not answering now (%s); analysis waits for it, receiving goes on",
                           self.client.endpoint, exc)
            return
        differences = self.client.expected.differences(served)
        if differences and not self.client.accept_other_model:
            logger.error("backend: %s serves another model (%s): its answers will be refused",
                         self.client.endpoint, "; ".join(differences))
        else:
            logger.info("backend: %s serves %s %s (weights %s)", self.client.endpoint, served.name, served.version,
                        served.sha256[:16])

    def _remote_lung_logits(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.client.lung_logits(x.detach().cpu().numpy()))

    def predict(self, images: Sequence[PreparedImage], *, relevance: bool = False) -> list[Prediction]:
        """The deployment's predictions for ``images``, in order (see :meth:`BundleAnalyser.predict`)."""
        if not images:
            return []
        answer = self.client.predict(np.stack([image.tensor.numpy() for image in images]), relevance=relevance)
        if len(answer["probability"]) != len(images):
            raise RuntimeError(f"the deployment answered {len(answer['probability'])} predictions for {len(images)} images")
        maps: Sequence[np.ndarray | None] = list(answer["relevance"]) if relevance else [None] * len(images)
        return [
            Prediction(float(p), embedding.astype(np.float32), None if m is None else m.astype(np.float32))
            for p, embedding, m in zip(answer["probability"], answer["embedding"], maps)
        ]

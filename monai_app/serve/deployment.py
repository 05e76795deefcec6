"""The bundle's networks as a Ray Serve deployment, batched across callers (``@serve.batch``).

Each replica loads the same bundle configs a node loads locally (:class:`monai_app.inference.BundleAnalyser`,
without index and appearance model, which stay with the node) and answers the routes of
:mod:`monai_app.serve.wire`: the U-Net on ``prepare``'s 256² tensor, the classifier
(calibrated probability, embedding) and its Grad-CAM on the 224² input. Requests from
all nodes are split into single images and queued into one batch per network, so images of
different sites share a forward pass. Every answer carries the bundle's name, version and
weights hash (:class:`~monai_app.serve.wire.WireIdentity`); the node refuses a model it does
not expect.

The HTTP ingress (not a Ray handle) is deliberate: a node needs neither Ray nor the
cluster's exact Ray and Python versions, and a cluster that goes away can never take the
node's process with it (a Ray driver exits when it loses the cluster).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from dataclasses import dataclass
from typing import Any

import numpy as np
from ray import serve
from starlette.requests import Request
from starlette.responses import Response

from monai_app.serve.wire import NPY, NPZ, REPLICA_HEADER, WireIdentity, decode_array, encode_array, encode_arrays

# Ray's own annotations of these decorators do not fit methods with several arguments.
batch: Any = serve.batch
deployment_of: Any = serve.deployment

LUNG_SHAPE = (1, 256, 256)
CLASSIFIER_SHAPE = (3, 224, 224)


@dataclass(frozen=True)
class ServeSettings:
    """How the application is deployed (``python -m monai_app.serve``; docs/scale_out.md)."""

    bundle: str
    name: str = "cxr"  # the application's name and route prefix (/cxr)
    replicas: int = 1  # fixed count, or the minimum when max_replicas is set
    max_replicas: int = 0  # > replicas: Serve autoscales between the two on the requests in flight
    num_cpus: float = 1.0  # Ray resources per replica
    num_gpus: float = 0.0
    device: str = "auto"  # in the replica: the GPU when it has one
    runtime: str = "auto"  # CPU replicas: OpenVINO / ONNX Runtime as on a node
    num_threads: int = 0  # torch / runtime threads per replica (0: their default)
    max_batch_size: int = 8
    batch_wait_timeout_s: float = 0.01
    max_ongoing_requests: int = 32


class BundleNetworks:
    """One replica: the bundle's U-Net, classifier and Grad-CAM behind batched HTTP routes."""

    def __init__(self, settings: ServeSettings) -> None:
        import torch

        from monai_app.inference import BundleAnalyser

        if settings.num_threads:
            torch.set_num_threads(settings.num_threads)
        self.analyser = BundleAnalyser(
            settings.bundle, settings.device, load_index=False, load_appearance=False, runtime=settings.runtime,
        )
        identity = self.analyser.identity
        self.identity = WireIdentity(identity.name, identity.version, identity.sha256, identity.calibration_sha256)
        self.replica = f"{socket.gethostname()}:{os.getpid()}"
        for batched in (self._lung_batch, self._predict_batch):
            batched.set_max_batch_size(settings.max_batch_size)
            batched.set_batch_wait_timeout_s(settings.batch_wait_timeout_s)

    async def __call__(self, request: Request) -> Response:
        route = request.url.path.rstrip("/").rsplit("/", 1)[-1]
        try:
            if route == "identity" and request.method == "GET":
                body = json.dumps({**self.identity.__dict__, "replica": self.replica, "runtime": self.analyser.runtime})
                return self._answer(body.encode(), "application/json")
            if route == "lung" and request.method == "POST":
                images = _batch(decode_array(await request.body()), LUNG_SHAPE)
                logits = await asyncio.gather(*(self._lung_batch(image) for image in images))
                return self._answer(encode_array(np.stack(logits)), NPY)
            if route == "predict" and request.method == "POST":
                images = _batch(decode_array(await request.body()), CLASSIFIER_SHAPE)
                relevance = request.query_params.get("relevance", "0") == "1"
                answers = await asyncio.gather(*(self._predict_batch(image, relevance) for image in images))
                arrays = {
                    "probability": np.array([a[0] for a in answers], np.float64),
                    "embedding": np.stack([a[1] for a in answers]),
                }
                if relevance:
                    arrays["relevance"] = np.stack([a[2] for a in answers])
                return self._answer(encode_arrays(arrays), NPZ)
        except ValueError as exc:  # a malformed body: the caller's fault, not worth a retry
            return Response(str(exc).encode(), status_code=400, headers=self._headers())
        except Exception as exc:  # the networks failed on this batch: an analysis error, not "try later"
            # 422, not Serve's 500: a node waits out a 500 (a replica that died) without counting tries,
            # but counts this one, so an image that always fails ends as not analysed.
            return Response(f"analysis error: {type(exc).__name__}".encode(), status_code=422, headers=self._headers())
        return Response(b"unknown route", status_code=404, headers=self._headers())

    def _headers(self) -> dict[str, str]:
        return {**self.identity.headers(), REPLICA_HEADER: self.replica}

    def _answer(self, body: bytes, media_type: str) -> Response:
        return Response(body, media_type=media_type, headers=self._headers())

    @batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _lung_batch(self, images: list[np.ndarray]) -> list[np.ndarray]:
        # In a thread: the replica's event loop keeps taking requests (the next batch) meanwhile.
        return list(await asyncio.to_thread(self._lung, np.stack(images)))

    def _lung(self, batch: np.ndarray) -> np.ndarray:
        import torch

        return self.analyser.lung_logits(torch.from_numpy(batch)).cpu().numpy().astype(np.float32)

    @batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _predict_batch(
        self, images: list[np.ndarray], relevance: list[bool]
    ) -> list[tuple[float, np.ndarray, np.ndarray | None]]:
        return await asyncio.to_thread(self._predict, images, relevance)

    def _predict(self, images: list[np.ndarray], relevance: list[bool]) -> list[tuple[float, np.ndarray, np.ndarray | None]]:
        import torch

        from monai_app.inference import PreparedImage

        answers: dict[int, tuple[float, np.ndarray, np.ndarray | None]] = {}
        for wanted in (False, True):  # Grad-CAM costs a second pass: only for the callers that asked
            members = [i for i, r in enumerate(relevance) if r is wanted]
            if not members:
                continue
            prepared = [PreparedImage(torch.from_numpy(images[i]), lung_fraction=0.0) for i in members]
            for i, p in zip(members, self.analyser.predict(prepared, relevance=wanted)):
                answers[i] = (p.probability, p.embedding, p.relevance)
        return [answers[i] for i in range(len(images))]


def _batch(array: np.ndarray, item_shape: tuple[int, ...]) -> list[np.ndarray]:
    """The images of a request body ``(B, *item_shape)`` float32, one array each."""
    if array.dtype != np.float32 or array.ndim != len(item_shape) + 1 or tuple(array.shape[1:]) != item_shape:
        raise ValueError(f"expected float32 (B, {', '.join(map(str, item_shape))}), got {array.dtype} {array.shape}")
    return list(array)


def build_app(settings: ServeSettings) -> Any:
    """The Serve application of ``settings`` (pass it to ``serve.run``)."""
    scaling: dict[str, Any] = {"num_replicas": settings.replicas}
    if settings.max_replicas > settings.replicas:
        scaling = {"autoscaling_config": {
            "min_replicas": settings.replicas, "max_replicas": settings.max_replicas,
            "target_ongoing_requests": settings.max_batch_size,  # about one full batch queued per replica
        }}
    deployment = deployment_of(
        BundleNetworks,
        name="BundleNetworks",
        **scaling,
        ray_actor_options={"num_cpus": settings.num_cpus, "num_gpus": settings.num_gpus},
        max_ongoing_requests=settings.max_ongoing_requests,
        health_check_period_s=2,
        health_check_timeout_s=30,
    )
    return deployment.bind(settings)


def app_builder(args: dict[str, Any]) -> Any:
    """Serve's application builder, for a config file or KubeRay's RayService:
    ``import_path: monai_app.serve.deployment:app_builder`` with ``args`` the fields of :class:`ServeSettings`."""
    return build_app(ServeSettings(**args))

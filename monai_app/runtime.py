"""CPU runtimes for the bundle's two networks: exported with ``torch.onnx``, run by ONNX Runtime or OpenVINO.

What the node runs per image is the lung U-Net (the classifier's lung channel) and the
classifier up to its embedding and logits. Both are exported from the bundle's own networks
with their shipped weights (:func:`export_networks`, opset :data:`OPSET`, a dynamic batch
axis) to ONNX files named by the weights' SHA-256, so new weights never meet an old export.
The export is deterministic and takes a few seconds; it is made on first use (or ahead by
``python -m scripts.export_cpu_runtime``) in :func:`default_cache_dir`: the classifier's
fp32 ONNX is about 98 MB, too big to ship in the repository, and it is exactly what the
shipped weights give.

Grad-CAM (:mod:`monai_app.relevance`) needs PyTorch's autograd, so the relevance pass
stays on the PyTorch classifier whatever the runtime.

Runtimes, by :data:`RUNTIMES` name: ``"pytorch"`` (eager, nothing exported),
``"onnxruntime"`` (CPU execution provider), ``"openvino"`` (CPU plugin, fp32 inference
precision: its default on some CPUs is a lower precision that moves the probabilities), and
``"auto"``, the fastest measured on the project's 2-core AVX2 CPU that is installed
(:data:`AUTO_ORDER`; ``docs/benchmarks.md``). A runtime that is not installed or cannot
load its files falls back to PyTorch, logged once (:func:`load_runtime`).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from monai_app.networks.classifier import CovidClassifier
from monai_app.relevance import layer_output

logger = logging.getLogger(__name__)

RUNTIMES = ("auto", "pytorch", "onnxruntime", "openvino")
"""Names of the network runtimes (``[inference] runtime``)."""
AUTO_ORDER = ("openvino", "onnxruntime")
"""``"auto"`` takes the first of these that loads, fastest first (measured: docs/benchmarks.md), else PyTorch."""
OPSET = 17
"""ONNX opset of the export (ONNX Runtime 1.31 and OpenVINO 2026 read it)."""
CACHE_ENV = "CXR_RUNTIME_CACHE"
"""Environment variable naming the folder the exported networks are kept in."""
LUNG_INPUT = (1, 256, 256)
CLASSIFIER_INPUT = (3, 224, 224)


def default_cache_dir() -> Path:
    """``$CXR_RUNTIME_CACHE``, else ``$XDG_CACHE_HOME/cxr-node/runtime`` (``~/.cache/...``)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cxr-node" / "runtime"


CLASSIFIER_OUTPUTS = ["feature_maps", "embedding", "logits"]
"""The exported classifier's outputs: ``backbone.layer4``'s maps (for the Grad-CAM), embedding, logits."""


class _ClassifierOutputs(nn.Module):
    """The classifier as the node runs it: image batch -> (layer4 feature maps, embedding, logits), one graph."""

    def __init__(self, network: CovidClassifier) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        with layer_output(self.network) as feature_maps:
            embedding = self.network.embed(x)
        return feature_maps[-1], embedding, self.network.head(embedding)


def export_names(lung_sha256: str, classifier_sha256: str) -> tuple[str, str]:
    """File names of the exported U-Net and classifier: the weights' SHA-256 (16 digits) in each.

    The classifier's name also says which outputs it has, so an older export (without the
    feature maps) in the cache is never loaded.
    """
    return f"lung_unet-{lung_sha256[:16]}.onnx", f"classifier-{classifier_sha256[:16]}-features.onnx"


def export_networks(lung: nn.Module, classifier: CovidClassifier, out_dir: Path,
                    names: tuple[str, str]) -> tuple[Path, Path]:
    """Export the U-Net (``image`` -> ``logit``) and the classifier (``image`` -> :data:`CLASSIFIER_OUTPUTS`) to ONNX.

    Written to a temporary name and renamed, so a half-written file is never loaded. Both
    networks must be in eval mode (dropout off), as the bundle loads them.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = (out_dir / names[0], out_dir / names[1])
    jobs: tuple[tuple[nn.Module, tuple[int, ...], list[str]], ...] = (
        (lung, LUNG_INPUT, ["logit"]), (_ClassifierOutputs(classifier).eval(), CLASSIFIER_INPUT, CLASSIFIER_OUTPUTS),
    )
    for path, (network, shape, outputs) in zip(paths, jobs):
        if path.is_file():
            continue
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with torch.no_grad():
            # The TorchScript-based exporter: one self-contained file, no external data.
            torch.onnx.export(
                network, (torch.zeros(1, *shape),), str(tmp), input_names=["image"], output_names=outputs,
                dynamic_axes={name: {0: "batch"} for name in ["image", *outputs]}, opset_version=OPSET,
                dynamo=False,
            )
        os.replace(tmp, path)
        logger.info("runtime: exported %s (%.1f MB)", path, path.stat().st_size / 1e6)
    return paths


class NetworkRuntime(Protocol):
    """The node's two forward passes on one runtime."""

    name: str

    def lung_logits(self, images: np.ndarray) -> np.ndarray:
        """U-Net logits ``(B, 1, 256, 256)`` of ``(B, 1, 256, 256)`` float32 images."""
        ...

    def classify(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``backbone.layer4``'s maps ``(B, 2048, 7, 7)``, embeddings ``(B, 128)`` and logits ``(B, 2)`` of
        ``(B, 3, 224, 224)`` float32 inputs."""
        ...


class OnnxRuntimeNetworks:
    """The exported networks on ONNX Runtime's CPU execution provider."""

    name = "onnxruntime"

    def __init__(self, lung_file: Path, classifier_file: Path, num_threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = num_threads  # as torch's: the node's [inference] num_threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # No busy-waiting after a run: the spinning threads took the cores from the PyTorch
        # Grad-CAM pass that follows (model floor with Grad-CAM 0.70x of PyTorch's with it on).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._lung = ort.InferenceSession(str(lung_file), options, providers=["CPUExecutionProvider"])
        self._classifier = ort.InferenceSession(str(classifier_file), options, providers=["CPUExecutionProvider"])

    def lung_logits(self, images: np.ndarray) -> np.ndarray:
        return np.asarray(self._lung.run(None, {"image": np.ascontiguousarray(images, np.float32)})[0])

    def classify(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        feature_maps, embedding, logits = self._classifier.run(
            CLASSIFIER_OUTPUTS, {"image": np.ascontiguousarray(images, np.float32)})
        return np.asarray(feature_maps), np.asarray(embedding), np.asarray(logits)


class OpenVinoNetworks:
    """The exported networks compiled by OpenVINO for the CPU, fp32 inference precision."""

    name = "openvino"

    def __init__(self, lung_file: Path, classifier_file: Path, num_threads: int) -> None:
        import openvino as ov

        core = ov.Core()
        config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": "f32",  # the default may be bf16/fp16, which moves the probabilities
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": num_threads,
            "ENABLE_CPU_PINNING": False,
        }
        self._lung = core.compile_model(str(lung_file), "CPU", config)
        self._classifier = core.compile_model(str(classifier_file), "CPU", config)
        self._lock = threading.Lock()  # one infer request per compiled model

    def lung_logits(self, images: np.ndarray) -> np.ndarray:
        with self._lock:
            return np.array(self._lung(np.ascontiguousarray(images, np.float32))[0])

    def classify(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        with self._lock:
            out = self._classifier(np.ascontiguousarray(images, np.float32))
            feature_maps, embedding, logits = (np.array(out[name]) for name in CLASSIFIER_OUTPUTS)
            return feature_maps, embedding, logits


RUNTIME_CLASSES: dict[str, Callable[[Path, Path, int], NetworkRuntime]] = {
    "onnxruntime": OnnxRuntimeNetworks, "openvino": OpenVinoNetworks,
}
MODULES = {"onnxruntime": "onnxruntime", "openvino": "openvino"}
"""The package each runtime imports."""


def installed(name: str) -> bool:
    """Whether runtime ``name``'s package can be imported (``"pytorch"`` always)."""
    return name == "pytorch" or (name in MODULES and importlib.util.find_spec(MODULES[name]) is not None)


def load_runtime(
    name: str,
    lung: nn.Module,
    classifier: CovidClassifier,
    digests: tuple[str, str],
    *,
    device: torch.device,
    num_threads: int = 0,
    cache_dir: Path | None = None,
) -> NetworkRuntime | None:
    """The runtime ``name`` for the two networks, exporting them first if needed; ``None``: run PyTorch.

    ``"pytorch"`` and any GPU device give ``None``. A named runtime that is not installed or
    fails to export or load gives ``None`` too, with one warning (``"auto"``: one info line).

    Raises
    ------
    ValueError
        ``name`` is not one of :data:`RUNTIMES`.
    """
    if name not in RUNTIMES:
        raise ValueError(f'Argument "name" must be one of {", ".join(RUNTIMES)}, got {name!r}')
    if name == "pytorch":
        return None
    if device.type != "cpu":
        if name != "auto":
            logger.warning("runtime %s runs on the CPU only; device %s runs PyTorch", name, device)
        return None
    threads = num_threads or torch.get_num_threads()
    failures = []
    files: tuple[Path, Path] | None = None
    for candidate in AUTO_ORDER if name == "auto" else (name,):
        if not installed(candidate):
            failures.append(f"{candidate}: not installed")
            continue
        try:
            if files is None:
                files = export_networks(lung, classifier, cache_dir or default_cache_dir(), export_names(*digests))
            runtime = RUNTIME_CLASSES[candidate](*files, threads)
        except (ImportError, OSError, RuntimeError) as exc:  # not installed, no writable cache, unreadable file
            failures.append(f"{candidate}: {type(exc).__name__}: {exc}")
            continue
        logger.info("runtime: %s (%d threads) for the U-Net and the classifier; Grad-CAM on PyTorch", candidate, threads)
        return runtime
    (logger.info if name == "auto" else logger.warning)("runtime %s unavailable, using PyTorch (%s)", name,
                                                          "; ".join(failures))
    return None

"""The CPU runtimes (ONNX Runtime, OpenVINO) against PyTorch eager, on real shared images.

Tolerances, per image, against the PyTorch networks on the same file: lung probability max abs
diff < 1e-3, COVID-19 probability max abs diff < 1e-3, embedding cosine > 0.9999; the shipped
threshold gives the same decision on a sample of the test split (every SAMPLE_EVERY-th image,
in manifest order: the whole split takes minutes on two cores).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

import monai_app.runtime as runtime_module
from monai_app.data.manifest import read_manifest
from monai_app.inference import BundleAnalyser, Prediction
from monai_app.networks.classifier import CovidClassifier
from monai_app.runtime import export_names, export_networks, installed, load_runtime
from monai_app.transforms.classifier_input import LungProbabilityd
from testkit.bundle import BUNDLE

RUNTIMES = ("onnxruntime", "openvino")
SAMPLE_EVERY = 4
PROBABILITY_TOLERANCE = 1e-3
LUNG_TOLERANCE = 1e-3
EMBEDDING_COSINE = 0.9999

pytestmark = pytest.mark.skipif(not all(installed(r) for r in RUNTIMES), reason="onnxruntime/openvino not installed")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("exported")


@pytest.fixture(scope="module")
def analysers(cache: Path) -> dict[str, BundleAnalyser]:
    return {name: BundleAnalyser(BUNDLE, "cpu", load_index=False, runtime=name, runtime_cache=cache)
            for name in ("pytorch", *RUNTIMES)}


@pytest.fixture(scope="module")
def test_sample(shared_data: Path) -> list[Path]:
    rows = [r for r in read_manifest(shared_data / "manifest.csv") if r["split"] == "test"]
    return [shared_data / r["image_path"] for r in rows[::SAMPLE_EVERY]]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


def test_each_runtime_is_the_one_asked_for(analysers: dict[str, BundleAnalyser]) -> None:
    assert {name: a.runtime for name, a in analysers.items()} == {n: n for n in analysers}


def test_outputs_match_pytorch_and_the_threshold_decides_the_same_on_the_test_split(
    analysers: dict[str, BundleAnalyser], test_sample: list[Path]
) -> None:
    predictions: dict[str, list[Prediction]] = {}
    lung: dict[str, list[np.ndarray]] = {}
    for name, analyser in analysers.items():
        prepared = [analyser.prepare(path) for path in test_sample]
        lung[name] = [p.lung_probability for p in prepared]
        predictions[name] = [q for i in range(0, len(prepared), 8) for q in analyser.predict(prepared[i:i + 8])]
    threshold = analysers["pytorch"].threshold
    reference = predictions["pytorch"]
    for name in RUNTIMES:
        assert max(float(np.abs(a - b).max()) for a, b in zip(lung["pytorch"], lung[name])) < LUNG_TOLERANCE
        assert max(abs(p.probability - q.probability) for p, q in zip(reference, predictions[name])) < PROBABILITY_TOLERANCE
        assert min(cosine(p.embedding, q.embedding) for p, q in zip(reference, predictions[name])) > EMBEDDING_COSINE
        assert [q.probability >= threshold for q in predictions[name]] == [p.probability >= threshold for p in reference]
    assert len(reference) >= 20


def test_grad_cam_still_works_on_each_runtime(analysers: dict[str, BundleAnalyser], shared_data: Path) -> None:
    path = shared_data / "dicom/pydicom-data/RG1_J2KI.dcm"  # a real CR chest PA
    maps = {name: a.predict([a.prepare(path)], relevance=True)[0].relevance for name, a in analysers.items()}
    reference = maps["pytorch"]
    assert reference is not None
    for name in RUNTIMES:
        found = maps[name]
        assert found is not None and found.shape == reference.shape
        assert float(np.abs(found - reference).max()) < 1e-3  # the same PyTorch pass on ~the same input


def test_the_export_is_deterministic(analysers: dict[str, BundleAnalyser], cache: Path, tmp_path: Path) -> None:
    names = export_names("a" * 64, "b" * 64)
    network = analysers["pytorch"].network
    lung = next(t for t in analysers["pytorch"].preprocessing.transforms if isinstance(t, LungProbabilityd)).network
    assert isinstance(lung, torch.nn.Module)
    first = export_networks(lung, network, tmp_path / "one", names)
    second = export_networks(lung, network, tmp_path / "two", names)
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]


def test_a_missing_runtime_falls_back_to_pytorch_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    monkeypatch.setitem(runtime_module.MODULES, "openvino", "no_such_openvino_package")
    lung = torch.nn.Conv2d(1, 1, 3, padding=1).eval()
    with caplog.at_level(logging.WARNING, logger="monai_app.runtime"):
        runtime = load_runtime("openvino", lung, CovidClassifier().eval(), ("a" * 64, "b" * 64),
                               device=torch.device("cpu"), cache_dir=tmp_path)
    assert runtime is None
    assert "runtime openvino unavailable, using PyTorch (openvino: not installed)" in caplog.text
    assert not list(tmp_path.iterdir())  # nothing exported for a runtime that cannot run


def test_an_unwritable_cache_falls_back_to_pytorch(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with caplog.at_level(logging.WARNING, logger="monai_app.runtime"):
        analyser = BundleAnalyser(BUNDLE, "cpu", load_index=False, load_appearance=False, runtime="onnxruntime",
                                  runtime_cache=blocker / "cache")
    assert analyser.runtime == "pytorch"
    assert "runtime onnxruntime unavailable, using PyTorch" in caplog.text


def test_pytorch_and_gpu_devices_export_nothing(tmp_path: Path) -> None:
    lung = torch.nn.Conv2d(1, 1, 3, padding=1).eval()
    for name, device in (("pytorch", "cpu"), ("auto", "cuda")):
        assert load_runtime(name, lung, CovidClassifier().eval(), ("a" * 64, "b" * 64), device=torch.device(device),
                            cache_dir=tmp_path) is None
    assert not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match='"name" must be one of'):
        load_runtime("tensorrt", lung, CovidClassifier().eval(), ("a" * 64, "b" * 64), device=torch.device("cpu"))

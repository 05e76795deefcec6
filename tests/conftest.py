"""Fixtures only (thin wrappers over ``testkit``), and the ``integration`` marker for tests/integration."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from testkit.bundle import write_tiny_classification_dataset
from testkit.orthanc import OrthancServer
from testkit.pacs import LoadedPacs, start_loaded_pacs
from testkit.peers import NodeProcess
from testkit.shared_data import ENV_VAR, shared_data_dir
from testkit.sr import strict_writing_validation

torch.set_num_threads(2)  # the CI machine's cores; more threads only contend


@pytest.fixture(autouse=True, scope="session")
def runtime_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Networks exported for ONNX Runtime / OpenVINO go to this session's temp folder (nodes started
    as processes inherit it), not the user's cache, unless CXR_RUNTIME_CACHE names one."""
    from monai_app.runtime import CACHE_ENV

    if os.environ.get(CACHE_ENV):
        yield
        return
    os.environ[CACHE_ENV] = str(tmp_path_factory.mktemp("runtime"))
    yield
    del os.environ[CACHE_ENV]

INTEGRATION_DIR = Path(__file__).resolve().parent / "integration"


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything under tests/integration is marked ``integration``; the rest are unit tests."""
    for item in items:
        if item.path.is_relative_to(INTEGRATION_DIR):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared data folder; fails clearly when it is missing."""
    path = shared_data_dir()
    if not (path / "manifest.csv").is_file():
        pytest.fail(f"shared data not found at {path}; set {ENV_VAR} to its folder")
    return path


@pytest.fixture(scope="session")
def shared_dicom_files(shared_data: Path) -> list[Path]:
    return sorted((shared_data / "dicom").rglob("*.dcm"))


@pytest.fixture
def start_node(tmp_path: Path) -> Iterator:
    """Factory: ``start_node(spool=None, *extra_args)`` starts a node; all are stopped at teardown."""
    nodes: list[NodeProcess] = []

    def start(spool: Path | None = None, *extra_args: str) -> NodeProcess:
        node = NodeProcess(spool or tmp_path / "spool", tmp_path / f"node{len(nodes)}.log", extra_args)
        nodes.append(node)
        return node.start()

    yield start
    for node in nodes:
        node.kill()


@pytest.fixture(scope="session")
def require_dcmtk() -> None:
    if shutil.which("dcmdump", path="/usr/bin") is None:
        pytest.fail("DCMTK is not installed: run scripts/setup.sh")


@pytest.fixture
def strict_writing() -> Iterator[None]:
    """Any invalid value highdicom or the builder sets fails the test."""
    with strict_writing_validation():
        yield


@pytest.fixture(scope="module")
def tiny_classification_dataset(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few real labelled images per split and source at 64x64, with their manifest (one per module)."""
    root = tmp_path_factory.mktemp("tiny_cls_data")
    write_tiny_classification_dataset(shared_data, root)
    return root


@pytest.fixture(scope="session")
def loaded_pacs(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoadedPacs]:
    """A real Orthanc with a few dozen DX studies made from shared images (and three to skip), once per session."""
    pacs = start_loaded_pacs(tmp_path_factory.mktemp("pacs"), shared_data)
    yield pacs
    pacs.orthanc.stop()


@pytest.fixture
def orthanc_pacs(tmp_path: Path) -> Iterator[OrthancServer]:
    """A started Orthanc that takes C-STOREs from the node (``CXR_AI``); stopped after the test."""
    server = OrthancServer(tmp_path / "orthanc", calling_ae_titles=("CXR_AI",)).start()
    yield server
    server.stop()

"""Fixtures shared by the tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.shared_data import ENV_VAR, shared_data_dir

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared data folder; fails clearly when it is missing."""
    path = shared_data_dir()
    if not (path / "manifest.csv").is_file():
        pytest.fail(f"shared data not found at {path}; set {ENV_VAR} to its folder")
    return path

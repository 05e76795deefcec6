"""Where the tests find the shared data set (never copied into the repository), and the repository root."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
"""Root of this repository (clone or worktree)."""
ENV_VAR = "CXR_SHARED_DATA"
"""Environment variable that overrides the location of the shared data."""


def shared_data_dir() -> Path:
    """The shared data folder: ``$CXR_SHARED_DATA``, else ``<repo>/../shared/data``."""
    override = os.environ.get(ENV_VAR)
    return Path(override).resolve() if override else REPO_ROOT.parent / "shared" / "data"

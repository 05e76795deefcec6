"""The spool's exclusive lock, in one process (each SpoolOwnership is its own open file)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dicom_node.errors import SpoolError
from dicom_node.spool.owner import LOCK_FILE, SpoolOwnership


def test_second_owner_is_refused_until_the_first_releases(tmp_path: Path) -> None:
    first = SpoolOwnership(tmp_path).acquire()
    with pytest.raises(SpoolError, match=rf"in use by another cxr-node serve \(pid {os.getpid()}\)"):
        SpoolOwnership(tmp_path).acquire()
    first.release()
    with SpoolOwnership(tmp_path) as second:
        assert second.held
    assert not second.held


def test_lock_file_holds_the_owner_pid_and_is_created_with_the_spool(tmp_path: Path) -> None:
    root = tmp_path / "new" / "spool"
    with SpoolOwnership(root):
        assert (root / LOCK_FILE).read_text() == f"{os.getpid()}\n"

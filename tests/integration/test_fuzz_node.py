"""A short seeded run of scripts/fuzz_node.py: the node stays up, Success reads back, no canary in the log."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from testkit.shared_data import REPO_ROOT


def _fuzz(out: Path, *args: str, timeout: float) -> dict:
    result = subprocess.run(
        [sys.executable, "-W", "ignore", "-m", "scripts.fuzz_node", "--out", str(out), *args],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout,
    )
    report = json.loads((out / "fuzz_report.json").read_text())
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    return report


@pytest.mark.parametrize(
    ("args", "min_cases"),
    [
        (("--cases", "300", "--seed", "11", "--no-analysis", "--time-limit", "120", "--retries", "2"), 300),
        (("--cases", "20", "--seed", "12", "--analysis", "--settle", "180"), 20),
    ],
    ids=["receive-only", "with-analysis"],
)
def test_a_short_fuzz_run_keeps_every_invariant(tmp_path: Path, args: tuple[str, ...], min_cases: int) -> None:
    report = _fuzz(tmp_path / "fuzz", *args, timeout=400)
    assert report["cases"] >= min_cases
    assert report["restarts"] == 0
    assert report["unreadable_success"] == []
    assert report["dcmdump_failures"] == [], "DCMTK must read every instance answered Success too"
    assert report["canary_hits"] == 0
    assert report["unframed_lines"] == 0
    assert report["not_final"] == []
    assert len(report["outcomes"]) > 2, "the mutants should draw more than one kind of answer"

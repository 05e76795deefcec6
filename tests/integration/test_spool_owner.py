"""One owner per spool: a second ``serve`` on a spool in use stops at once; ``kill -9`` frees it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from testkit.peers import echo_ok, free_port
from testkit.shared_data import REPO_ROOT


def _serve(spool: Path, port: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dicom_node", "serve", "--bind", "127.0.0.1", "--port", str(port),
         "--spool", str(spool), "--no-analysis"],
        capture_output=True, text=True, timeout=60, cwd=REPO_ROOT,
    )


def test_a_second_node_on_a_spool_in_use_stops_with_exit_2_naming_the_owner(start_node, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    first = start_node(spool)

    second = _serve(spool, free_port())

    assert second.returncode == 2, second.stderr
    assert f"is in use by another cxr-node serve (pid {first.process.pid})" in second.stderr
    assert echo_ok(first.port), "the owner goes on"
    status = subprocess.run([sys.executable, "-m", "dicom_node", "status", "--json", "--spool", str(spool)],
                            capture_output=True, text=True, check=True, cwd=REPO_ROOT)
    assert json.loads(status.stdout)["jobs"]["instances"] == 0  # status reads beside the owner


def test_kill_9_frees_the_spool_for_the_next_node(start_node, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    first = start_node(spool)
    first.kill9()

    restarted = start_node(spool)  # raises if it does not listen

    assert echo_ok(restarted.port)
    assert (spool / "serve.lock").read_text().strip() == str(restarted.process.pid)

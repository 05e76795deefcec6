"""The analysis runs in a child process at a lower priority, dies with its node, and cannot take the receiver with it."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from dicom_node.analyse.process import ANALYSIS_NICENESS
from dicom_node.spool import JobState, Spool
from testkit.peers import NodeProcess, dcmtk, dcmtk_env, free_port, wait_for
from testkit.sr import CANON_DX, DICOM_DIR


def _stat(pid: int | str, task: int | str | None = None) -> list[str]:
    """Fields of /proc/PID[/task/TID]/stat after the command name (state first)."""
    path = Path(f"/proc/{pid}") / (f"task/{task}/stat" if task is not None else "stat")
    return path.read_text().rsplit(")", 1)[1].split()


def _nice(pid: int | str, task: int | str | None = None) -> int:
    return int(_stat(pid, task)[16])  # field 19 of proc(5)


def _analysis_child(pid: int) -> int:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    (child,) = [int(c) for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]
    return child


def _gone(pid: int) -> bool:
    try:
        return _stat(pid)[0] in ("Z", "X")  # a zombie has ended; nobody may reap it in a container
    except FileNotFoundError:
        return True


def test_the_models_run_in_a_child_at_lower_priority_that_ends_with_a_killed_node(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "spool", tmp_path / "node.log", ("--analysis", "--device", "cpu"))
    try:
        node.start(timeout=120)
        assert node.process is not None
        pid = node.process.pid
        child = _analysis_child(pid)
        assert f"analysis process: pid={child} nice=+{ANALYSIS_NICENESS}" in node.log()
        # Every thread of the child (PyTorch's and OpenVINO's too) is niced; none of the node's is.
        assert {_nice(child, t.name) for t in Path(f"/proc/{child}/task").iterdir()} == {_nice(pid) + ANALYSIS_NICENESS}
        assert {_nice(pid, t.name) for t in Path(f"/proc/{pid}/task").iterdir()} == {_nice(pid)}
        # A stop for the whole process group (Ctrl-C, systemd) is the node's to act on, not the child's.
        os.kill(child, signal.SIGTERM)
        os.kill(child, signal.SIGINT)
        time.sleep(1)
        assert not _gone(child)
        node.kill9()
        assert wait_for(lambda: _gone(child), 10), "the analysis process outlived its node"
    finally:
        node.kill()


def test_a_node_whose_analysis_process_died_keeps_receiving_says_so_and_starts_another(tmp_path: Path) -> None:
    metrics_port = free_port()
    node = NodeProcess(
        tmp_path / "spool", tmp_path / "node.log", ("--analysis", "--device", "cpu", "--metrics-port", str(metrics_port))
    )
    try:
        node.start(timeout=120)
        assert node.process is not None
        first = _analysis_child(node.process.pid)
        os.kill(first, signal.SIGKILL)
        assert wait_for(lambda: "analysis process exited" in node.log(), 10), node.log()
        sent = subprocess.run(
            [dcmtk("dcmsend"), "-aet", "PORTABLE_DX1", "-aec", "CXR_AI", "127.0.0.1", str(node.port),
             str(DICOM_DIR / CANON_DX)],
            capture_output=True, text=True, env=dcmtk_env(), timeout=60,
        )
        assert sent.returncode == 0, sent.stderr
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/readyz", timeout=5)
        assert refused.value.code == 503
        assert refused.value.read().decode() == "analysis process exited\n"
        # A new child comes up after the first delay and analyses what arrived meanwhile.
        assert wait_for(lambda: "analysis process restarted (restart 1)" in node.log(), 120), node.log()
        assert _analysis_child(node.process.pid) != first
        spool = Spool(tmp_path / "spool")
        assert wait_for(lambda: not list(spool.jobs(JobState.RECEIVED)) and not list(spool.jobs(JobState.PROCESSING)),
                        120), node.log()
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/readyz", timeout=5) as ready:
            assert ready.status == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as scraped:
            assert "cxr_analysis_restarts_total 1.0" in scraped.read().decode()
        assert node.terminate() == 0
    finally:
        node.kill()

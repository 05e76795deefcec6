"""CPU and memory of a process and its children, from /proc (what the benchmarks report)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from testkit.process_tree import cpu_seconds, machine_busy_cpu_seconds, process_tree

# A parent that starts a child which spins for a while, then both wait to be killed.
_SPINNING_CHILD = (
    "import subprocess, sys, time; "
    "subprocess.Popen([sys.executable, '-c', 'import time\\nend = time.process_time() + 0.8\\n"
    "while time.process_time() < end: pass\\ntime.sleep(60)']); time.sleep(60)"
)


def test_cpu_seconds_counts_the_children_of_the_process() -> None:
    parent = subprocess.Popen([sys.executable, "-c", _SPINNING_CHILD])
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and cpu_seconds(parent.pid) < 0.5:
            time.sleep(0.1)
        assert len(process_tree(parent.pid)) == 2
        # The child's spin (0.8 s of its own CPU time; /proc counts in clock ticks), not the sleeping parent's.
        assert cpu_seconds(parent.pid) >= 0.5
    finally:
        for pid in reversed(process_tree(parent.pid)):
            subprocess.run(["kill", "-9", str(pid)], check=False)
        parent.wait()


def test_machine_busy_seconds_leave_out_idle_and_iowait(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    # user nice system idle iowait irq softirq steal (ticks)
    stat.write_text("cpu  100 20 30 5000 700 1 2 3 0 0\ncpu0 50 10 15 2500 350 1 1 2 0 0\n")
    ticks = 100 + 20 + 30 + 1 + 2 + 3
    assert machine_busy_cpu_seconds(stat) == ticks / os.sysconf("SC_CLK_TCK")

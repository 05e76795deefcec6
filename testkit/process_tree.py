"""A process and its descendants, from ``/proc``: the node is its receiver and its analysis child."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path


def process_tree(pid: int) -> list[int]:
    """``pid`` and every live descendant of it (the node's analysis process among them)."""
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        try:
            for task in Path(f"/proc/{current}/task").iterdir():
                todo.extend(int(c) for c in (task / "children").read_text().split())
        except OSError:
            continue  # ended meanwhile
    return tree


def status_sum(pid: int, keys: Iterable[str]) -> dict[str, int]:
    """``/proc/PID/status`` fields (``VmRSS``, ``VmHWM`` in KiB, ``Threads``) summed over
    :func:`process_tree`; processes that ended meanwhile count 0."""
    wanted = set(keys)
    total = dict.fromkeys(wanted, 0)
    for member in process_tree(pid):
        try:
            lines = Path(f"/proc/{member}/status").read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            key, _, rest = line.partition(":")
            if key in wanted:
                total[key] += int(rest.split()[0])
    return total


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its live descendants (every thread of each);
    processes that ended meanwhile count 0."""
    ticks = 0
    for member in process_tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return ticks / _CLOCK_TICKS


def machine_busy_cpu_seconds(stat: Path = Path("/proc/stat")) -> float:
    """CPU seconds every core of the machine has spent busy since boot (all but idle and iowait)."""
    fields = [int(v) for v in stat.read_text().splitlines()[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / _CLOCK_TICKS


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

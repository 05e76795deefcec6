"""A process and its descendants, from ``/proc``: the node is its receiver and its analysis child."""

from __future__ import annotations

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

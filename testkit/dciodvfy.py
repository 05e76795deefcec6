"""Run dicom3tools' ``dciodvfy`` on a written DICOM file and sort its messages."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable
from pathlib import Path

DCIODVFY = "/usr/bin/dciodvfy"


def dciodvfy_messages(path: Path) -> tuple[list[str], list[str]]:
    """The ``Error`` and the ``Warning`` lines ``dciodvfy`` prints for ``path``."""
    result = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60)
    lines = (result.stdout + result.stderr).splitlines()
    return [x for x in lines if x.startswith("Error")], [x for x in lines if x.startswith("Warning")]


def unexplained(warnings: Iterable[str], justified: Iterable[str]) -> list[str]:
    """The warnings that match none of the ``justified`` regular expressions."""
    patterns = list(justified)
    return [w for w in warnings if not any(re.search(p, w) for p in patterns)]

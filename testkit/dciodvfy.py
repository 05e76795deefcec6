"""Run dicom3tools' ``dciodvfy`` on a written DICOM file and sort its messages."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable
from pathlib import Path

DCIODVFY = "/usr/bin/dciodvfy"

# Warnings every object the node makes (SR, summary SC, lung SEG) may get, and why.
JUSTIFIED_FOR_EVERY_OBJECT = (
    # IHE AIR requires Device UID in the algorithm's Contributing Equipment item; this
    # dciodvfy (dicom3tools 2022-06) does not list it there, hence also "Standard Extended".
    r"Attribute is not present in standard DICOM IOD - \(0x0018,0x1002\) UI Device UID",
    r"Dicom dataset contains attributes not present in standard DICOM IOD - "
    r"this is a Standard Extended SOP Class",
    # Copied unchanged from the de-identified sources (empty Type 2 study attributes,
    # single-component patient and physician names such as "Anonymized").
    r"Missing attribute or value that would be needed to build DICOMDIR - "
    r"(Patient ID|Study Date|Study Time|Study ID)",
    r"Value dubious for this VR - \(0x00(10,0x0010|08,0x0090)\) PN .* - Retired Person Name form",
)


def dciodvfy_messages(path: Path) -> tuple[list[str], list[str]]:
    """The ``Error`` and the ``Warning`` lines ``dciodvfy`` prints for ``path``."""
    result = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60)
    lines = (result.stdout + result.stderr).splitlines()
    return [x for x in lines if x.startswith("Error")], [x for x in lines if x.startswith("Warning")]


def unexplained(warnings: Iterable[str], justified: Iterable[str]) -> list[str]:
    """The warnings that match none of the ``justified`` regular expressions."""
    patterns = list(justified)
    return [w for w in warnings if not any(re.search(p, w) for p in patterns)]

"""Checks on the figures (PNG files) that the evaluation writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_valid_png(path: Path, min_bytes: int = 8_000) -> None:
    """``path`` is a PNG that decodes, of non-trivial size, and not a blank canvas."""
    assert path.is_file(), f"{path.name} was not written"
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path.name} is not a PNG"
    assert len(data) >= min_bytes, f"{path.name} has only {len(data)} bytes"
    with Image.open(path) as image:
        image.load()
        assert min(image.size) >= 200
        grey = np.asarray(image.convert("L"))
    assert np.unique(grey).size > 16, f"{path.name} looks blank"

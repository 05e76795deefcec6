"""Inputs for the derived objects (summary picture, summary SC, lung SEG): real radiographs, synthetic maps."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pydicom

from monai_app.data.dicom_image import dicom_to_display
from testkit.sr import DICOM_DIR


@lru_cache(maxsize=4)
def display_pixels(relative: str) -> np.ndarray:
    """The shared radiograph ``relative`` (to ``<shared>/dicom``) as display uint8, 255 = white (cached, read-only)."""
    path = DICOM_DIR / relative
    if not path.is_file():
        import pytest

        pytest.fail(f"shared DICOM file missing: {path} (set CXR_SHARED_DATA)")
    pixels = np.rint(dicom_to_display(pydicom.dcmread(path, force=True)) * 255).astype(np.uint8)
    pixels.setflags(write=False)
    return pixels


def ellipses(rows: int, cols: int) -> np.ndarray:
    """(rows, cols) bool: two upright ellipses where the lungs of a frontal chest film are."""
    y, x = np.mgrid[0:rows, 0:cols]
    cy, ry, rx = rows * 0.48, rows * 0.28, cols * 0.14
    return (np.hypot((y - cy) / ry, (x - cols * 0.32) / rx) < 1) | (np.hypot((y - cy) / ry, (x - cols * 0.68) / rx) < 1)


def lung_probability(rows: int, cols: int) -> np.ndarray:
    """(rows, cols) float in [0, 1]: 0.9 inside :func:`ellipses`, 0.05 outside."""
    return np.where(ellipses(rows, cols), 0.9, 0.05)


def relevance_blob(rows: int, cols: int, centre: tuple[float, float] = (0.5, 0.32), radius: float = 0.15) -> np.ndarray:
    """(rows, cols) float in [0, 1]: a cone, 1 at ``centre`` (fractions of rows, cols), 0 beyond ``radius`` * rows."""
    y, x = np.mgrid[0:rows, 0:cols]
    distance = np.hypot(y - centre[0] * rows, x - centre[1] * cols)
    return np.clip(1.0 - distance / (radius * rows), 0.0, 1.0)

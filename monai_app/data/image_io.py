"""Load any chest X-ray file the project handles (PNG/JPEG or DICOM) into the common space."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from monai_app.data.dicom_image import DEFAULT_PERCENTILES, read_dicom_image
from monai_app.data.raster_image import RASTER_SUFFIXES, read_raster_image
from monai_app.errors import UndecodableImageError


def is_dicom_file(path: str | Path) -> bool:
    """Whether ``path`` is read as DICOM: every file without a PNG/JPEG suffix is (``.dcm``,
    no suffix as in DICOMDIR exports, bare datasets such as old CR files).

    Parameters
    ----------
    path : str or pathlib.Path
        File path.

    Returns
    -------
    bool
        ``True`` for DICOM.
    """
    return Path(path).suffix.lower() not in RASTER_SUFFIXES


def load_chest_xray(
    path: str | Path, percentiles: tuple[float, float] = DEFAULT_PERCENTILES
) -> np.ndarray:
    """Load a PNG/JPEG or DICOM chest X-ray into the common intensity space.

    Parameters
    ----------
    path : str or pathlib.Path
        Image file.
    percentiles : tuple of float
        Fallback percentile window for DICOM without VOI (see :mod:`monai_app.data.dicom_image`).

    Returns
    -------
    numpy.ndarray
        ``float32`` array ``(rows, columns)`` in ``[0, 1]``, 1 = brightest.

    Raises
    ------
    UndecodableImageError
        If the file does not exist or cannot be decoded.
    """
    path = Path(path)
    if not path.is_file():
        raise UndecodableImageError(f"no such image file: {path.name!r}")
    if is_dicom_file(path):
        return read_dicom_image(path, percentiles)
    return read_raster_image(path)

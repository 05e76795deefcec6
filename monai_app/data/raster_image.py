"""Read PNG/JPEG chest X-rays (the shared data set) into the common intensity space.

The common intensity space of the project is a 2-D ``float32`` array in ``[0, 1]`` where
1 is the brightest value (bone white), i.e. an 8-bit grey PNG divided by 255.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from monai_app.errors import UndecodableImageError

RASTER_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
"""File name suffixes read by :func:`read_raster_image` (compared in lower case)."""


def _to_grey(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit grey; alpha is composited on black.

    Parameters
    ----------
    image : PIL.Image.Image
        Image in any mode except 16/32-bit integer grey (handled by the caller).

    Returns
    -------
    PIL.Image.Image
        The image in mode ``"L"`` (colour with the ITU-R 601-2 luma transform).
    """
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("L")
    return image.convert("L")


def raster_to_display(image: Image.Image) -> np.ndarray:
    """Map a decoded PIL image to the common intensity space.

    Parameters
    ----------
    image : PIL.Image.Image
        A decoded image. 16-bit grey images are scaled by 1/65535, everything else is
        converted to 8-bit grey and scaled by 1/255.

    Returns
    -------
    numpy.ndarray
        ``float32`` array of shape ``(rows, columns)`` in ``[0, 1]``.
    """
    if image.mode in ("I;16", "I;16B", "I;16L"):
        return (np.asarray(image, dtype=np.float32) / 65535.0).astype(np.float32)
    if image.mode == "I":
        values = np.asarray(image, dtype=np.float64)
        return np.clip(values / 65535.0, 0.0, 1.0).astype(np.float32)
    grey = image if image.mode == "L" else _to_grey(image)
    return np.asarray(grey, dtype=np.float32) / np.float32(255.0)


def read_raster_image(path: str | Path) -> np.ndarray:
    """Read a PNG or JPEG file into the common intensity space.

    Parameters
    ----------
    path : str or pathlib.Path
        Path of the image file.

    Returns
    -------
    numpy.ndarray
        ``float32`` array of shape ``(rows, columns)`` in ``[0, 1]``.

    Raises
    ------
    UndecodableImageError
        If the file cannot be opened or decoded as an image.
    """
    try:
        with Image.open(path) as image:
            image.load()
            return raster_to_display(image)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise UndecodableImageError(f"cannot decode image file {Path(path).name!r}: {exc}") from exc


def read_mask(path: str | Path) -> np.ndarray:
    """Read a mask PNG as raw 8-bit values (no scaling).

    Parameters
    ----------
    path : str or pathlib.Path
        Path of the mask file (0 background, 255 lung, 127 ignore in the shared data).

    Returns
    -------
    numpy.ndarray
        ``uint8`` array of shape ``(rows, columns)``.
    """
    try:
        with Image.open(path) as image:
            image.load()
            grey = image if image.mode == "L" else image.convert("L")
            return np.asarray(grey, dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise UndecodableImageError(f"cannot decode mask file {Path(path).name!r}: {exc}") from exc

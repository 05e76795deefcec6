"""Geometric normalisation of chest X-rays (Goldstein et al. 2020): crop black borders and
text-only margins, then pad to a square so that resizing keeps the aspect ratio.

All functions are pure and work on arrays whose last two axes are ``(rows, columns)``,
so the same crop and padding can be applied to an image and its mask.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Box(NamedTuple):
    """A half-open pixel box ``[top, bottom) x [left, right)``."""

    top: int
    bottom: int
    left: int
    right: int


def _content_span(fraction: np.ndarray, min_fraction: float, max_crop: int) -> tuple[int, int]:
    """First and one-past-last index whose ``fraction`` reaches ``min_fraction``.

    At most ``max_crop`` indices are removed from either end; without any content line
    the full span is returned.
    """
    n = fraction.shape[0]
    content = np.flatnonzero(fraction >= min_fraction)
    if content.size == 0:
        return 0, n
    start = min(int(content[0]), max_crop)
    stop = max(int(content[-1]) + 1, n - max_crop)
    return start, stop


def content_box(
    image: np.ndarray,
    dark_threshold: float = 0.05,
    min_content_fraction: float = 0.1,
    max_crop_fraction: float = 0.25,
) -> Box:
    """Find the box left after trimming black borders and text-only margins.

    A row (column) is *margin* when fewer than ``min_content_fraction`` of its pixels are
    brighter than ``dark_threshold``: black borders have none, text-only margins (burnt-in
    letters on black) only a few. Margin lines are trimmed from each edge inward, never
    more than ``max_crop_fraction`` of the size per edge.

    Parameters
    ----------
    image : numpy.ndarray
        2-D image in ``[0, 1]`` (1 = brightest).
    dark_threshold : float
        Pixels at or below this value count as black.
    min_content_fraction : float
        Minimum fraction of non-black pixels for a line to count as image content.
    max_crop_fraction : float
        Largest fraction of the rows (columns) removed from any one edge.

    Returns
    -------
    Box
        The box to keep.

    Raises
    ------
    ValueError
        If ``image`` is not 2-D or a fraction argument is outside ``[0, 0.5]``/``[0, 1]``.

    Examples
    --------
    >>> img = np.zeros((10, 10)); img[2:8, 3:9] = 0.5
    >>> content_box(img, max_crop_fraction=0.5)
    Box(top=2, bottom=8, left=3, right=9)
    """
    if image.ndim != 2:
        raise ValueError(f'Argument "image" must be 2-D, got shape {image.shape}')
    if not 0.0 <= max_crop_fraction <= 0.5:
        raise ValueError('Argument "max_crop_fraction" must be in [0, 0.5]')
    if not 0.0 <= min_content_fraction <= 1.0:
        raise ValueError('Argument "min_content_fraction" must be in [0, 1]')
    bright = image > dark_threshold
    rows, cols = image.shape
    # int32 counts per line (at most one line's length), then one division: bright.mean's values at half its time
    top, bottom = _content_span(
        bright.sum(axis=1, dtype=np.int32) / cols, min_content_fraction, int(max_crop_fraction * rows)
    )
    left, right = _content_span(
        bright.sum(axis=0, dtype=np.int32) / rows, min_content_fraction, int(max_crop_fraction * cols)
    )
    return Box(top, bottom, left, right)


def crop_to_box(array: np.ndarray, box: Box) -> np.ndarray:
    """Crop the last two axes of ``array`` to ``box``.

    Parameters
    ----------
    array : numpy.ndarray
        Array of shape ``(..., rows, columns)``.
    box : Box
        Box to keep.

    Returns
    -------
    numpy.ndarray
        A view of shape ``(..., box.bottom - box.top, box.right - box.left)``.
    """
    return array[..., box.top : box.bottom, box.left : box.right]


def square_padding(rows: int, columns: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Padding ``((top, bottom), (left, right))`` that centres a rows x columns image in a square.

    Examples
    --------
    >>> square_padding(4, 7)
    ((1, 2), (0, 0))
    """
    size = max(rows, columns)
    d_rows, d_cols = size - rows, size - columns
    return (d_rows // 2, d_rows - d_rows // 2), (d_cols // 2, d_cols - d_cols // 2)


def pad_to_square(array: np.ndarray, value: float = 0.0) -> np.ndarray:
    """Pad the last two axes of ``array`` with ``value`` to a centred square.

    Parameters
    ----------
    array : numpy.ndarray
        Array of shape ``(..., rows, columns)``.
    value : float
        Fill value (0 = black for images, background for masks).

    Returns
    -------
    numpy.ndarray
        Array of shape ``(..., s, s)`` with ``s = max(rows, columns)``; same dtype.
    """
    rows, cols = array.shape[-2:]
    pad = ((0, 0),) * (array.ndim - 2) + square_padding(rows, cols)
    return np.pad(array, pad, mode="constant", constant_values=value)

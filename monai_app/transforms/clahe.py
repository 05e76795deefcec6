"""Contrast Limited Adaptive Histogram Equalisation (CLAHE) for images in ``[0, 1]``.

A small numpy implementation (Zuiderveld 1994): per-tile clipped histograms, their
cumulative distributions as mappings, and bilinear interpolation between the mappings
of the four nearest tile centres. Clipped counts are redistributed uniformly.
"""

from __future__ import annotations

import numpy as np


def _tile_mappings(
    levels: np.ndarray, grid: tuple[int, int], clip_limit: float, n_bins: int
) -> np.ndarray:
    """Equalisation mapping of every tile: shape ``(grid_rows, grid_cols, n_bins)``."""
    g_rows, g_cols = grid
    t_rows, t_cols = levels.shape[0] // g_rows, levels.shape[1] // g_cols
    blocks = levels.reshape(g_rows, t_rows, g_cols, t_cols).transpose(0, 2, 1, 3)
    tiles = blocks.reshape(g_rows * g_cols, t_rows * t_cols)
    offsets = np.arange(g_rows * g_cols)[:, None] * n_bins
    hist = np.bincount((tiles + offsets).ravel(), minlength=g_rows * g_cols * n_bins)
    hist = hist.reshape(g_rows * g_cols, n_bins).astype(np.float64)
    pixels = t_rows * t_cols
    limit = max(clip_limit * pixels, 1.0)
    excess = np.clip(hist - limit, 0, None).sum(axis=1, keepdims=True)
    hist = np.minimum(hist, limit) + excess / n_bins
    cdf = np.cumsum(hist, axis=1) / pixels
    return cdf.reshape(g_rows, g_cols, n_bins)


def _interpolation_weights(size: int, tile: int, n_tiles: int) -> tuple[np.ndarray, ...]:
    """Lower/upper tile index and upper weight for each pixel along one axis."""
    centre = (np.arange(size) + 0.5) / tile - 0.5
    lower = np.clip(np.floor(centre), 0, n_tiles - 1).astype(int)
    upper = np.minimum(lower + 1, n_tiles - 1)
    weight = np.clip(centre - lower, 0.0, 1.0)
    return lower, upper, weight


def clahe(
    image: np.ndarray,
    clip_limit: float = 0.01,
    grid: tuple[int, int] = (8, 8),
    n_bins: int = 256,
) -> np.ndarray:
    """Apply CLAHE to a 2-D image in ``[0, 1]``.

    Parameters
    ----------
    image : numpy.ndarray
        2-D image in ``[0, 1]``.
    clip_limit : float
        Histogram clip limit as a fraction of a tile's pixels (as in scikit-image); larger
        values give more contrast, ``1.0`` is plain adaptive equalisation.
    grid : tuple of int
        Number of tiles along rows and columns.
    n_bins : int
        Number of grey levels of the histograms.

    Returns
    -------
    numpy.ndarray
        ``float32`` image of the same shape, in ``[0, 1]``.

    Raises
    ------
    ValueError
        If ``image`` is not 2-D, ``clip_limit`` is not positive or ``grid`` is not positive.
    """
    if image.ndim != 2:
        raise ValueError(f'Argument "image" must be 2-D, got shape {image.shape}')
    if clip_limit <= 0:
        raise ValueError('Argument "clip_limit" must be > 0')
    if min(grid) < 1 or n_bins < 2:
        raise ValueError('Arguments "grid" and "n_bins" must be positive (n_bins >= 2)')
    rows, cols = image.shape
    g_rows, g_cols = min(grid[0], rows), min(grid[1], cols)
    t_rows, t_cols = -(-rows // g_rows), -(-cols // g_cols)
    levels = np.clip(np.rint(np.asarray(image, np.float64) * (n_bins - 1)), 0, n_bins - 1)
    levels = levels.astype(np.int64)
    padded = np.pad(
        levels, ((0, t_rows * g_rows - rows), (0, t_cols * g_cols - cols)), mode="reflect"
    )
    maps = _tile_mappings(padded, (g_rows, g_cols), clip_limit, n_bins)
    r0, r1, wr = _interpolation_weights(rows, t_rows, g_rows)
    c0, c1, wc = _interpolation_weights(cols, t_cols, g_cols)
    wr, wc = wr[:, None], wc[None, :]
    top = (1 - wc) * maps[r0[:, None], c0[None, :], levels] + wc * maps[
        r0[:, None], c1[None, :], levels
    ]
    bottom = (1 - wc) * maps[r1[:, None], c0[None, :], levels] + wc * maps[
        r1[:, None], c1[None, :], levels
    ]
    return np.clip((1 - wr) * top + wr * bottom, 0.0, 1.0).astype(np.float32)

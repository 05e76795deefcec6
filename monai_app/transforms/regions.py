"""The region of highest relevance of a map, as one closed outline (pure: numpy and scipy, no torch).

The outline is what the node's SR draws on the radiograph as "the region the model looked
at"; map it to the source image with :meth:`monai_app.transforms.geometry.ModelGrid.points_to_source`.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

REGION_LEVEL = 0.5
"""Share of the map's maximum above which a pixel belongs to the region (half maximum)."""
REGION_SIGMAS = 2.0
"""Semi-axes of the region's ellipse in standard deviations: the edge of a filled ellipse."""
REGION_POINTS = 32
"""Points sampled on the region's outline (the closing point is added to them)."""
_PIXEL_VARIANCE = 1.0 / 12.0  # second moment of one pixel of width 1 about its centre


def relevance_region(
    relevance: np.ndarray,
    level: float = REGION_LEVEL,
    n_points: int = REGION_POINTS,
    bounds: tuple[float, float, float, float] | None = None,
) -> np.ndarray | None:
    """The region of highest relevance as a closed outline: the ellipse of its second moments.

    The region is the 8-connected component, containing the maximum, of the pixels at or
    above ``level`` times the maximum. It is drawn as the ellipse with the region's centre and
    covariance and semi-axes of 2 standard deviations: for a filled ellipse this is exactly its
    edge (variance a^2/4 along a semi-axis a), so the outline has the region's area,
    position and orientation without following the jagged edges of a map computed on a 7 x 7 grid.

    Parameters
    ----------
    relevance : numpy.ndarray
        ``(rows, columns)`` map, higher = more relevant (e.g. a :class:`GradCamRelevance` map).
    level : float
        Threshold as a share of the maximum, in (0, 1].
    n_points : int
        Points on the ellipse (at least 4); the first point is repeated at the end.
    bounds : tuple of float, optional
        ``(top, bottom, left, right)`` the outline is clipped to, in the map's coordinates
        (e.g. :meth:`~monai_app.transforms.geometry.ModelGrid.content_bounds`); default the map.

    Returns
    -------
    numpy.ndarray or None
        ``(n_points + 1, 2)`` float64 ``(row, column)`` in the SCOORD convention (pixel ``i``
        spans ``[i, i + 1)``), closed; ``None`` for a map without a maximum above its minimum.

    Raises
    ------
    ValueError
        If ``relevance`` is not a finite 2-D map or an argument is out of range.

    Examples
    --------
    >>> blob = np.zeros((9, 9)); blob[3:6, 3:6] = 1.0
    >>> outline = relevance_region(blob, n_points=4)
    >>> outline.round(2).tolist()
    [[6.23, 4.5], [4.5, 6.23], [2.77, 4.5], [4.5, 2.77], [6.23, 4.5]]
    """
    values = np.asarray(relevance, np.float64)
    if values.ndim != 2 or not np.isfinite(values).all():
        raise ValueError(f"relevance must be a finite 2-D map, got shape {values.shape}")
    if not 0.0 < level <= 1.0:
        raise ValueError(f'Argument "level" must be in (0, 1], got {level}')
    if n_points < 4:
        raise ValueError(f'Argument "n_points" must be >= 4, got {n_points}')
    peak = float(values.max())
    if peak <= 0.0 or peak <= float(values.min()):
        return None
    labels, _ = ndimage.label(values >= level * peak, structure=np.ones((3, 3), bool))
    rows, cols = np.nonzero(labels == labels[np.unravel_index(np.argmax(values), values.shape)])
    centres = np.stack([rows, cols], axis=1) + 0.5
    mean = centres.mean(axis=0)
    # Population covariance of the pixel centres plus each pixel's own extent: one pixel
    # still gives an ellipse of about its size.
    covariance = np.cov(centres, rowvar=False, bias=True).reshape(2, 2) + _PIXEL_VARIANCE * np.eye(2)
    variances, axes = np.linalg.eigh(covariance)
    semi_axes = REGION_SIGMAS * np.sqrt(np.clip(variances, 0.0, None))
    angles = 2.0 * np.pi * np.arange(n_points) / n_points
    unit = np.stack([np.cos(angles), np.sin(angles)], axis=1) * semi_axes
    outline = mean + unit @ axes.T
    top, bottom, left, right = bounds if bounds is not None else (0.0, values.shape[0], 0.0, values.shape[1])
    outline[:, 0] = np.clip(outline[:, 0], top, bottom)
    outline[:, 1] = np.clip(outline[:, 1], left, right)
    return np.vstack([outline, outline[:1]])

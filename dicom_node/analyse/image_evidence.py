"""What the worker draws and outlines on the source image: relevance, lungs and a region (pure).

The models work on the classifier's input grid (crop, square pad, resize); the summary image,
the segmentation and the SR's coordinates are on the source image's pixel grid. The prepared
image knows the way back (its ``grid``); this module asks it and picks the region the report
outlines: where the classifier looked, or else the lung fields.
"""

from __future__ import annotations

import numpy as np

from dicom_node.analyse.analyser import PreparedImage
from dicom_node.report.result import ImageEvidence
from dicom_node.report.sr import ImageRegion
from monai_app.transforms.geometry import GridMap
from monai_app.transforms.lung_fields import LUNG_LEVEL
from monai_app.transforms.regions import relevance_region

RELEVANCE_REGION = "region of highest classifier relevance (Grad-CAM)"
LUNG_FIELDS_REGION = "lung fields found by the U-Net (bounding box)"


def lung_box(lung: np.ndarray, level: float = LUNG_LEVEL) -> np.ndarray | None:
    """The bounding box of ``lung >= level`` as four (row, column) corners; ``None`` without lung.

    >>> lung = np.zeros((8, 8)); lung[2:5, 1:7] = 1
    >>> lung_box(lung).tolist()
    [[2.0, 1.0], [2.0, 7.0], [5.0, 7.0], [5.0, 1.0]]
    """
    rows = np.flatnonzero((lung >= level).any(axis=1))
    columns = np.flatnonzero((lung >= level).any(axis=0))
    if rows.size == 0:
        return None
    top, bottom, left, right = float(rows[0]), float(rows[-1] + 1), float(columns[0]), float(columns[-1] + 1)
    return np.array([[top, left], [top, right], [bottom, right], [bottom, left]])


def image_evidence(image: PreparedImage, relevance: np.ndarray | None) -> ImageEvidence | None:
    """Relevance and lung maps on the source grid, and the region the report outlines.

    Parameters
    ----------
    image : PreparedImage
        From :meth:`Analyser.prepare`, with ``source_image``, ``grid`` and ``lung_probability``.
    relevance : numpy.ndarray or None
        The prediction's relevance map on the model grid (``None``: not computed).

    Returns
    -------
    ImageEvidence or None
        ``None`` when the analyser gives no source image or grid (nothing to draw on).
    """
    source_image, grid = image.source_image, image.grid
    if source_image is None or grid is None:
        return None
    lung_model = np.asarray(image.lung_probability, dtype=np.float32)
    region = None
    if relevance is not None:
        # Clipped to the image content: a peak next to the edge must not outline the padding.
        outline = relevance_region(relevance, bounds=grid.content_bounds())
        if outline is not None:
            region = _region(grid.points_to_source(outline), RELEVANCE_REGION, source_image.shape)
    if region is None:
        box = lung_box(lung_model)
        if box is not None:
            region = _region(grid.points_to_source(box), LUNG_FIELDS_REGION, source_image.shape)
    return ImageEvidence(  # the maps stay on the model grid until drawn: the picture is 1024 px, not 5 M pixels
        source_image=source_image,
        relevance=None if relevance is None else GridMap(grid, np.asarray(relevance, dtype=np.float32)),
        lung=GridMap(grid, lung_model),
        region=region,
    )


def _region(points: np.ndarray, description: str, shape: tuple[int, ...]) -> ImageRegion | None:
    # Clipped to the image: a SCOORD must lie on it, and the grid's padding lies outside.
    rows, columns = shape[:2]
    clipped = np.column_stack([np.clip(points[:, 0], 0, rows), np.clip(points[:, 1], 0, columns)])
    if len({(round(r, 3), round(c, 3)) for r, c in clipped}) < 3:
        return None
    return ImageRegion(tuple((float(r), float(c)) for r, c in clipped), description)

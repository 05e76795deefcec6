"""Lung fields in the U-Net's lung map: does it look like the two lungs of a frontal chest radiograph?

A pure function over the probability map the U-Net already computes for the classifier
(channel 1 of the classifier input). The U-Net was trained on chest radiographs only, so on
anything else it still paints "lung" somewhere: a single blob, specks, or noise. These rules
catch those gross failures: two fields, one each side of the midline, each of plausible
size and height. They do not catch an image whose map happens to look like two lungs (a hip,
a leg, a panoramic dental film do; see ``scripts/measure_applicability.py``): that is the job
of :mod:`monai_app.transforms.chest_appearance`.

The limits are wide on purpose: measured over the 1,066 shared frontal chest images, the
smallest field covers 3.4 % of the picture at the 0.5th percentile of fields and centroids
lie between 0.14 and 0.87 of the width (see docs/operations.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

LUNG_LEVEL = 0.5
"""Probability at or above which a pixel is lung."""
MIN_COMPONENT = 0.005
"""Components below this share of the picture are specks, not fields."""
MIN_FIELD = 0.02
"""Each lung field covers at least this share of the picture."""
MIN_AREA_RATIO = 0.1
"""The smaller field is at least this fraction of the larger one."""
MIN_FIELD_SHARE = 0.6
"""The two fields hold at least this share of all lung pixels (else it is scattered noise)."""
MAX_LUNG_FRACTION = 0.65
"""More lung than this share of the picture is not a radiograph's lungs."""
EDGE_MARGIN = 0.1
"""A field's centre within this share of the width from the left or right edge is off the chest."""
HEIGHT_RANGE = (0.15, 0.8)
"""Allowed centre height of each field (share of the picture height from the top)."""
WAIST = 0.4
"""A single field crossing the midline is two fused lungs when its narrowest central column
holds at most this share of its tallest column (the bridge at the apex or the trachea)."""


@dataclass(frozen=True)
class Field:
    """One connected region of lung: its share of the picture and its centre (shares of width and height)."""

    area: float
    x: float
    y: float


@dataclass(frozen=True)
class LungFields:
    """What the lung map shows: the left and right fields (image left/right), all lung, and a verdict."""

    lung_fraction: float
    left: Field | None
    right: Field | None
    field_share: float  # share of all lung pixels in the two fields
    problem: str  # "" when the map looks like two lungs

    @property
    def plausible(self) -> bool:
        """The map looks like the lungs of a frontal chest radiograph."""
        return not self.problem

    def summary(self) -> str:
        """Short text of the measurements for a reason or a log line (no patient data).

        >>> LungFields(0.3, Field(0.15, 0.3, 0.45), Field(0.14, 0.7, 0.46), 1.0, "").summary()
        '30% lung, left 15% at (0.30, 0.45), right 14% at (0.70, 0.46)'
        """
        def side(name: str, f: Field | None) -> str:
            return f"{name} none" if f is None else f"{name} {f.area:.0%} at ({f.x:.2f}, {f.y:.2f})"

        return f"{self.lung_fraction:.0%} lung, {side('left', self.left)}, {side('right', self.right)}"


def _split_fused(mask: np.ndarray) -> np.ndarray:
    """Cut each component that crosses the midline at its narrowest central column, if it has a waist there."""
    labels, count = ndimage.label(mask)
    width = mask.shape[1]
    lo, hi = int(width * 0.35), int(width * 0.65)
    split = mask.copy()
    for index in range(1, count + 1):
        columns = (labels == index).sum(axis=0)
        if not columns[width // 2]:
            continue  # does not cross the midline
        cut = lo + int(np.argmin(columns[lo:hi]))
        if columns[cut] <= WAIST * columns.max():  # no waist: one blob, not two fused lungs
            split[labels[:, cut] == index, cut] = False
    return split


def _fields(mask: np.ndarray) -> list[Field]:
    labels, count = ndimage.label(mask)
    rows, columns = mask.shape
    found = []
    for index in range(1, count + 1):
        ys, xs = np.nonzero(labels == index)
        found.append(Field(len(ys) / mask.size, float(xs.mean()) / columns, float(ys.mean()) / rows))
    return [f for f in found if f.area >= MIN_COMPONENT]


def _sides(fields: list[Field]) -> tuple[Field | None, Field | None]:
    left = max((f for f in fields if f.x < 0.5), key=lambda f: f.area, default=None)
    right = max((f for f in fields if f.x >= 0.5), key=lambda f: f.area, default=None)
    return left, right


def measure_lung_fields(lung: np.ndarray, level: float = LUNG_LEVEL) -> LungFields:
    """Measure the lung fields of a U-Net lung probability map and judge them.

    Parameters
    ----------
    lung : numpy.ndarray
        ``(rows, columns)`` lung probability in [0, 1] (or a boolean mask).
    level : float
        Probability at or above which a pixel is lung.

    Returns
    -------
    LungFields
        The largest field on each side of the midline and ``problem``: ``""`` when the map
        looks like two lungs, else what is wrong ("one field", "fields too small", ...).

    Examples
    --------
    >>> m = np.zeros((100, 100)); m[20:75, 15:42] = 1; m[20:75, 58:85] = 1
    >>> measure_lung_fields(m).problem
    ''
    >>> m[:, 40:60] = 1; measure_lung_fields(m).problem
    'one field across the midline'
    """
    mask = np.asarray(lung) >= level
    fraction = float(mask.mean())
    crossing = bool(mask[:, mask.shape[1] // 2].any())
    # Lungs fused at the apex or by the trachea are one component; cut them apart at the waist.
    left, right = _sides(_fields(_split_fused(mask)))
    pair_area = (left.area if left else 0.0) + (right.area if right else 0.0)
    share = pair_area / fraction if fraction else 0.0
    return LungFields(fraction, left, right, share, _problem(fraction, left, right, share, crossing))


def _problem(fraction: float, left: Field | None, right: Field | None, share: float, crossing: bool) -> str:
    if left is None and right is None:
        return "no lung field"
    if left is None or right is None:
        return "one field across the midline" if crossing else "one field on one side"
    small, large = sorted((left.area, right.area))
    if small < MIN_FIELD:
        return f"a field of {small:.1%}, {MIN_FIELD:.0%} needed"
    if small / large < MIN_AREA_RATIO:
        return f"fields unequal ({small:.0%} and {large:.0%})"
    if share < MIN_FIELD_SHARE:
        return f"scattered: two fields hold {share:.0%} of the lung"
    if fraction > MAX_LUNG_FRACTION:
        return f"{fraction:.0%} of the picture is lung, {MAX_LUNG_FRACTION:.0%} at most"
    if left.x < EDGE_MARGIN or right.x > 1 - EDGE_MARGIN:
        return "a field at the edge of the picture"
    low, high = HEIGHT_RANGE
    if not (low <= left.y <= high and low <= right.y <= high):
        return "fields not in the upper-middle of the picture"
    return ""

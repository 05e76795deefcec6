"""Lung mask conventions: stored mask values and the training labels made from them.

The shared data stores masks as 8-bit PNGs: 0 = background, 255 = lung, 127 = ignore
(pacemakers, wires, figure annotations over the lung). Training uses a 3-valued label:
:data:`BACKGROUND`, :data:`LUNG` and :data:`IGNORE`; losses and metrics skip :data:`IGNORE`.
"""

from __future__ import annotations

import numpy as np

BACKGROUND = 0
"""Label value of background pixels."""
LUNG = 1
"""Label value of lung pixels."""
IGNORE = 2
"""Label value of pixels excluded from losses and metrics."""


def mask_to_label(mask: np.ndarray) -> np.ndarray:
    """Map stored mask values to labels.

    Values >= 192 become :data:`LUNG`, values in ``[64, 192)`` (the 127 of the data,
    with margin for resampled masks) become :data:`IGNORE`, the rest :data:`BACKGROUND`.

    Parameters
    ----------
    mask : numpy.ndarray
        Stored 8-bit mask values, any shape.

    Returns
    -------
    numpy.ndarray
        ``uint8`` labels of the same shape.

    Examples
    --------
    >>> mask_to_label(np.array([0, 127, 255], dtype=np.uint8)).tolist()
    [0, 2, 1]
    """
    values = np.asarray(mask)
    label = np.full(values.shape, BACKGROUND, dtype=np.uint8)
    label[values >= 64] = IGNORE
    label[values >= 192] = LUNG
    return label

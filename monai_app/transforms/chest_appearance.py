"""Does the classifier input look like a frontal chest radiograph? A one-class appearance model.

The lung-field rules (:mod:`monai_app.transforms.lung_fields`) cannot tell a hip, a leg or a
panoramic dental film from a chest: the U-Net paints two plausible "lungs" on all three
(``scripts/measure_applicability.py``). What does tell them apart is the picture together
with its lung map: a principal-component model of both, fitted on chest radiographs only
(the shared training split), reconstructs a chest well and anything else badly. The
reconstruction residual is the score; the limit is a margin over the largest residual of
the chest images it was fitted and checked on, so it needs no non-chest training images.

Pure numpy: fitting and scoring are functions of arrays; the model is a small ``.npz``
(``bundle/models/chest_appearance.npz``, written by ``scripts/fit_chest_appearance.py``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

GRID = 28
"""Both channels are averaged down to GRID x GRID blocks: the layout, not the texture, matters."""
COMPONENTS = 30
"""Principal components kept (chosen by measurement: docs/operations.md)."""
LIMIT_MARGIN = 1.2
"""The limit is this factor times the largest residual over the fitting and validation chest images."""


def appearance_vector(image: np.ndarray, lung: np.ndarray, grid: int = GRID) -> np.ndarray:
    """The picture and its lung map, block-averaged to ``grid`` x ``grid``, as one vector.

    Parameters
    ----------
    image, lung : numpy.ndarray
        ``(rows, columns)``: the classifier's image channel (in [0, 1]) and the U-Net lung
        probability at the same size; rows and columns must be multiples of ``grid``.
    grid : int
        Blocks along each side.

    Returns
    -------
    numpy.ndarray
        ``(2 * grid * grid,)`` float64.

    Examples
    --------
    >>> appearance_vector(np.ones((56, 56)), np.zeros((56, 56)), grid=28).shape
    (1568,)
    """
    def blocks(a: np.ndarray) -> np.ndarray:
        rows, columns = a.shape
        if rows % grid or columns % grid:
            raise ValueError(f"a {rows}x{columns} picture does not split into {grid}x{grid} blocks")
        return a.reshape(grid, rows // grid, grid, columns // grid).mean(axis=(1, 3)).ravel()

    return np.concatenate([blocks(np.asarray(image, np.float64)), blocks(np.asarray(lung, np.float64))])


@dataclass(frozen=True)
class AppearanceModel:
    """Mean and principal components of chest appearance vectors, and the residual limit."""

    mean: np.ndarray  # (features,)
    components: np.ndarray  # (k, features), orthonormal rows
    limit: float
    grid: int = GRID

    def residual(self, image: np.ndarray, lung: np.ndarray) -> float:
        """Mean squared reconstruction error (x 1000) of one picture and its lung map.

        >>> m = fit_appearance([np.eye(4)[0] * v for v in (1.0, 2.0, 3.0)], components=1)
        >>> round(m.residual_of(np.eye(4)[0] * 5), 6), m.residual_of(np.eye(4)[1]) > 0
        (0.0, True)
        """
        return self.residual_of(appearance_vector(image, lung, self.grid))

    def residual_of(self, vector: np.ndarray) -> float:
        """Residual of an appearance vector (see :meth:`residual`)."""
        centred = np.asarray(vector, np.float64) - self.mean
        error = centred - self.components.T @ (self.components @ centred)
        return float(error @ error) / len(error) * 1000

    def save(self, path: str | Path) -> None:
        """Write the model as ``.npz``."""
        np.savez(path, mean=self.mean.astype(np.float32), components=self.components.astype(np.float32),
                 limit=np.float64(self.limit), grid=np.int64(self.grid))

    @classmethod
    def load(cls, path: str | Path) -> AppearanceModel:
        """Read a model written by :meth:`save`."""
        with np.load(path) as data:
            return cls(data["mean"].astype(np.float64), data["components"].astype(np.float64),
                       float(data["limit"]), int(data["grid"]))


def fit_appearance(vectors: Iterable[np.ndarray], components: int = COMPONENTS, limit: float = np.inf) -> AppearanceModel:
    """Principal components of chest appearance vectors (one per image).

    Parameters
    ----------
    vectors : iterable of numpy.ndarray
        :func:`appearance_vector` of each chest image.
    components : int
        Components kept.
    limit : float
        The residual limit (set it with :func:`residual_limit` once the model exists).
    """
    x = np.stack([np.asarray(v, np.float64) for v in vectors])
    mean = x.mean(axis=0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    return AppearanceModel(mean, vt[:components], limit)


def residual_limit(residuals: Iterable[float], margin: float = LIMIT_MARGIN) -> float:
    """The limit: ``margin`` times the largest residual among chest images.

    >>> residual_limit([1.0, 2.5, 2.0])
    3.0
    """
    return margin * max(residuals)

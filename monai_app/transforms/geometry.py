"""Where a pixel of the classifier's input grid lies on the source radiograph.

The classifier sees the source image after three geometric steps of the bundle's preprocessing:
``CropBordersd`` keeps a content :class:`~monai_app.transforms.normalisation.Box`,
``PadToSquared`` centres it in a square with zeros, ``Resized`` scales the square to the model
grid (224 x 224). :class:`ModelGrid` records those steps and undoes them, so that a map on the
model grid (relevance, lung probability) can be drawn on the source image, and a point of the
model grid can be written in source pixel coordinates (a DICOM SR SCOORD).

Coordinates are continuous ``(row, column)`` in the DICOM SCOORD convention (PS3.3 C.18.6.1.1):
the top-left corner of the top-left pixel is ``(0.0, 0.0)`` and pixel ``i`` spans ``[i, i + 1)``,
so its centre is ``i + 0.5``. In that convention crop, pad and resize are each affine per axis.

Pure numpy: the node's report side can use it without torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from monai_app.transforms.normalisation import Box, square_padding

SOURCE_SHAPE_KEY = "source_shape"
"""Meta key (set by ``CropBordersd``): ``(rows, columns)`` of the image before the crop."""
CONTENT_BOX_KEY = "content_box"
"""Meta key (set by ``CropBordersd``): the kept box ``(top, bottom, left, right)``."""
SQUARE_PADDING_KEY = "square_padding"
"""Meta key (set by ``PadToSquared``): ``((top, bottom), (left, right))`` zero padding."""

Padding = tuple[tuple[int, int], tuple[int, int]]


def _ints(value: Any) -> tuple[int, ...]:
    """A flat tuple of Python ints from a sequence of numbers, numpy or torch scalars."""
    return tuple(int(v) for v in np.asarray(value).reshape(-1))


def _axis_weights(model_size: int, centres: np.ndarray, offset: float, scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear sampling indices and weights on one model axis for points at source coordinates ``centres``.

    A source point ``x`` (a pixel centre ``i + 0.5`` of the source or of a coarser grid over
    it) lies at model coordinate ``(x - offset) * scale``; model pixel ``j`` has its centre at
    ``j + 0.5``, so the fractional index is that minus 0.5. Beyond the outermost model pixel
    centres the edge value is kept (clamped index).
    """
    index = (centres - offset) * scale - 0.5
    index = np.clip(index, 0.0, model_size - 1.0)
    low = np.floor(index).astype(np.intp)
    high = np.minimum(low + 1, model_size - 1)
    return low, high, (index - low).astype(np.float32)


@dataclass(frozen=True)
class ModelGrid:
    """The geometry between the source image and the model grid of one prepared image.

    Parameters
    ----------
    source_shape : tuple of int
        ``(rows, columns)`` of the loaded source image (the DICOM Pixel Data matrix).
    box : Box
        The content box ``CropBordersd`` kept, in source pixels.
    padding : tuple of tuple of int
        ``((top, bottom), (left, right))`` zero padding ``PadToSquared`` added to the crop.
    model_shape : tuple of int
        ``(rows, columns)`` of the model grid (the classifier input, 224 x 224).

    Raises
    ------
    ValueError
        If the box is empty or outside the source, a padding is negative or a shape is not positive.
    """

    source_shape: tuple[int, int]
    box: Box
    padding: Padding
    model_shape: tuple[int, int]

    def __post_init__(self) -> None:
        rows, cols = self.source_shape
        top, bottom, left, right = self.box
        if min(rows, cols, *self.model_shape) < 1:
            raise ValueError(f"shapes must be positive: source {self.source_shape}, model {self.model_shape}")
        if not (0 <= top < bottom <= rows and 0 <= left < right <= cols):
            raise ValueError(f"box {tuple(self.box)} is empty or outside the source {self.source_shape}")
        if min(_ints(self.padding)) < 0:
            raise ValueError(f"padding {self.padding} must not be negative")

    @property
    def padded_shape(self) -> tuple[int, int]:
        """``(rows, columns)`` after crop and padding: the square that is resized to the model grid."""
        (pad_top, pad_bottom), (pad_left, pad_right) = self.padding
        return (self.box.bottom - self.box.top + pad_top + pad_bottom,
                self.box.right - self.box.left + pad_left + pad_right)

    @property
    def _offset(self) -> np.ndarray:
        # Source coordinate of the padded square's top-left corner, per axis.
        return np.array([self.box.top - self.padding[0][0], self.box.left - self.padding[1][0]], np.float64)

    @property
    def _scale(self) -> np.ndarray:
        # Source pixels per model pixel, per axis.
        return np.asarray(self.padded_shape, np.float64) / np.asarray(self.model_shape, np.float64)

    def points_to_source(self, points: np.ndarray) -> np.ndarray:
        """Map continuous model-grid points to source-image points (both SCOORD convention).

        Parameters
        ----------
        points : numpy.ndarray
            ``(n, 2)`` ``(row, column)`` coordinates on the model grid.

        Returns
        -------
        numpy.ndarray
            ``(n, 2)`` float64 ``(row, column)`` on the source image; points in the padding lie
            outside the content box (possibly outside the image).

        Examples
        --------
        >>> grid = model_grid((100, 60), Box(0, 100, 10, 50), (50, 50))
        >>> grid.points_to_source(np.array([[0.0, 0.0], [50.0, 50.0]])).tolist()
        [[0.0, -20.0], [100.0, 80.0]]
        """
        points = np.asarray(points, np.float64).reshape(-1, 2)
        return points * self._scale + self._offset

    def points_to_model(self, points: np.ndarray) -> np.ndarray:
        """The inverse of :meth:`points_to_source`: source-image points to model-grid points."""
        points = np.asarray(points, np.float64).reshape(-1, 2)
        return (points - self._offset) / self._scale

    def content_bounds(self) -> tuple[float, float, float, float]:
        """The content box on the model grid, ``(top, bottom, left, right)``: the rest is padding.

        Clip model-grid outlines to it (``relevance_region(..., bounds=grid.content_bounds())``)
        so that they map inside the source image.
        """
        (top, left), (bottom, right) = self.points_to_model(
            np.array([[self.box.top, self.box.left], [self.box.bottom, self.box.right]], np.float64)
        )
        return float(top), float(bottom), float(left), float(right)

    def to_grid(self, model_map: np.ndarray, shape: Sequence[int], fill: float = 0.0) -> np.ndarray:
        """Resample a model-grid map onto a ``shape`` grid that spans the source image (bilinear).

        A downscaled copy of the source, such as the summary picture, has such a grid: its
        pixel ``i`` is centred at source coordinate ``(i + 0.5) * source_rows / rows``. Points
        outside the content box get ``fill``. With ``shape`` the source's own, this is
        :meth:`to_source`, value for value.

        Raises
        ------
        ValueError
            If ``model_map`` does not have ``model_shape`` or ``shape`` is not positive.
        """
        model_map = np.asarray(model_map, np.float32)
        if model_map.shape != tuple(self.model_shape):
            raise ValueError(f"map has shape {model_map.shape}, expected the model grid {tuple(self.model_shape)}")
        rows, columns = (int(n) for n in shape)
        if min(rows, columns) < 1:
            raise ValueError(f"shape {tuple(shape)} must be positive")
        top, bottom, left, right = self.box
        offset, scale = self._offset, 1.0 / self._scale
        out = np.full((rows, columns), fill, np.float32)
        row_centres = (np.arange(rows, dtype=np.float64) + 0.5) * (self.source_shape[0] / rows)
        column_centres = (np.arange(columns, dtype=np.float64) + 0.5) * (self.source_shape[1] / columns)
        inside_rows = np.flatnonzero((row_centres >= top) & (row_centres < bottom))
        inside_columns = np.flatnonzero((column_centres >= left) & (column_centres < right))
        if not inside_rows.size or not inside_columns.size:
            return out
        r0, r1, wr = _axis_weights(self.model_shape[0], row_centres[inside_rows], offset[0], scale[0])
        c0, c1, wc = _axis_weights(self.model_shape[1], column_centres[inside_columns], offset[1], scale[1])
        # Separable: interpolate along rows, then along columns (the mapping is axis-aligned).
        by_rows = model_map[r0] * (1.0 - wr)[:, None] + model_map[r1] * wr[:, None]
        out[inside_rows[0]:inside_rows[-1] + 1, inside_columns[0]:inside_columns[-1] + 1] = (
            by_rows[:, c0] * (1.0 - wc) + by_rows[:, c1] * wc)
        return out

    def to_source(self, model_map: np.ndarray, fill: float = 0.0) -> np.ndarray:
        """Resample a model-grid map onto the source image's pixel grid (bilinear).

        Undoes resize, padding and crop: each source pixel inside the content box takes the
        bilinear interpolation of ``model_map`` at its centre; pixels outside the box (cropped
        borders) get ``fill``.

        Parameters
        ----------
        model_map : numpy.ndarray
            ``model_shape`` map (relevance, lung probability).
        fill : float
            Value of the source pixels the crop removed.

        Returns
        -------
        numpy.ndarray
            ``source_shape`` float32.

        Raises
        ------
        ValueError
            If ``model_map`` does not have ``model_shape``.
        """
        return self.to_grid(model_map, self.source_shape, fill)


class GridResampling(Protocol):
    """What :class:`GridMap` needs of a grid (a :class:`ModelGrid`, or the node's view of one)."""

    @property
    def source_shape(self) -> tuple[int, int]:
        """``(rows, columns)`` of the source image."""
        ...

    def to_grid(self, model_map: np.ndarray, shape: Sequence[int], fill: float = 0.0) -> np.ndarray:
        """A model-grid map on a ``shape`` grid spanning the source image (:meth:`ModelGrid.to_grid`)."""
        ...


@dataclass(frozen=True)
class GridMap:
    """A map on the model grid with its :class:`ModelGrid`: drawn on the source, or on any grid over it, when asked.

    Resampling a map to detector size (5 M pixels) only to shrink it again for a picture costs
    more than the networks; :meth:`on` goes straight to the grid that is drawn on.
    """

    grid: GridResampling
    values: np.ndarray
    fill: float = 0.0

    @property
    def shape(self) -> tuple[int, int]:
        """The source image's ``(rows, columns)``: the grid the map stands for."""
        return self.grid.source_shape

    def on(self, shape: Sequence[int] | None = None) -> np.ndarray:
        """The map on a ``shape`` grid over the source image (default: the source's own), float32."""
        return self.grid.to_grid(self.values, self.shape if shape is None else shape, self.fill)


def model_grid(source_shape: Sequence[int], box: Box | Sequence[int], model_shape: Sequence[int]) -> ModelGrid:
    """The :class:`ModelGrid` of the bundle's preprocessing: crop to ``box``, centred square padding, resize.

    Parameters
    ----------
    source_shape : Sequence of int
        ``(rows, columns)`` of the source image.
    box : Box or Sequence of int
        ``(top, bottom, left, right)`` kept by the crop.
    model_shape : Sequence of int
        ``(rows, columns)`` of the model grid.

    Returns
    -------
    ModelGrid
        With the padding of :func:`~monai_app.transforms.normalisation.square_padding`.
    """
    kept = Box(*_ints(box))
    rows, cols = _ints(source_shape)
    grid_rows, grid_cols = _ints(model_shape)
    return ModelGrid((rows, cols), kept, square_padding(kept.bottom - kept.top, kept.right - kept.left),
                     (grid_rows, grid_cols))


def grid_from_meta(meta: Mapping[Any, Any], model_shape: Sequence[int]) -> ModelGrid | None:
    """The :class:`ModelGrid` recorded by ``CropBordersd`` and ``PadToSquared`` in an image's meta data.

    Parameters
    ----------
    meta : Mapping
        The MetaTensor meta data at the end of the preprocessing.
    model_shape : Sequence of int
        ``(rows, columns)`` of the preprocessed image.

    Returns
    -------
    ModelGrid or None
        ``None`` when the crop or the padding did not record its geometry (a pipeline without
        ``CropBordersd`` and ``PadToSquared``, whose geometry this module does not describe).
    """
    if not all(key in meta for key in (SOURCE_SHAPE_KEY, CONTENT_BOX_KEY, SQUARE_PADDING_KEY)):
        return None
    rows, cols = _ints(meta[SOURCE_SHAPE_KEY])
    pad_top, pad_bottom, pad_left, pad_right = _ints(meta[SQUARE_PADDING_KEY])
    grid_rows, grid_cols = _ints(model_shape)
    return ModelGrid((rows, cols), Box(*_ints(meta[CONTENT_BOX_KEY])),
                     ((pad_top, pad_bottom), (pad_left, pad_right)), (grid_rows, grid_cols))

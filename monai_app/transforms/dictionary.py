"""MONAI dictionary transforms of the chest X-ray pipeline, used by the bundle's configs.

Each transform is a thin wrapper around a pure function of :mod:`monai_app`; arrays are
channel-first ``(1, rows, columns)``. Only the ``Load*`` transforms read files, so a
serving node can drop them and feed arrays to the rest of the pipeline.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from monai_app.data.dicom_image import DEFAULT_PERCENTILES
from monai_app.data.image_io import load_chest_xray
from monai_app.data.masks import mask_to_label
from monai_app.data.raster_image import read_mask
from monai_app.transforms.clahe import clahe
from monai_app.transforms.geometry import CONTENT_BOX_KEY, SOURCE_SHAPE_KEY, SQUARE_PADDING_KEY
from monai_app.transforms.normalisation import content_box, crop_to_box, pad_to_square, square_padding
from monai_app.utils import as_bool


def _as_numpy(value: object) -> np.ndarray:
    """Return ``value`` as a numpy array (tensors are detached and moved to the CPU)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


class LoadChestXrayd(MapTransform):
    """Load PNG/JPEG or DICOM files named by ``keys`` as ``(1, rows, columns)`` float32 in [0, 1].

    Parameters
    ----------
    keys : KeysCollection
        Keys whose values are file paths.
    percentiles : Sequence of float
        Fallback percentile window for DICOM without VOI.
    allow_missing_keys : bool
        Skip absent keys instead of raising.
    """

    def __init__(
        self,
        keys: KeysCollection,
        percentiles: Sequence[float] = DEFAULT_PERCENTILES,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.percentiles = (float(percentiles[0]), float(percentiles[1]))

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            path = str(d[key])
            image = load_chest_xray(path, self.percentiles)[None]
            d[key] = MetaTensor(torch.from_numpy(image), meta={"filename_or_obj": path})
        return d


class LoadLungMaskd(MapTransform):
    """Load lung mask PNGs named by ``keys`` as ``(1, rows, columns)`` uint8 labels.

    Stored values are mapped with :func:`monai_app.data.masks.mask_to_label`
    (0 background, 1 lung, 2 ignore).
    """

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            path = str(d[key])
            label = mask_to_label(read_mask(Path(path)))[None]
            d[key] = MetaTensor(torch.from_numpy(label), meta={"filename_or_obj": path})
        return d


class CropBordersd(MapTransform):
    """Crop black borders and text-only margins, found on ``source_key``, from all ``keys``.

    Each cropped value's meta data record the source shape before the crop
    (``"source_shape"``: rows, columns) and the kept box (``"content_box"``: top, bottom,
    left, right), plain ints, so that results on the model grid can be mapped back to the
    source image (:mod:`monai_app.transforms.geometry`).

    Parameters
    ----------
    keys : KeysCollection
        Keys to crop (image and mask alike).
    source_key : str
        Key of the image the box is computed on.
    dark_threshold, min_content_fraction, max_crop_fraction : float
        See :func:`monai_app.transforms.normalisation.content_box`.
    allow_missing_keys : bool
        Skip absent keys instead of raising.
    """

    def __init__(
        self,
        keys: KeysCollection,
        source_key: str = "image",
        dark_threshold: float = 0.05,
        min_content_fraction: float = 0.1,
        max_crop_fraction: float = 0.25,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.source_key = source_key
        self.dark_threshold = dark_threshold
        self.min_content_fraction = min_content_fraction
        self.max_crop_fraction = max_crop_fraction

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        source = _as_numpy(d[self.source_key])
        box = content_box(
            source[0], self.dark_threshold, self.min_content_fraction, self.max_crop_fraction
        )
        geometry = {
            SOURCE_SHAPE_KEY: (int(source.shape[-2]), int(source.shape[-1])),
            CONTENT_BOX_KEY: tuple(int(v) for v in box),
        }
        for key in self.key_iterator(d):
            value = d[key]
            cropped = np.ascontiguousarray(crop_to_box(_as_numpy(value), box))
            meta = value.meta if isinstance(value, MetaTensor) else {}
            d[key] = MetaTensor(torch.from_numpy(cropped), meta={**meta, **geometry})
        return d


class PadToSquared(MapTransform):
    """Pad ``keys`` with zeros to a centred square (aspect ratio kept by the later resize).

    Each padded value's meta data record the padding (``"square_padding"``: ``((top, bottom),
    (left, right))``, plain ints; see :mod:`monai_app.transforms.geometry`).
    """

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            value = d[key]
            array = _as_numpy(value)
            padding = square_padding(*array.shape[-2:])
            padded = pad_to_square(array, 0)
            meta = value.meta if isinstance(value, MetaTensor) else {}
            d[key] = MetaTensor(
                torch.from_numpy(np.ascontiguousarray(padded)), meta={**meta, SQUARE_PADDING_KEY: padding}
            )
        return d


class Clahed(MapTransform):
    """Apply CLAHE (:func:`monai_app.transforms.clahe.clahe`) to ``keys`` when ``enabled``.

    Parameters
    ----------
    keys : KeysCollection
        Image keys, ``(1, rows, columns)`` in [0, 1].
    enabled : bool
        The config switch; ``False`` passes data through unchanged.
    clip_limit : float
        CLAHE clip limit (fraction of a tile's pixels).
    grid : Sequence of int
        Tiles along rows and columns.
    allow_missing_keys : bool
        Skip absent keys instead of raising.
    """

    def __init__(
        self,
        keys: KeysCollection,
        enabled: bool = True,
        clip_limit: float = 0.01,
        grid: Sequence[int] = (8, 8),
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.enabled = as_bool(enabled, "enabled")
        self.clip_limit = float(clip_limit)
        self.grid = (int(grid[0]), int(grid[1]))

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        if not self.enabled:
            return d
        for key in self.key_iterator(d):
            value = d[key]
            out = clahe(_as_numpy(value)[0], self.clip_limit, self.grid)[None]
            meta = value.meta if isinstance(value, MetaTensor) else {}
            d[key] = MetaTensor(torch.from_numpy(out), meta=dict(meta))
        return d


class ClampIntensityd(MapTransform):
    """Clamp ``keys`` to ``[minv, maxv]`` (after intensity augmentations that can leave [0, 1]).

    Parameters
    ----------
    keys : KeysCollection
        Image keys (tensors).
    minv, maxv : float
        Bounds of the clamp.
    allow_missing_keys : bool
        Skip absent keys instead of raising.
    """

    def __init__(
        self, keys: KeysCollection, minv: float = 0.0, maxv: float = 1.0, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.minv = float(minv)
        self.maxv = float(maxv)

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            value = d[key]
            if isinstance(value, torch.Tensor):  # MetaTensor too: its meta data are kept
                d[key] = value.clamp(self.minv, self.maxv)
            else:
                d[key] = np.clip(np.asarray(value), self.minv, self.maxv)
        return d

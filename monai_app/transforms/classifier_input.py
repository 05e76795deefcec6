"""Dictionary transforms that build the classifier input ``[image, lung probability, zeros]``."""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, RandomizableTransform
from torch.nn import functional as F

from monai_app.networks.lung_unet import DEFAULT_CHANNELS, DEFAULT_RES_UNITS, load_lung_network
from monai_app.transforms.clahe import clahe
from monai_app.utils import as_bool

logger = logging.getLogger(__name__)


def _meta(value: object) -> dict:
    return dict(value.meta) if isinstance(value, MetaTensor) else {}


class LungProbabilityd(MapTransform):
    """Add the lung U-Net's probability map of an image under ``output_key``.

    The image ``(1, rows, columns)`` (square, after cropping and padding) is resized with
    area interpolation to the U-Net's ``spatial_size``, as in the lung bundle's
    preprocessing; the output is the sigmoid of the U-Net's logit at that size, float32 in
    [0, 1]. Deterministic (frozen network in eval mode), so a ``CacheDataset`` caches it.
    The network is loaded on first use, so the transform can be built before the file exists.

    Parameters
    ----------
    keys : KeysCollection
        The image key (exactly one).
    model_file : str or pathlib.Path
        Lung U-Net weights (see :func:`load_lung_network`).
    output_key : str
        Key of the probability map.
    spatial_size : Sequence of int
        U-Net input size (rows, columns): the size it was trained at.
    channels, num_res_units
        U-Net architecture (as in the configs).
    device : str or torch.device
        Where the U-Net runs.
    """

    def __init__(
        self,
        keys: KeysCollection,
        model_file: str | Path,
        output_key: str = "lung",
        spatial_size: Sequence[int] = (256, 256),
        channels: Sequence[int] = DEFAULT_CHANNELS,
        num_res_units: int = DEFAULT_RES_UNITS,
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__(keys)
        if len(self.keys) != 1:
            raise ValueError(f'Argument "keys" must name one image, got {self.keys}')
        self.model_file = Path(model_file)
        self.output_key = output_key
        self.spatial_size = (int(spatial_size[0]), int(spatial_size[1]))
        self.channels = tuple(int(c) for c in channels)
        self.num_res_units = int(num_res_units)
        self.device = torch.device(device)
        self._network: Callable[[torch.Tensor], torch.Tensor] | None = None

    @property
    def network(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The frozen U-Net (loaded on first access), or what :meth:`use_network` put in its place."""
        if self._network is None:
            logger.info("lung channel: U-Net weights %s", self.model_file)
            self._network = load_lung_network(self.model_file, self.channels, self.num_res_units, self.device)
        return self._network

    def use_network(self, network: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Run ``network`` (``(B, 1, rows, columns)`` -> logits) instead of the PyTorch U-Net, e.g. an
        exported copy of it on another runtime (:mod:`monai_app.runtime`)."""
        self._network = network

    def probability(self, image: torch.Tensor) -> torch.Tensor:
        """Lung probability ``(1, *spatial_size)`` of an image ``(1, rows, columns)``."""
        x = torch.as_tensor(image, dtype=torch.float32).reshape(1, 1, *image.shape[-2:]).to(self.device)
        if tuple(x.shape[-2:]) != self.spatial_size:
            x = F.interpolate(x, size=self.spatial_size, mode="area")
        with torch.no_grad():
            return torch.sigmoid(self.network(x))[0].cpu()

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        key = self.first_key(d)
        value = d[key]
        image = value.as_tensor() if isinstance(value, MetaTensor) else torch.as_tensor(np.asarray(value))
        d[self.output_key] = MetaTensor(self.probability(image), meta=_meta(value))
        return d


class ClassifierInputd(MapTransform):
    """Replace the image by the classifier input ``[image, lung probability, zeros]``.

    Parameters
    ----------
    keys : KeysCollection
        The image key (exactly one); image and lung map are ``(1, rows, columns)``.
    lung_key : str
        Key of the lung probability map (same size as the image); removed from the data.
    use_lung : bool
        ``False`` puts zeros in place of the lung map (the ablation without the lung channel).
    """

    def __init__(self, keys: KeysCollection, lung_key: str = "lung", use_lung: bool = True) -> None:
        super().__init__(keys)
        if len(self.keys) != 1:
            raise ValueError(f'Argument "keys" must name one image, got {self.keys}')
        self.lung_key = lung_key
        self.use_lung = as_bool(use_lung, "use_lung")

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        key = self.first_key(d)
        image = torch.as_tensor(d[key], dtype=torch.float32)
        lung = torch.as_tensor(d.pop(self.lung_key), dtype=torch.float32)
        if image.shape != lung.shape or image.shape[0] != 1:
            raise ValueError(f"image {tuple(image.shape)} and lung map {tuple(lung.shape)} must both be (1, rows, columns)")
        if not self.use_lung:
            lung = torch.zeros_like(lung)
        stacked = torch.cat([image, lung, torch.zeros_like(image)], dim=0)
        d[key] = MetaTensor(stacked, meta=_meta(d[key]))
        return d


class RandClahed(RandomizableTransform, MapTransform):
    """Apply CLAHE (:func:`monai_app.transforms.clahe.clahe`) to ``keys`` with probability ``prob``.

    Parameters
    ----------
    keys : KeysCollection
        Image keys, ``(1, rows, columns)`` in [0, 1].
    prob : float
        Probability of applying it to a sample.
    clip_limit : float
        CLAHE clip limit (fraction of a tile's pixels).
    grid : Sequence of int
        Tiles along rows and columns.
    """

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.4,
        clip_limit: float = 0.01,
        grid: Sequence[int] = (8, 8),
    ) -> None:
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob)
        self.clip_limit = float(clip_limit)
        self.grid = (int(grid[0]), int(grid[1]))

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        for key in self.key_iterator(d):
            value = d[key]
            array = torch.as_tensor(value).detach().cpu().numpy()
            out = clahe(array[0], self.clip_limit, self.grid)[None]
            d[key] = MetaTensor(torch.from_numpy(np.ascontiguousarray(out)), meta=_meta(value))
        return d

"""COVID-19 classifier of frontal chest X-rays and the transforms that build its input.

The network follows Goldstein et al. (2020): a ResNet50 feature extractor on three channels
``[normalised X-ray, lung probability map, zeros]`` and a decision head of three fully
connected layers whose last hidden layer is the image's embedding, used for similar-image
retrieval (:mod:`monai_app.similarity`)::

    ResNet50 (MONAI, 2D, conv1 stride 2) -> 2048 pooled features
    FC1 2048 -> 512, ReLU, dropout
    FC2  512 -> 128, ReLU            <- embedding (``embed``)
    dropout, FC3 128 -> 2            <- logits (``forward``): [non_covid, covid]

The lung probability channel comes from the shipped lung U-Net (frozen, eval mode), computed
by :class:`LungProbabilityd`; it is deterministic, so a ``CacheDataset`` caches it.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.networks.nets import UNet, resnet50
from monai.transforms import MapTransform, RandomizableTransform
from torch import nn
from torch.nn import functional as F

from monai_app.clahe import clahe
from monai_app.cli_values import as_bool
from monai_app.export import read_weights

logger = logging.getLogger(__name__)

CLASS_NAMES = ("non_covid", "covid")
"""Output index -> class name of the classifier (index 1 is the positive class)."""
BACKBONE_FEATURES = 2048
"""Width of the pooled ResNet50 features."""


def build_backbone(in_channels: int = 3, conv1_stride: int = 2) -> nn.Module:
    """The 2-D ResNet50 feature extractor (no final fc: it returns the pooled 2048-d features)."""
    return resnet50(
        pretrained=False,
        spatial_dims=2,
        n_input_channels=int(in_channels),
        conv1_t_stride=int(conv1_stride),
        feed_forward=False,
    )


def load_backbone_weights(network: nn.Module, weights_file: str | Path | None) -> bool:
    """Start ``network.backbone`` from a saved backbone state dict (e.g. self-supervised).

    Parameters
    ----------
    network : torch.nn.Module
        A network with a ``backbone`` attribute (:class:`CovidClassifier`).
    weights_file : str, pathlib.Path or None
        State dict of the backbone alone (:func:`monai_app.pretraining.export_backbone`).
        ``None`` or ``""`` leaves the network as it is (training from scratch).

    Returns
    -------
    bool
        Whether weights were loaded.
    """
    if weights_file is None or str(weights_file) in ("", "None", "null"):
        logger.info("backbone: random initial weights (no pretrained backbone given)")
        return False
    state = read_weights(weights_file, key=None)
    reference = next(network.backbone.parameters())
    network.backbone.load_state_dict({k: v.to(reference.dtype) if v.is_floating_point() else v for k, v in state.items()})
    logger.info("backbone initialised from %s (%d tensors)", Path(weights_file).name, len(state))
    return True


class CovidClassifier(nn.Module):
    """ResNet50 feature extractor with a three-layer fully connected decision head.

    Parameters
    ----------
    in_channels : int
        Input channels (3: image, lung probability, zeros).
    num_classes : int
        Output logits (2: non_covid, covid).
    hidden_dim : int
        Width of the first fully connected layer.
    embedding_dim : int
        Width of the second fully connected layer, the embedding.
    dropout : float
        Dropout probability after each hidden layer (training only).
    conv1_stride : int
        Stride of the backbone's first convolution (2 is about five times faster on CPU).
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 2,
        hidden_dim: int = 512,
        embedding_dim: int = 128,
        dropout: float = 0.3,
        conv1_stride: int = 2,
    ) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("num_classes", num_classes),
                            ("hidden_dim", hidden_dim), ("embedding_dim", embedding_dim)):
            if int(value) < 1:
                raise ValueError(f'Argument "{name}" must be >= 1, got {value}')
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f'Argument "dropout" must be in [0, 1), got {dropout}')
        self.embedding_dim = int(embedding_dim)
        self.num_classes = int(num_classes)
        self.backbone = build_backbone(in_channels, conv1_stride)
        self.fc1 = nn.Linear(BACKBONE_FEATURES, int(hidden_dim))
        self.fc2 = nn.Linear(int(hidden_dim), self.embedding_dim)
        self.fc3 = nn.Linear(self.embedding_dim, self.num_classes)
        self.dropout = nn.Dropout(float(dropout))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The embedding (last hidden layer, after its ReLU) of a batch ``(B, C, H, W)``.

        Returns
        -------
        torch.Tensor
            ``(B, embedding_dim)``, non-negative.
        """
        features = self.backbone(x)
        hidden = self.dropout(F.relu(self.fc1(features)))
        return F.relu(self.fc2(hidden))

    def head(self, embedding: torch.Tensor) -> torch.Tensor:
        """Class logits ``(B, num_classes)`` from embeddings ``(B, embedding_dim)``."""
        return self.fc3(self.dropout(embedding))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``(B, num_classes)`` of a batch ``(B, C, H, W)``."""
        return self.head(self.embed(x))


def load_lung_network(
    model_file: str | Path,
    channels: Sequence[int] = (16, 32, 64, 128, 256),
    num_res_units: int = 2,
    device: str | torch.device = "cpu",
) -> UNet:
    """The lung U-Net of the bundle with weights from ``model_file``, frozen, in eval mode.

    Parameters
    ----------
    model_file : str or pathlib.Path
        State dict (the fp16 export ``models/lung_unet.pt`` or a ``CheckpointSaver`` file
        holding it under ``"model"``).
    channels : Sequence of int
        Feature channels per level (as ``lung_channels`` in the configs).
    num_res_units : int
        Residual units per block (as ``lung_num_res_units``).
    device : str or torch.device
        Where the network runs.

    Returns
    -------
    monai.networks.nets.UNet
        fp32 network with ``requires_grad`` off.
    """
    state = read_weights(model_file)
    net = UNet(
        spatial_dims=2, in_channels=1, out_channels=1, channels=tuple(int(c) for c in channels),
        strides=(2,) * (len(channels) - 1), num_res_units=int(num_res_units),
    )
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    net.to(device).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


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
        channels: Sequence[int] = (16, 32, 64, 128, 256),
        num_res_units: int = 2,
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
        self._network: UNet | None = None

    @property
    def network(self) -> UNet:
        """The frozen U-Net (loaded on first access)."""
        if self._network is None:
            logger.info("lung channel: U-Net weights %s", self.model_file)
            self._network = load_lung_network(self.model_file, self.channels, self.num_res_units, self.device)
        return self._network

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
    """Apply CLAHE (:func:`monai_app.clahe.clahe`) to ``keys`` with probability ``prob``.

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


def balanced_class_weights(datalist: Sequence[Mapping[str, object]], num_classes: int = 2) -> list[float]:
    """Inverse-frequency class weights ``n / (num_classes * n_c)`` of a datalist's labels.

    Parameters
    ----------
    datalist : Sequence of Mapping
        Items with an integer ``label``.
    num_classes : int
        Number of classes.

    Returns
    -------
    list of float
        One weight per class (1.0 each for a balanced set).

    Raises
    ------
    ValueError
        If a class is absent.
    """
    counts = np.bincount([int(item["label"]) for item in datalist], minlength=num_classes)
    if (counts == 0).any():
        raise ValueError(f"every class needs at least one item, counts {counts.tolist()}")
    weights = counts.sum() / (num_classes * counts)
    logger.info("class counts %s -> weights %s", counts.tolist(), np.round(weights, 4).tolist())
    return [float(w) for w in weights]

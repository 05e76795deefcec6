"""COVID-19 classifier of frontal chest X-rays (its input transforms: :mod:`monai_app.transforms.classifier_input`).

The network follows Goldstein et al. (2020): a ResNet50 feature extractor on three channels
``[normalised X-ray, lung probability map, zeros]`` and a decision head of three fully
connected layers whose last hidden layer is the image's embedding, used for similar-image
retrieval (:mod:`monai_app.retrieval.index`)::

    ResNet50 (MONAI, 2D, conv1 stride 2) -> 2048 pooled features
    FC1 2048 -> 512, ReLU, dropout
    FC2  512 -> 128, ReLU            <- embedding (``embed``)
    dropout, FC3 128 -> 2            <- logits (``forward``): [non_covid, covid]

The lung probability channel comes from the shipped lung U-Net (frozen, eval mode), computed
by :class:`monai_app.transforms.classifier_input.LungProbabilityd`; it is deterministic, so a ``CacheDataset`` caches it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from monai.networks.nets import resnet50
from torch import nn
from torch.nn import functional as F

from monai_app.weights import read_weights

logger = logging.getLogger(__name__)

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
        State dict of the backbone alone (:func:`monai_app.networks.contrastive.export_backbone`).
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
    backbone = network.get_submodule("backbone")
    reference = next(backbone.parameters())
    backbone.load_state_dict({k: v.to(reference.dtype) if v.is_floating_point() else v for k, v in state.items()})
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
        return self.embed_pooled(self.backbone(x))

    def embed_pooled(self, features: torch.Tensor) -> torch.Tensor:
        """The embedding of pooled backbone features ``(B, 2048)`` (the average of ``backbone.layer4``'s maps)."""
        hidden = self.dropout(F.relu(self.fc1(features)))
        return F.relu(self.fc2(hidden))

    def head(self, embedding: torch.Tensor) -> torch.Tensor:
        """Class logits ``(B, num_classes)`` from embeddings ``(B, embedding_dim)``."""
        return self.fc3(self.dropout(embedding))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``(B, num_classes)`` of a batch ``(B, C, H, W)``."""
        return self.head(self.embed(x))




def load_classifier_weights(network: CovidClassifier, model_file: str | Path) -> CovidClassifier:
    """Load weights in any form :func:`monai_app.weights.read_weights` reads (int8, fp16, fp32, checkpoint).

    Returns
    -------
    CovidClassifier
        ``network`` itself, in eval mode.

    Raises
    ------
    ValueError
        If the weights' head has another number of classes than ``network`` (a three-class
        training loaded by a two-class config, or the reverse): set ``cls_num_classes``.
    """
    state = read_weights(model_file)
    head = state.get("fc3.weight")
    if head is not None and head.shape[0] != network.num_classes:
        raise ValueError(f"{Path(model_file).name} has a {head.shape[0]}-class head and the network "
                         f"{network.num_classes}: set cls_num_classes to {head.shape[0]}")
    network.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    return network.eval()

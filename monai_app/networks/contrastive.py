"""SimCLR network of the self-supervised start of the classifier's ResNet50, and its backbone export.

No ImageNet weights can be downloaded where the bundle is trained, so the second start of the
classifier is a backbone pretrained contrastively (Chen et al. 2020, SimCLR) on the images
alone (views: :class:`monai_app.transforms.views.TwoViewsd`; step:
:class:`monai_app.engines.contrastive.ContrastiveIteration`). The views are built from the
classifier's own input ``[image, lung probability, zeros]``, so the backbone's weights
transfer one to one (:func:`monai_app.networks.classifier.load_backbone_weights`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from monai_app.networks.classifier import BACKBONE_FEATURES, build_backbone
from monai_app.weights import read_weights, save_half_precision


class ContrastiveNetwork(nn.Module):
    """The classifier's backbone with a SimCLR projection head (2048 -> hidden -> projection).

    Parameters
    ----------
    in_channels : int
        Input channels (3, as the classifier).
    conv1_stride : int
        Stride of the first convolution (as the classifier).
    hidden_dim : int
        Width of the projection head's hidden layer.
    projection_dim : int
        Width of the projection the contrastive loss compares.
    """

    def __init__(self, in_channels: int = 3, conv1_stride: int = 2, hidden_dim: int = 512,
                 projection_dim: int = 128) -> None:
        super().__init__()
        self.backbone = build_backbone(in_channels, conv1_stride)
        self.projection = nn.Sequential(
            nn.Linear(BACKBONE_FEATURES, int(hidden_dim)),
            nn.ReLU(inplace=True),
            nn.Linear(int(hidden_dim), int(projection_dim)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Projections ``(B, projection_dim)`` of a batch ``(B, C, H, W)``."""
        return self.projection(self.backbone(x))


def export_backbone(checkpoint: str | Path, output: str | Path) -> Path:
    """Save the backbone of a pretraining checkpoint as an fp16 state dict (the classifier's start).

    Parameters
    ----------
    checkpoint : str or pathlib.Path
        ``CheckpointSaver`` file holding the :class:`ContrastiveNetwork` under ``"model"``
        (or its bare state dict).
    output : str or pathlib.Path
        File to write: the ``backbone.*`` tensors without their prefix.

    Returns
    -------
    pathlib.Path
        ``output``.
    """
    prefix = "backbone."
    backbone = {k[len(prefix):]: v for k, v in read_weights(checkpoint).items() if k.startswith(prefix)}
    if not backbone:
        raise ValueError(f"{Path(checkpoint).name} holds no backbone.* tensors")
    save_half_precision(backbone, output)
    return Path(output)

"""Self-supervised pretraining of the classifier's ResNet50 (SimCLR) on unlabelled X-rays.

No ImageNet weights can be downloaded where the bundle is trained, so the second start of the
classifier is a backbone pretrained contrastively (Chen et al. 2020, SimCLR) on the images
alone: two random views of each image are pushed together and apart from the other images of
the batch (MONAI's :class:`monai.losses.ContrastiveLoss`, NT-Xent). The views are built from
the classifier's own input ``[image, lung probability, zeros]``, so the backbone's weights
transfer one to one (:func:`monai_app.classifier.load_backbone_weights`).

The training loop is MONAI's ``SupervisedTrainer`` with :class:`ContrastiveIteration` as its
iteration, so checkpoints, resuming, logging and history work as for the other networks.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Hashable, Mapping
from pathlib import Path

import torch
from ignite.engine import Engine
from monai.transforms import RandomizableTrait, Transform
from torch import nn

from monai_app.classifier import BACKBONE_FEATURES, build_backbone
from monai_app.export import read_weights, save_half_precision

logger = logging.getLogger(__name__)

VIEW_KEYS = ("view_1", "view_2")
"""Keys of the two augmented views in a pretraining batch."""


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


class TwoViewsd(Transform, RandomizableTrait):
    """Two independent random views of one sample: ``{"view_1": x1, "view_2": x2}``.

    ``transform`` (random augmentations ending in the classifier input) runs twice on deep
    copies of the sample, and the value under ``image_key`` of each result is one view.
    A random transform for MONAI's caching datasets: the deterministic steps before it are
    cached, it runs every time.

    Parameters
    ----------
    transform : Callable
        Dictionary transform that returns the view under ``image_key``.
    image_key : str
        Key of the view in the transform's output.
    """

    def __init__(self, transform: Callable[[Mapping[Hashable, object]], Mapping[Hashable, object]],
                 image_key: str = "image") -> None:
        self.transform = transform
        self.image_key = image_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict[str, object]:
        return {key: self.transform(copy.deepcopy(dict(data)))[self.image_key] for key in VIEW_KEYS}


class ContrastiveIteration:
    """``iteration_update`` of a MONAI ``SupervisedTrainer``: one SimCLR step on two views.

    The trainer's ``network`` maps a batch of views to projections, its ``loss_function``
    compares the two batches of projections (``monai.losses.ContrastiveLoss``).
    """

    def __call__(self, engine: Engine, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        first, second = (torch.as_tensor(batch[k]).to(engine.state.device, non_blocking=True) for k in VIEW_KEYS)
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=engine.state.device.type, dtype=torch.bfloat16, enabled=engine.amp):
            projections = engine.network(torch.cat([first, second]))
        z1, z2 = projections.float().chunk(2)
        loss = engine.loss_function(z1, z2)
        loss.backward()
        engine.optimizer.step()
        return {"loss": loss.detach()}


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


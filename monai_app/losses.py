"""Segmentation loss that skips ignore pixels (label :data:`monai_app.data.masks.IGNORE`)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from monai_app.data.masks import IGNORE, LUNG


class MaskedDiceBCELoss(nn.Module):
    """Soft Dice + binary cross-entropy on one-channel logits, ignoring ignore pixels.

    Parameters
    ----------
    dice_weight, bce_weight : float
        Weights of the two terms.
    smooth : float
        Added to numerator and denominator of the soft Dice.
    ignore_label : int
        Label value excluded from both terms.

    Notes
    -----
    The soft Dice is computed over the whole batch (all valid pixels pooled), which is
    stable for images with little lung.
    """

    def __init__(
        self,
        dice_weight: float = 1.0,
        bce_weight: float = 1.0,
        smooth: float = 1.0,
        ignore_label: int = IGNORE,
    ) -> None:
        super().__init__()
        self.dice_weight = dice_weight
        self.bce_weight = bce_weight
        self.smooth = smooth
        self.ignore_label = ignore_label

    def forward(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """Compute the loss.

        Parameters
        ----------
        logits : torch.Tensor
            Network output ``(B, 1, H, W)``.
        label : torch.Tensor
            Labels ``(B, 1, H, W)`` with 0 background, 1 lung, ``ignore_label`` ignore.

        Returns
        -------
        torch.Tensor
            Scalar loss.
        """
        if logits.shape != label.shape:
            raise ValueError(f"logits {tuple(logits.shape)} and label {tuple(label.shape)} differ")
        label = torch.as_tensor(label)
        valid = (label != self.ignore_label).to(logits.dtype)
        target = (label == LUNG).to(logits.dtype)
        n_valid = valid.sum().clamp_min(1.0)
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        bce = (bce * valid).sum() / n_valid
        prob = torch.sigmoid(logits) * valid
        intersection = (prob * target).sum()
        dice = 1.0 - (2.0 * intersection + self.smooth) / (
            prob.sum() + (target * valid).sum() + self.smooth
        )
        return self.dice_weight * dice + self.bce_weight * bce

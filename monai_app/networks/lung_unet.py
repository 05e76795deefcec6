"""The lung segmentation U-Net: one definition for training, the bundle configs and the lung channel."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from monai.networks.nets import UNet

from monai_app.weights import read_weights

DEFAULT_CHANNELS = (16, 32, 64, 128, 256)
"""Feature channels per level of the shipped U-Net (``lung_channels`` in the configs)."""
DEFAULT_RES_UNITS = 2
"""Residual units per block of the shipped U-Net (``lung_num_res_units``)."""


def build_lung_unet(channels: Sequence[int] = DEFAULT_CHANNELS, num_res_units: int = DEFAULT_RES_UNITS) -> UNet:
    """The 2-D U-Net: one grey channel in, one lung logit out (sigmoid gives the lung probability)."""
    return UNet(
        spatial_dims=2, in_channels=1, out_channels=1, channels=tuple(int(c) for c in channels),
        strides=(2,) * (len(channels) - 1), num_res_units=int(num_res_units),
    )


def load_lung_network(
    model_file: str | Path,
    channels: Sequence[int] = DEFAULT_CHANNELS,
    num_res_units: int = DEFAULT_RES_UNITS,
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
    net = build_lung_unet(channels, num_res_units)
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    net.to(device).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net

"""The shipped lung U-Net weights segment real, human-annotated test images.

The network, preprocessing and postprocessing are loaded by ID from the inference config,
as the node loads them. ``MIN_MEAN_DICE`` is set below the evaluation result recorded in
``bundle/docs/training_record.md`` (test-set mean Dice 0.958); random weights score about 0.43.
Their size, form and recorded hash are checked in ``tests/unit/test_shipped_artifacts.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from monai.transforms import Compose

from monai_app.data.manifest import segmentation_datalist
from monai_app.metrics import masked_dice
from testkit.bundle import BUNDLE, INFERENCE, TRAIN, parser

WEIGHTS = BUNDLE / "models" / "lung_unet.pt"
N_IMAGES = 8
MIN_MEAN_DICE = 0.93


def _segment(network: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    infer = parser(INFERENCE)
    postprocessing = infer.get_parsed_content("lung_postprocessing")
    with torch.no_grad():
        logits = network(images)
    return torch.stack([postprocessing({"pred": p})["pred"] for p in logits])


@pytest.fixture(scope="module")
def test_batch(shared_data: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The first few human-reviewed test images and labels, preprocessed as in training."""
    items = segmentation_datalist(
        shared_data / "manifest.csv", shared_data, "test", ["ieee8023_v7labs"]
    )[:N_IMAGES]
    steps = Compose(parser(TRAIN).get_parsed_content("lung_deterministic_transforms"))
    prepared = [steps(item) for item in items]
    return (
        torch.stack([p["image"].as_tensor() for p in prepared]),
        torch.stack([p["label"].as_tensor() for p in prepared]),
    )


def test_shipped_weights_segment_real_test_images(test_batch) -> None:
    images, labels = test_batch
    infer = parser(INFERENCE)
    network = infer.get_parsed_content("lung_network_def").eval()
    network.load_state_dict(torch.load(WEIGHTS, weights_only=True))
    dice = masked_dice(_segment(network, images), labels)
    assert dice.mean().item() >= MIN_MEAN_DICE, dice.tolist()


def test_random_weights_fall_below_the_threshold(test_batch) -> None:
    """Control: the threshold above is not reachable without training."""
    images, labels = test_batch
    torch.manual_seed(0)
    network = parser(INFERENCE).get_parsed_content("lung_network_def").eval()
    assert masked_dice(_segment(network, images), labels).mean().item() < MIN_MEAN_DICE

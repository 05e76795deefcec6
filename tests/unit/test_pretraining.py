"""Self-supervised (SimCLR) pretraining: its images, views, loss and backbone export (the bundle run: tests/integration/test_pretraining_workflow.py)."""

from __future__ import annotations

from collections.abc import Hashable
from pathlib import Path

import pytest
import torch
from monai.losses import ContrastiveLoss

from monai_app.data.manifest import split_images
from monai_app.networks.contrastive import ContrastiveNetwork, export_backbone
from monai_app.transforms.views import VIEW_KEYS, TwoViewsd


def test_pretraining_uses_every_train_and_val_image_and_no_test_image(tiny_classification_dataset: Path) -> None:
    items = split_images(tiny_classification_dataset / "manifest.csv", tiny_classification_dataset, ["train", "val"])
    assert len(items) == 9 + 6, "labelled and unknown rows of train and val"
    test_images = {i["image"] for i in split_images(tiny_classification_dataset / "manifest.csv", tiny_classification_dataset, "test")}
    assert test_images and not test_images & {i["image"] for i in items}
    with pytest.raises(ValueError):
        split_images(tiny_classification_dataset / "manifest.csv", tiny_classification_dataset, ["holdout"])


def test_two_views_of_one_image_differ_and_keep_the_classifier_input_shape() -> None:
    from monai.transforms import Compose, RandGaussianNoised

    torch.manual_seed(0)
    views = TwoViewsd(Compose([RandGaussianNoised(keys="image", prob=1.0, std=0.1)]))
    sample: dict[Hashable, object] = {"image": torch.zeros(3, 16, 16)}
    out = views(sample)
    assert set(out) == set(VIEW_KEYS)
    view_1, view_2, cached = out["view_1"], out["view_2"], sample["image"]
    assert isinstance(view_1, torch.Tensor) and isinstance(view_2, torch.Tensor) and isinstance(cached, torch.Tensor)
    assert view_1.shape == view_2.shape == (3, 16, 16)
    assert not torch.equal(view_1, view_2)
    assert torch.equal(cached, torch.zeros(3, 16, 16)), "the cached sample must stay untouched"


def test_contrastive_loss_is_lower_for_matching_views_than_for_shuffled_ones() -> None:
    torch.manual_seed(0)
    network = ContrastiveNetwork(hidden_dim=16, projection_dim=8).eval()
    x = torch.rand(6, 3, 32, 32)
    with torch.no_grad():
        z = network(x)
        noisy = network(x + 0.01 * torch.randn_like(x))
    loss = ContrastiveLoss(temperature=0.2)
    assert loss(z, noisy) < loss(z, noisy.roll(1, dims=0))


def test_export_backbone_refuses_a_file_without_one(tmp_path: Path) -> None:
    torch.save({"model": {"fc.weight": torch.zeros(2, 2)}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="no backbone"):
        export_backbone(tmp_path / "other.pt", tmp_path / "backbone.pt")

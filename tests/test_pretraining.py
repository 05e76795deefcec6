"""Self-supervised (SimCLR) pretraining: the bundle's `pretraining` run and the classifier's start from it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from monai.losses import ContrastiveLoss

from monai_app.networks.classifier import CovidClassifier, load_backbone_weights
from monai_app.data.manifest import split_images
from monai_app.transforms.views import VIEW_KEYS, TwoViewsd
from monai_app.networks.contrastive import ContrastiveNetwork, export_backbone
from tests.bundle_helpers import CLASSIFIER, PRETRAIN, parser, workflow
from tests.test_classifier_bundle import TINY, tiny_dataset  # noqa: F401 (fixture)

SSL_TINY = {"ssl_num_epochs": 2}


@pytest.fixture(scope="module")
def pretrained(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ssl_out")
    wf = workflow(PRETRAIN, "train", "pretraining", dataset_dir=str(tiny_dataset), ssl_output_dir=str(out), **{**TINY, **SSL_TINY})
    wf.initialize()
    wf.run()
    wf.finalize()
    return out


def test_pretraining_uses_every_train_and_val_image_and_no_test_image(tiny_dataset: Path) -> None:
    items = split_images(tiny_dataset / "manifest.csv", tiny_dataset, ["train", "val"])
    assert len(items) == 9 + 6, "labelled and unknown rows of train and val"
    test_images = {i["image"] for i in split_images(tiny_dataset / "manifest.csv", tiny_dataset, "test")}
    assert test_images and not test_images & {i["image"] for i in items}
    with pytest.raises(ValueError):
        split_images(tiny_dataset / "manifest.csv", tiny_dataset, ["holdout"])


def test_pretraining_runs_and_exports_a_backbone_the_classifier_loads(pretrained: Path) -> None:
    history = [json.loads(line) for line in (pretrained / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2]
    assert all(h["train_loss"] > 0 for h in history)
    backbone = torch.load(pretrained / "backbone.pt", weights_only=True)
    assert backbone["conv1.weight"].dtype == torch.float16 and backbone["conv1.weight"].shape[1] == 3
    classifier = CovidClassifier(hidden_dim=32, embedding_dim=8)
    assert load_backbone_weights(classifier, pretrained / "backbone.pt")
    assert torch.equal(classifier.backbone.conv1.weight, backbone["conv1.weight"].float())
    assert not load_backbone_weights(classifier, None) and not load_backbone_weights(classifier, "")


def test_classifier_training_starts_from_the_pretrained_backbone(
    tiny_dataset: Path, pretrained: Path, tmp_path: Path
) -> None:
    from ignite.engine import Events

    config = parser(CLASSIFIER, dataset_dir=str(tiny_dataset), cls_output_dir=str(tmp_path),
                    cls_backbone_init=str(pretrained / "backbone.pt"), **TINY)
    trainer = config.get_parsed_content("cls_train#trainer")
    trainer.fire_event(Events.STARTED)  # the start is loaded when training starts (before any resume)
    network = config.get_parsed_content("cls_network")
    start = torch.load(pretrained / "backbone.pt", weights_only=True)
    assert torch.equal(network.backbone.conv1.weight.detach().cpu(), start["conv1.weight"].float())
    kept = parser(CLASSIFIER, dataset_dir=str(tiny_dataset), ssl_output_dir=str(pretrained), **TINY)
    assert kept.get_parsed_content("cls_backbone_init") == str(pretrained / "backbone.pt"), "default: run pretraining's"
    scratch = parser(CLASSIFIER, dataset_dir=str(tiny_dataset), ssl_output_dir=str(tiny_dataset / "none"), **TINY)
    assert scratch.get_parsed_content("cls_backbone_init") is None, "without a pretrained backbone: from scratch"


def test_two_views_of_one_image_differ_and_keep_the_classifier_input_shape() -> None:
    from monai.transforms import Compose, RandGaussianNoised

    torch.manual_seed(0)
    views = TwoViewsd(Compose([RandGaussianNoised(keys="image", prob=1.0, std=0.1)]))
    sample = {"image": torch.zeros(3, 16, 16)}
    out = views(sample)
    assert set(out) == set(VIEW_KEYS)
    assert out["view_1"].shape == out["view_2"].shape == (3, 16, 16)
    assert not torch.equal(out["view_1"], out["view_2"])
    assert torch.equal(sample["image"], torch.zeros(3, 16, 16)), "the cached sample must stay untouched"


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

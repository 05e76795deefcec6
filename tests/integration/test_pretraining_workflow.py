"""Self-supervised (SimCLR) pretraining through the bundle: the `pretraining` run, and the classifier's start from it."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from monai_app.networks.classifier import CovidClassifier, load_backbone_weights
from testkit.bundle import CLASSIFIER, PRETRAIN, parser, workflow
from testkit.bundle import CLASSIFIER_TINY as TINY

SSL_TINY: dict[str, Any] = {"ssl_num_epochs": 2}


@pytest.fixture(scope="module")
def pretrained(tiny_classification_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    out = tmp_path_factory.mktemp("ssl_out")
    wf = workflow(PRETRAIN, "train", "pretraining", dataset_dir=str(tiny_classification_dataset), ssl_output_dir=str(out), **{**TINY, **SSL_TINY})
    wf.initialize()
    wf.run()
    wf.finalize()
    yield out
    shutil.rmtree(out, ignore_errors=True)  # 0.3 GB of checkpoints; CI disks can be small


def test_pretraining_runs_and_exports_a_backbone_the_classifier_loads(pretrained: Path) -> None:
    history = [json.loads(line) for line in (pretrained / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2]
    assert all(h["train_loss"] > 0 for h in history)
    backbone = torch.load(pretrained / "backbone.pt", weights_only=True)
    assert backbone["conv1.weight"].dtype == torch.float16 and backbone["conv1.weight"].shape[1] == 3
    classifier = CovidClassifier(hidden_dim=32, embedding_dim=8)
    assert load_backbone_weights(classifier, pretrained / "backbone.pt")
    assert torch.equal(classifier.get_parameter("backbone.conv1.weight"), backbone["conv1.weight"].float())
    assert not load_backbone_weights(classifier, None) and not load_backbone_weights(classifier, "")


def test_classifier_training_starts_from_the_pretrained_backbone(
    tiny_classification_dataset: Path, pretrained: Path, tmp_path: Path
) -> None:
    from ignite.engine import Events

    config = parser(CLASSIFIER, dataset_dir=str(tiny_classification_dataset), cls_output_dir=str(tmp_path),
                    cls_backbone_init=str(pretrained / "backbone.pt"), **TINY)
    trainer = config.get_parsed_content("cls_train#trainer")
    trainer.fire_event(Events.STARTED)  # the start is loaded when training starts (before any resume)
    network = config.get_parsed_content("cls_network")
    start = torch.load(pretrained / "backbone.pt", weights_only=True)
    assert torch.equal(network.backbone.conv1.weight.detach().cpu(), start["conv1.weight"].float())
    kept = parser(CLASSIFIER, dataset_dir=str(tiny_classification_dataset), ssl_output_dir=str(pretrained), **TINY)
    assert kept.get_parsed_content("cls_backbone_init") == str(pretrained / "backbone.pt"), "default: run pretraining's"
    scratch = parser(CLASSIFIER, dataset_dir=str(tiny_classification_dataset), ssl_output_dir=str(tiny_classification_dataset / "none"), **TINY)
    assert scratch.get_parsed_content("cls_backbone_init") is None, "without a pretrained backbone: from scratch"

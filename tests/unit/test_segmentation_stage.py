"""``monai_app.workflows.train_segmentation``: what the U-Net stage does with a dataset with and without lung masks."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from torch.utils.data import DataLoader

from monai_app.data.manifest import segmentation_datalist
from monai_app.workflows import no_items, train_segmentation


def _evaluator(items: list[dict[str, torch.Tensor]]) -> SupervisedEvaluator:
    loader: DataLoader[dict[str, torch.Tensor]] = DataLoader(items)  # type: ignore[arg-type]  # a list is a map-style dataset
    return SupervisedEvaluator(device=torch.device("cpu"), val_data_loader=loader, network=torch.nn.Identity())


def _pair() -> dict[str, torch.Tensor]:
    return {"image": torch.zeros(1, 4, 4), "label": torch.zeros(1, 4, 4)}


def _trainer(items: list[dict[str, torch.Tensor]]) -> SupervisedTrainer:
    network = torch.nn.Conv2d(1, 1, 1)
    return SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=1, train_data_loader=DataLoader(items),  # type: ignore[arg-type]
        network=network,
        optimizer=torch.optim.SGD(network.parameters(), lr=0.1), loss_function=torch.nn.MSELoss(),
    )


def test_without_masks_run_training_keeps_the_shipped_unet_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="monai_app.workflows"):
        assert train_segmentation(None, _evaluator([]), without_masks="keep_shipped") is False
    assert "segmentation stage skipped: the dataset has no lung masks" in caplog.text


def test_without_masks_the_stage_run_alone_is_an_error() -> None:
    with pytest.raises(ValueError, match="no training rows with lung masks"):
        train_segmentation(None, _evaluator([_pair()]))


def test_training_masks_without_validation_masks_are_an_error_in_either_mode() -> None:
    for mode in ("error", "keep_shipped"):
        with pytest.raises(ValueError, match="no validation row"):
            train_segmentation(_trainer([_pair()]), _evaluator([]), without_masks=mode)


def test_with_masks_the_unet_trains() -> None:
    trainer = _trainer([_pair(), _pair()])
    assert train_segmentation(trainer, _evaluator([_pair()])) is True
    assert trainer.state.iteration == 2


def test_an_unmasked_split_is_empty_only_when_allowed(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("image_path,patient_id,label,mask_path,split\na.dcm,p,covid,,train\n")
    assert segmentation_datalist(manifest, tmp_path, "train", allow_empty=True) == []
    assert no_items(segmentation_datalist(manifest, tmp_path, "train", allow_empty=True))
    with pytest.raises(ValueError, match="no 'train' rows"):
        segmentation_datalist(manifest, tmp_path, "train")

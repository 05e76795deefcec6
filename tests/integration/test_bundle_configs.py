"""The bundle's segmentation train, evaluate and inference workflows run end to end on tiny real data.

The config checks that need no training are in ``tests/unit/test_segmentation_configs.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from testkit.bundle import (
    EVALUATE,
    INFERENCE,
    SEGMENTATION,
    workflow,
    write_tiny_dataset,
)

TINY: dict[str, Any] = {"spatial_size": [64, 64], "num_epochs": 1, "batch_size": 2, "num_workers": 0}


@pytest.fixture(scope="module")
def tiny_dataset(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few real image/mask pairs at 64x64 with their manifest."""
    root = tmp_path_factory.mktemp("tiny_data")
    write_tiny_dataset(shared_data, root)
    return root


@pytest.fixture(scope="module")
def trained(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Output folder of one epoch of bundle training on the tiny data set."""
    out = tmp_path_factory.mktemp("train_out")
    wf = workflow(
        SEGMENTATION, "train", "training_segmentation", dataset_dir=str(tiny_dataset), output_dir=str(out), **TINY
    )
    wf.initialize()
    assert wf.check_properties() == []
    wf.run()
    wf.finalize()
    return out


def test_training_runs_one_epoch_and_exports_fp16_weights(trained: Path) -> None:
    history = [json.loads(line) for line in (trained / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1]
    assert {"train_loss", "val_dice", "lr"} <= set(history[0])
    state = torch.load(trained / "lung_unet.pt", weights_only=True)
    assert all(t.dtype == torch.float16 for t in state.values() if t.is_floating_point())
    assert list(trained.glob("*checkpoint_epoch=1.pt"))
    assert (trained / "training_curves.png").stat().st_size > 0


def test_training_resumes_from_its_checkpoint(tiny_dataset: Path, trained: Path) -> None:
    wf = workflow(
        SEGMENTATION, "train", "training_segmentation", dataset_dir=str(tiny_dataset), output_dir=str(trained),
        **{**TINY, "num_epochs": 2},
    )
    wf.initialize()
    wf.run()
    wf.finalize()
    epochs = [json.loads(line)["epoch"] for line in (trained / "history.jsonl").read_text().splitlines()]
    assert epochs == [1, 2], "the second run must continue at epoch 2, not restart"


def test_evaluation_writes_segmentation_metrics_on_test_rows(
    tiny_dataset: Path, trained: Path, tmp_path: Path
) -> None:
    wf = workflow(
        EVALUATE, "eval", "evaluating", dataset_dir=str(tiny_dataset),
        output_dir=str(tmp_path), lung_model_file=str(trained / "lung_unet.pt"), **TINY,
    )
    wf.initialize()
    assert wf.check_properties() == []
    wf.run()
    wf.finalize()
    seg = json.loads((tmp_path / "metrics.json").read_text())["segmentation"]
    assert seg["n"] == 2 and 0.0 <= seg["dice_mean"] <= 1.0
    assert seg["dice_ci95"][0] <= seg["dice_mean"] <= seg["dice_ci95"][1]
    assert set(seg["by_source"]) == {"ieee8023"}
    assert (tmp_path / "segmentation_dice_by_source.png").stat().st_size > 0


def test_evaluation_keeps_other_sections_of_metrics_json(
    tiny_dataset: Path, trained: Path, tmp_path: Path
) -> None:
    (tmp_path / "metrics.json").write_text(json.dumps({"classification": {"auc": 0.5}}))
    wf = workflow(
        EVALUATE, "eval", "evaluating", dataset_dir=str(tiny_dataset),
        output_dir=str(tmp_path), lung_model_file=str(trained / "lung_unet.pt"), **TINY,
    )
    wf.initialize()
    wf.run()
    assert set(json.loads((tmp_path / "metrics.json").read_text())) == {"classification", "segmentation"}


def test_inference_writes_a_probability_map_per_png_and_dicom_input(
    shared_data: Path, trained: Path, tmp_path: Path
) -> None:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "chest.dcm").write_bytes((shared_data / "dicom/fo-dicom/CR-MONO1-10-chest.dcm").read_bytes())
    Image.open(sorted((shared_data / "images/nih_cxr14").iterdir())[0]).save(inputs / "nih.png")
    wf = workflow(
        INFERENCE, "infer", "run", dataset_dir=str(inputs), output_dir=str(tmp_path / "out"),
        model_file=str(trained / "lung_unet.pt"), spatial_size=[64, 64],
    )
    wf.initialize()
    assert wf.check_properties() == []
    wf.run()
    wf.finalize()
    for name in ("chest_lung.png", "nih_lung.png"):
        assert np.asarray(Image.open(tmp_path / "out" / name)).shape == (64, 64)

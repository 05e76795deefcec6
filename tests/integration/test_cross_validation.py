"""``run cross_validating`` on the tiny real data set: folds by patient, every arm retrained per fold, resumable."""

from __future__ import annotations

import csv
import json
import shutil
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from monai_app.data.manifest import classification_datalist, read_manifest
from testkit.bundle import CLASSIFIER_PROPERTIES, CROSS_VALIDATE, workflow
from testkit.bundle import CLASSIFIER_TINY as TINY

FOLDS = 3


def cross_validate(data: Path, out: Path) -> dict:
    wf = workflow(CROSS_VALIDATE, "train", "cross_validating", CLASSIFIER_PROPERTIES, dataset_dir=str(data),
                  cv_output_dir=str(out), cv_folds=FOLDS, ssl_output_dir=str(out / "no_pretraining"),
                  bootstrap_resamples=20, **TINY)
    wf.initialize()
    wf.run()
    wf.finalize()
    return json.loads((out / "cross_validation.json").read_text())


@pytest.fixture(scope="module")
def cross_validated(tiny_classification_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict]]:
    """One 3-fold run on the tiny data set: its folder and its ``cross_validation.json``."""
    out = tmp_path_factory.mktemp("cross_validation")
    yield out, cross_validate(tiny_classification_dataset, out)
    shutil.rmtree(out, ignore_errors=True)


def test_every_labelled_image_is_tested_once_by_a_model_that_never_saw_its_patient(
    tiny_classification_dataset: Path, cross_validated: tuple[Path, dict]
) -> None:
    out, result = cross_validated
    labelled = classification_datalist(tiny_classification_dataset / "manifest.csv", tiny_classification_dataset,
                                       ["train", "val", "test"])
    tested: dict[str, list[int]] = defaultdict(list)
    for fold in range(FOLDS):
        rows = read_manifest(out / f"fold_{fold}" / "manifest.csv")
        split_patients = {s: {r["patient_id"] for r in rows if r["split"] == s} for s in ("train", "val", "test")}
        assert not split_patients["test"] & (split_patients["train"] | split_patients["val"])
        assert not split_patients["val"] & split_patients["train"]
        with (out / f"fold_{fold}" / "lung" / "predictions.csv").open(newline="") as handle:
            tested_here = [r["image_path"] for r in csv.DictReader(handle) if r["split"] == "test"]
        for path in tested_here:
            tested[path].append(fold)
        for arm in ("lung", "no_lung", "three_class"):
            kept = {p.name for p in (out / f"fold_{fold}" / arm).glob("*.pt")}
            assert kept == {"classifier.pt"}, "the compact weights stay, the training state is deleted"
    assert sorted(tested) == sorted(str(d["image_path"]) for d in labelled)
    assert all(len(f) == 1 for f in tested.values())
    assert result["n_labelled_images"] == len(labelled)


def test_each_arm_has_fold_figures_an_interval_and_the_paired_effects(cross_validated: tuple[Path, dict]) -> None:
    out, result = cross_validated
    for arm in ("lung", "no_lung", "three_class", "knn_vote"):
        assert len(result[arm]["folds"]) == FOLDS
        auc = result[arm]["over_folds"]["within_source_roc_auc"]
        assert auc["n_folds"] >= 1 and 0.0 <= auc["min"] <= auc["mean"] <= auc["max"] <= 1.0
        assert result[arm]["pooled"]["all"]["n"] == result["n_labelled_images"]
    assert set(result["effects_within_source_roc_auc"]) == {"lung - no_lung", "lung - three_class", "lung - knn_vote"}
    table = (out / "cross_validation.md").read_text()
    assert all(f"| {arm} |" in table for arm in ("lung", "no_lung", "three_class", "knn_vote")) and "| lung - no_lung |" in table
    heads = {arm: torch.load(out / "fold_0" / arm / "classifier.pt", weights_only=True)["fc3.weight"].shape[0]
             for arm in ("lung", "three_class")}
    assert heads == {"lung": 2, "three_class": 3}
    lung = np.load(out / "fold_0" / "lung" / "embeddings.npy")
    no_lung = np.load(out / "fold_0" / "no_lung" / "embeddings.npy")
    assert lung.shape == no_lung.shape and not np.allclose(lung, no_lung), "the arms are different models"


def test_a_second_run_retrains_nothing_and_gives_the_same_figures(
    tiny_classification_dataset: Path, cross_validated: tuple[Path, dict]
) -> None:
    out, result = cross_validated
    before = {p: p.stat().st_mtime_ns for p in out.glob("fold_*/*/classifier.pt")}
    assert cross_validate(tiny_classification_dataset, out) == result
    assert {p: p.stat().st_mtime_ns for p in out.glob("fold_*/*/classifier.pt")} == before

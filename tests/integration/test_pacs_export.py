"""``cxr-node pacs-export`` against a real Orthanc (C-MOVE), then the bundle trains, evaluates and calibrates on the export."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pydicom
import pytest

from monai_app.data.manifest import classification_datalist, read_manifest
from monai_app.retrieval.index import SimilarityIndex, pseudonymous_patient_key
from testkit.bundle import CLASSIFIER_PROPERTIES, EVALUATE, SHIPPED_UNET, TRAIN, workflow
from testkit.bundle import CLASSIFIER_TINY as TINY
from testkit.pacs import CALLING_AE, DATE_FROM, DATE_TO, MOVE_AE, LoadedPacs
from testkit.shared_data import REPO_ROOT

SALT = "test-salt"
SITE = "TESTSITE"


def pacs_export(pacs: LoadedPacs, out: Path) -> dict:
    """``python -m dicom_node pacs-export`` on the test PACS, retrieving by C-MOVE to a temporary SCP."""
    result = subprocess.run(
        [sys.executable, "-m", "dicom_node", "pacs-export", "--pacs", pacs.address, "--calling-ae", CALLING_AE,
         "--from", DATE_FROM, "--to", DATE_TO, "--labels", str(pacs.labels_csv), "--site", SITE, "--out", str(out),
         "--salt", SALT, "--retrieve", "move", "--move-ae", MOVE_AE, "--move-port", str(pacs.move_port)],
        cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for study in pacs.studies:  # nothing identifying in the log
        assert study.patient_id not in result.stderr and study.accession_number not in result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def exported(loaded_pacs: LoadedPacs, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("pacs_export")
    return out, pacs_export(loaded_pacs, out)


def test_the_export_is_a_manifest_of_the_frontal_chest_images_split_by_patient(
    loaded_pacs: LoadedPacs, exported: tuple[Path, dict]
) -> None:
    out, summary = exported
    rows = read_manifest(out / "manifest.csv")
    by_sop = {s.sop_instance_uid: s for s in loaded_pacs.wanted}
    assert sorted(r["sop_instance_uid"] for r in rows) == sorted(by_sop)
    splits = defaultdict(set)
    for row in rows:
        study = by_sop[row["sop_instance_uid"]]
        assert pydicom.dcmread(out / row["image_path"], stop_before_pixels=True).SOPInstanceUID == study.sop_instance_uid
        assert row["patient_id"] == pseudonymous_patient_key(study.patient_id, SALT)
        assert (row["label"], row["source"], row["study_date"], row["mask_path"]) == (
            loaded_pacs.expected_label(study), SITE, study.study_date, "")
        splits[row["patient_id"]].add(row["split"])
    assert all(len(s) == 1 for s in splits.values()), "a patient's studies share one split"
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    manifest = (out / "manifest.csv").read_text()
    assert not [s for s in loaded_pacs.studies if s.patient_id in manifest or s.accession_number in manifest]
    assert summary["retrieved"] == len(by_sop) and summary["labels"]["unknown"] == sum(
        loaded_pacs.expected_label(s) == "unknown" for s in loaded_pacs.wanted)


def test_exporting_again_retrieves_nothing_and_writes_the_same_manifest(
    loaded_pacs: LoadedPacs, exported: tuple[Path, dict]
) -> None:
    out, _ = exported
    before = (out / "manifest.csv").read_bytes()
    again = pacs_export(loaded_pacs, out)
    assert (again["retrieved"], again["on_disk"]) == (0, len(loaded_pacs.wanted))
    assert (out / "manifest.csv").read_bytes() == before


def test_run_training_trains_on_the_export_with_the_shipped_unet_then_evaluates_and_calibrates(
    exported: tuple[Path, dict], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out, _ = exported
    trained, unet_out = tmp_path / "classifier", tmp_path / "unet"
    train = workflow(TRAIN, "train", "training", dataset_dir=str(out), output_dir=str(unet_out),
                     cls_output_dir=str(trained), ssl_output_dir=str(tmp_path / "pretraining"),
                     cls_index_salt=SALT, **TINY)
    train.initialize()
    with caplog.at_level(logging.INFO):
        train.run()
    train.finalize()
    assert "segmentation stage skipped: the dataset has no lung masks" in caplog.text
    assert f"lung channel: U-Net weights {SHIPPED_UNET}" in caplog.text, "an export has no masks: the bundle's U-Net stays"
    assert not (unet_out / "lung_unet.pt").exists()
    assert (trained / "classifier.pt").is_file() and (tmp_path / "pretraining" / "backbone.pt").is_file()
    index = SimilarityIndex.load(trained / "index")
    exported_studies = {r["study_instance_uid"] for r in read_manifest(out / "manifest.csv")}
    assert index.items and {i.study_instance_uid for i in index.items} <= exported_studies, "the PACS's own UIDs"
    labelled_train = classification_datalist(out / "manifest.csv", out, "train")
    assert all(str(item["image"]).endswith(".dcm") for item in labelled_train), "unknown rows are left out, DICOM read"

    for run_id, split, folder in (("evaluating_classifier", "test", "evaluation"), ("calibrating_threshold", "val", "calibration")):
        evaluation = workflow(EVALUATE, "eval", run_id, CLASSIFIER_PROPERTIES, dataset_dir=str(out),
                              output_dir=str(tmp_path / folder), cls_model_file=str(trained / "classifier.pt"),
                              eval_split=split, bootstrap_resamples=20, **TINY)
        evaluation.initialize()
        evaluation.run()
        evaluation.finalize()
    metrics = json.loads((tmp_path / "evaluation" / "metrics.json").read_text())["classifier"]
    assert metrics["n"] == len(classification_datalist(out / "manifest.csv", out, "test"))
    assert set(metrics["per_source"]) == {SITE}
    threshold = json.loads((tmp_path / "calibration" / "threshold.json").read_text())
    assert 0.0 <= threshold["threshold"] <= 1.0

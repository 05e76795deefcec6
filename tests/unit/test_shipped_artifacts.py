"""The shipped model files, read without running them: weight forms, recorded hashes, index items, threshold.

What the shipped models do on real images is checked in ``tests/integration/test_lung_weights.py``
and ``tests/integration/test_shipped_classifier.py``.
"""

from __future__ import annotations

import csv
import io
import lzma
import re
from pathlib import Path

import pytest
import torch

from monai_app.weights import sha256_of
from testkit.bundle import BUNDLE, EVALUATE, INFERENCE_CLASSIFIER, parser

LUNG_WEIGHTS = BUNDLE / "models" / "lung_unet.pt"
LUNG_RECORD = BUNDLE / "docs" / "training_record.md"
CLASSIFIER_WEIGHTS = BUNDLE / "models" / "classifier.int8.xz"
CLASSIFIER_RECORD = BUNDLE / "docs" / "classifier_training_record.md"


@pytest.fixture(scope="module")
def manifest_rows(shared_data: Path) -> list[dict[str, str]]:
    with (shared_data / "manifest.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_shipped_weights_are_compact_fp16_and_match_the_recorded_hash() -> None:
    assert LUNG_WEIGHTS.stat().st_size < 10 * 2**20
    state = torch.load(LUNG_WEIGHTS, weights_only=True)
    assert {t.dtype for t in state.values() if t.is_floating_point()} == {torch.float16}
    recorded = re.findall(r"\b[0-9a-f]{64}\b", LUNG_RECORD.read_text())
    assert sha256_of(LUNG_WEIGHTS) in recorded


def test_shipped_classifier_is_compact_int8_and_matches_the_recorded_hash() -> None:
    assert CLASSIFIER_WEIGHTS.stat().st_size < 20 * 2**20
    packed = torch.load(io.BytesIO(lzma.decompress(CLASSIFIER_WEIGHTS.read_bytes())), weights_only=True)
    kernels = [v for v in packed.values() if isinstance(v, dict)]
    assert kernels and all(v["int8"].dtype == torch.int8 for v in kernels)
    assert {v.dtype for v in packed.values() if isinstance(v, torch.Tensor) and v.is_floating_point()} == {torch.float16}
    assert sha256_of(CLASSIFIER_WEIGHTS) in re.findall(r"\b[0-9a-f]{64}\b", CLASSIFIER_RECORD.read_text())


def test_shipped_index_items_carry_no_patient_id(manifest_rows: list[dict[str, str]]) -> None:
    text = (BUNDLE / "models" / "index" / "items.csv").read_text()
    patient_ids = {r["patient_id"] for r in manifest_rows if r["split"] == "train"}
    assert not [p for p in patient_ids if re.search(rf"(?<![\w.]){re.escape(p)}(?![\w.])", text)]


def test_shipped_threshold_is_the_one_chosen_on_validation() -> None:
    import json

    chosen = json.loads((BUNDLE / "docs" / "evaluation" / "metrics.json").read_text())["threshold"]
    assert chosen["subset"] == "within_source" and "validation" in chosen["method"]
    config = parser(INFERENCE_CLASSIFIER)
    calibration = config.get_parsed_content("calibration")
    # Chosen on the raw softmax, carried onto the calibrated scale the node's probability is on.
    assert calibration.raw_threshold == round(chosen["threshold"], 2)
    assert config.get_parsed_content("threshold") == calibration.map_threshold(calibration.raw_threshold)
    evaluated = parser(EVALUATE).get_parsed_content("cls_threshold")
    assert evaluated == calibration.raw_threshold, "evaluating_classifier must report at the threshold the node uses"


def test_shipped_calibration_is_the_one_fitted_on_validation_and_keeps_decisions() -> None:
    import csv
    import json

    from monai_app.calibration import load_calibration, logit

    report = json.loads((BUNDLE / "docs" / "evaluation" / "metrics.json").read_text())["calibration"]
    shipped = load_calibration(BUNDLE / "models" / "calibration.json")
    assert report["calibration"] == shipped.to_dict() and report["parameters_sha256"] == shipped.sha256
    assert report["decisions_kept"] == {"val": True, "test": True}
    point = shipped.operating_point
    assert point is not None and point.split == "val" and point.subset == "within_source"
    # The operating point is the raw threshold's on the validation rows of the sources with both labels.
    with (BUNDLE / "docs" / "evaluation" / "calibration_per_image.csv").open(newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["split"] == "val"]
    mixed = {r["source"] for r in rows if r["label"] == "1"} & {r["source"] for r in rows if r["label"] == "0"}
    within = [r for r in rows if r["source"] in mixed]
    called = [float(r["margin"]) >= logit(shipped.raw_threshold) for r in within]
    positives = [c for c, r in zip(called, within) if r["label"] == "1"]
    negatives = [not c for c, r in zip(called, within) if r["label"] == "0"]
    assert point.n == len(within) == report["val"]["within_source"]["n"]
    assert point.sensitivity == pytest.approx(sum(positives) / len(positives))
    assert point.specificity == pytest.approx(sum(negatives) / len(negatives))

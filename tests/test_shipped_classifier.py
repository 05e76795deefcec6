"""The shipped classifier and similar-study index, loaded as the node loads them.

The analyser takes the bundle's inference IDs with MONAI's ConfigParser, so these tests
exercise exactly what the node runs on real shared images.
"""

from __future__ import annotations

import csv
import io
import lzma
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import mannwhitneyu

from monai_app.inference import BundleAnalyser
from monai_app.weights import sha256_of
from monai_app.retrieval.index import reference_uids
from tests.bundle_helpers import BUNDLE, EVALUATE, INFERENCE_CLASSIFIER, parser

WEIGHTS = BUNDLE / "models" / "classifier.int8.xz"
RECORD = BUNDLE / "docs" / "classifier_training_record.md"
PER_CLASS = 32  # test images per class (the model is weak within source: fewer cannot show it beats chance)
MAX_P_VALUE = 0.02  # one-sided Mann-Whitney: random weights pass with probability 0.02


@pytest.fixture(scope="module")
def analyser() -> BundleAnalyser:
    return BundleAnalyser(BUNDLE, "cpu")


@pytest.fixture(scope="module")
def manifest_rows(shared_data: Path) -> list[dict[str, str]]:
    with (shared_data / "manifest.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_shipped_classifier_is_compact_int8_and_matches_the_recorded_hash() -> None:
    assert WEIGHTS.stat().st_size < 20 * 2**20
    packed = torch.load(io.BytesIO(lzma.decompress(WEIGHTS.read_bytes())), weights_only=True)
    kernels = [v for v in packed.values() if isinstance(v, dict)]
    assert kernels and all(v["int8"].dtype == torch.int8 for v in kernels)
    assert {v.dtype for v in packed.values() if isinstance(v, torch.Tensor) and v.is_floating_point()} == {torch.float16}
    assert sha256_of(WEIGHTS) in re.findall(r"\b[0-9a-f]{64}\b", RECORD.read_text())


def test_shipped_classifier_ranks_real_test_images_better_than_chance(
    analyser: BundleAnalyser, manifest_rows: list[dict[str, str]], shared_data: Path
) -> None:
    chosen = {
        label: [r for r in manifest_rows if r["split"] == "test" and r["label"] == label][:PER_CLASS]
        for label in ("covid", "non_covid")
    }
    scores = {}
    for label, rows in chosen.items():
        predictions = []
        for start in range(0, len(rows), 8):
            batch = [analyser.prepare(shared_data / row["image_path"]) for row in rows[start:start + 8]]
            predictions += analyser.predict(batch)
        assert all(p.embedding.shape == (128,) and np.isfinite(p.embedding).all() for p in predictions)
        scores[label] = [p.probability for p in predictions]
    result = mannwhitneyu(scores["covid"], scores["non_covid"], alternative="greater")
    auc = result.statistic / (len(scores["covid"]) * len(scores["non_covid"]))
    assert result.pvalue < MAX_P_VALUE, f"ROC AUC {auc:.3f} on {2 * PER_CLASS} test images: no better than chance"


def test_shipped_index_returns_a_training_image_as_its_own_nearest_neighbour(
    analyser: BundleAnalyser, manifest_rows: list[dict[str, str]], shared_data: Path
) -> None:
    row = next(r for r in manifest_rows if r["split"] == "train" and r["label"] == "covid")
    prediction = analyser.predict([analyser.prepare(shared_data / row["image_path"])])[0]
    first = analyser.similar(prediction.embedding, 4)
    assert first[0].item.sop_instance_uid == str(reference_uids(row["image_path"])[2])
    assert first[0].distance < 1e-2 and first[0].item.label == "covid"
    again = analyser.similar(prediction.embedding, 4)
    assert [(n.item.sop_instance_uid, n.distance) for n in again] == [(n.item.sop_instance_uid, n.distance) for n in first]


def test_shipped_index_items_carry_no_patient_id(manifest_rows: list[dict[str, str]]) -> None:
    text = (BUNDLE / "models" / "index" / "items.csv").read_text()
    patient_ids = {r["patient_id"] for r in manifest_rows if r["split"] == "train"}
    assert not [p for p in patient_ids if re.search(rf"(?<![\w.]){re.escape(p)}(?![\w.])", text)]


def test_shipped_threshold_is_the_one_chosen_on_validation(analyser: BundleAnalyser) -> None:
    import json

    chosen = json.loads((BUNDLE / "docs" / "evaluation" / "metrics.json").read_text())["threshold"]
    assert chosen["subset"] == "within_source" and "validation" in chosen["method"]

    shipped = parser(INFERENCE_CLASSIFIER).get_parsed_content("threshold")
    assert shipped == round(chosen["threshold"], 2)
    evaluated = parser(EVALUATE).get_parsed_content("cls_threshold")
    assert evaluated == shipped, "evaluating_classifier must report at the threshold the node uses"
    assert analyser.threshold == shipped, "the node reads the inference config's threshold"

"""The shipped classifier and similar-study index, loaded as the node loads them.

The analyser takes the bundle's inference IDs with MONAI's ConfigParser, so these tests
exercise exactly what the node runs on real shared images.
"""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from monai_app.bundle_inference import BundleAnalyser
from monai_app.export import sha256_of
from monai_app.similarity import reference_uids
from tests.bundle_helpers import BUNDLE

WEIGHTS = BUNDLE / "models" / "classifier.pt"
RECORD = BUNDLE / "docs" / "classifier_training_record.md"
PER_CLASS = 8  # test images per class


def _binomial_tail(k: int, n: int) -> float:
    """P(X >= k) for X ~ Binomial(n, 0.5): how likely ``k`` right answers are by chance."""
    return sum(math.comb(n, i) for i in range(k, n + 1)) / 2**n


@pytest.fixture(scope="module")
def analyser() -> BundleAnalyser:
    return BundleAnalyser(BUNDLE, "cpu")


@pytest.fixture(scope="module")
def manifest_rows(shared_data: Path) -> list[dict[str, str]]:
    with (shared_data / "manifest.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_shipped_classifier_is_compact_fp16_and_matches_the_recorded_hash() -> None:
    assert WEIGHTS.stat().st_size < 60 * 2**20
    state = torch.load(WEIGHTS, weights_only=True)
    assert {t.dtype for t in state.values() if t.is_floating_point()} == {torch.float16}
    assert sha256_of(WEIGHTS) in re.findall(r"\b[0-9a-f]{64}\b", RECORD.read_text())


def test_shipped_classifier_scores_real_test_images_better_than_chance(
    analyser: BundleAnalyser, manifest_rows: list[dict[str, str]], shared_data: Path
) -> None:
    chosen = [
        row for label in ("covid", "non_covid")
        for row in [r for r in manifest_rows if r["split"] == "test" and r["label"] == label][:PER_CLASS]
    ]
    images = [analyser.prepare(shared_data / row["image_path"]) for row in chosen]
    predictions = analyser.predict(images)
    right = sum((p.probability >= 0.5) == (row["label"] == "covid") for p, row in zip(predictions, chosen))
    assert _binomial_tail(right, len(chosen)) < 0.01, f"{right} of {len(chosen)} right: no better than chance"
    assert all(p.embedding.shape == (128,) and np.isfinite(p.embedding).all() for p in predictions)


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

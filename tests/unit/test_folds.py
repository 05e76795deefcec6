"""``monai_app.evaluation.folds`` on the shared manifest: patient-grouped, stratified folds and the kNN vote."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from monai_app.data.manifest import read_manifest
from monai_app.evaluation.folds import assign_folds, fold_rows, fold_summary, knn_vote_scores, paired_effects
from monai_app.labels import CLASS_NAMES


def test_folds_keep_each_patient_whole_and_each_source_and_label_spread(shared_data: Path) -> None:
    rows = read_manifest(shared_data / "manifest.csv")
    fold_of = assign_folds(rows, n_folds=5, seed=0)
    labelled = [r for r in rows if r["label"] in CLASS_NAMES]
    assert set(fold_of) == {r["patient_id"] for r in labelled}
    cells: dict[str, Counter[int]] = defaultdict(Counter)
    for r in labelled:
        cells[f"{r['source']}|{r['label']}"][fold_of[r["patient_id"]]] += 1
    for cell, per_fold in cells.items():
        total = sum(per_fold.values())
        if total >= 50:  # big cells: every fold within 40 % of its fair share
            assert len(per_fold) == 5 and max(per_fold.values()) <= 1.4 * total / 5, cell
    assert assign_folds(rows, n_folds=5, seed=0) == fold_of, "reproducible"
    assert assign_folds(rows, n_folds=5, seed=1) != fold_of


def test_a_fold_manifest_tests_one_fold_validates_the_next_and_trains_on_the_rest(shared_data: Path) -> None:
    rows = read_manifest(shared_data / "manifest.csv")
    fold_of = assign_folds(rows, n_folds=5)
    for fold in range(5):
        split = fold_rows(rows, fold_of, fold, 5)
        for r in split:
            held = fold_of.get(r["patient_id"])
            expected = "test" if held == fold else "val" if held == (fold + 1) % 5 else "train"
            assert r["split"] == expected
        assert [r["image_path"] for r in split] == [r["image_path"] for r in rows]


def test_the_knn_vote_is_the_share_of_covid_among_the_nearest() -> None:
    reference = np.array([[1.0, 0.0], [0.8, 0.2], [0.7, 0.3], [0.0, 1.0], [0.1, 0.9]])
    labels = [1, 1, 0, 0, 0]
    scores = knn_vote_scores(reference, labels, np.array([[1.0, 0.1], [0.0, 1.0]]), k=3)
    assert scores.tolist() == [2 / 3, 0.0]
    assert knn_vote_scores(reference * 5.0, labels, np.array([[2.0, 0.2]]), k=2).tolist() == [1.0], "cosine: scale-free"


def test_fold_summaries_and_effects_leave_out_undefined_folds() -> None:
    assert fold_summary([None, 0.5])["n_folds"] == 1 and fold_summary([None, 0.5])["ci95"] is None
    assert fold_summary([None])["mean"] is None
    effect = paired_effects({"a": [0.9, None, 0.7], "b": [0.8, 0.6, 0.9]}, [("a", "b")])["a - b"]
    assert effect["n_folds"] == 2 and abs(effect["mean"] - (-0.05)) < 1e-9 and effect["ci95"][0] >= -1.0

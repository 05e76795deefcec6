"""Classifier metrics: values, patient-clustered bootstrap CIs, per-source breakdown."""

from __future__ import annotations

from typing import Any

import pytest

from monai_app.evaluation.classification import (
    classification_report,
    confusion_matrix,
    summarise_classification,
)


def test_metrics_of_a_known_example() -> None:
    labels = [1, 1, 1, 0, 0, 0, 0]
    scores = [0.9, 0.6, 0.4, 0.7, 0.2, 0.1, 0.3]
    s: dict[str, Any] = summarise_classification(labels, scores, [str(i) for i in range(7)], n_resamples=200)
    assert s["confusion_matrix"] == [[3, 1], [1, 2]]
    assert s["accuracy"] == pytest.approx(5 / 7)
    assert s["sensitivity"] == pytest.approx(2 / 3) and s["specificity"] == pytest.approx(3 / 4)
    assert s["roc_auc"] == pytest.approx(10 / 12)  # 10 of 12 positive/negative pairs ranked right
    assert (s["n"], s["n_positive"], s["n_negative"], s["n_patients"]) == (7, 3, 4, 7)
    for name in ("accuracy", "sensitivity", "specificity", "roc_auc", "pr_auc"):
        low, high = s[f"{name}_ci95"]
        assert low <= s[name] <= high


def test_bootstrap_resamples_patients_not_images() -> None:
    labels, scores = [1, 1, 0, 0] * 4, [0.9, 0.4, 0.6, 0.1] * 4
    by_image: dict[str, Any] = summarise_classification(labels, scores, [str(i) for i in range(16)], n_resamples=500)
    by_patient: dict[str, Any] = summarise_classification(labels, scores, [str(i // 4) for i in range(16)], n_resamples=500)
    assert by_patient["accuracy"] == by_image["accuracy"] == 0.5
    assert by_patient["n_patients"] == 4
    # every patient has the same four images: resampling patients cannot move the accuracy
    assert by_patient["accuracy_ci95"] == [0.5, 0.5]
    assert by_image["accuracy_ci95"][0] < 0.5 < by_image["accuracy_ci95"][1]


def test_report_per_source_and_within_source() -> None:
    rows = [
        {"label": 1, "score": 0.8, "patient_id": "a1", "source": "ieee8023"},
        {"label": 1, "score": 0.7, "patient_id": "a2", "source": "ieee8023"},
        {"label": 0, "score": 0.2, "patient_id": "n1", "source": "nih_cxr14"},
        {"label": 1, "score": 0.4, "patient_id": "m1", "source": "actualmed"},
        {"label": 0, "score": 0.6, "patient_id": "m2", "source": "actualmed"},
    ]
    r: dict[str, Any] = classification_report(rows, n_resamples=50)
    assert set(r["per_source"]) == {"actualmed", "ieee8023", "nih_cxr14"}
    assert r["per_source"]["ieee8023"]["roc_auc"] is None and r["per_source"]["ieee8023"]["sensitivity"] == 1.0
    assert r["within_source"]["sources"] == ["actualmed"]
    assert r["within_source"]["roc_auc"] == 0.0 and r["within_source"]["accuracy"] == 0.0
    assert r["roc_auc"] == pytest.approx(5 / 6)  # 5 of 6 pairs ranked right
    assert classification_report(rows[:3], n_resamples=50)["within_source"] is None


def test_confusion_matrix_and_input_checks() -> None:
    assert confusion_matrix([0, 1], [0.5, 0.49]) == [[0, 1], [1, 0]]
    with pytest.raises(ValueError, match="one length"):
        summarise_classification([0, 1], [0.1], ["a", "b"])

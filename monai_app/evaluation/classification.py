"""Evaluation report of the COVID-19 classifier: the ``"classifier"`` section of ``metrics.json``.

Metrics are computed on the probability of the positive class (``covid``), thresholded at
``threshold`` for accuracy, sensitivity, specificity and the confusion matrix. 95 %
confidence intervals come from a bootstrap that resamples *patients* (all images of a
patient together). Because the shared data's negatives come mostly from other sources than
its positives, the report also breaks results down by source (``per_source``) and gives
the metrics restricted to the sources that have both labels (``within_source``), where a
source shortcut cannot help. Figures (:mod:`monai_app.evaluation.plots`) show the ROC and PR
curves of all images and of that within-source subset, and the score histogram.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from monai_app.data.sampling import sources_with_both_labels
from monai_app.evaluation.plots import plot_pr_curves, plot_roc_curves, plot_score_histogram
from monai_app.evaluation.segmentation import PerImageReport, update_metrics_file
from monai_app.labels import DEFAULT_THRESHOLD
from monai_app.metrics import patient_resamples

logger = logging.getLogger(__name__)

SECTION = "classifier"
"""Top-level key of the classifier's metrics in ``metrics.json``."""

FIGURES = {
    "roc": "roc.png",
    "pr": "pr.png",
    "score_histogram": "score_histogram.png",
}
"""Figure files :class:`ClassificationReport` writes beside ``metrics.json``, after ``<section>_``."""


def _accuracy(y: np.ndarray, p: np.ndarray, t: float) -> float | None:
    return float(np.mean((p >= t) == (y == 1))) if y.size else None


def _sensitivity(y: np.ndarray, p: np.ndarray, t: float) -> float | None:
    positives = y == 1
    return float(np.mean(p[positives] >= t)) if positives.any() else None


def _specificity(y: np.ndarray, p: np.ndarray, t: float) -> float | None:
    negatives = y == 0
    return float(np.mean(p[negatives] < t)) if negatives.any() else None


def _roc_auc(y: np.ndarray, p: np.ndarray, t: float) -> float | None:
    return float(roc_auc_score(y, p)) if 0 < y.sum() < y.size else None


def _pr_auc(y: np.ndarray, p: np.ndarray, t: float) -> float | None:
    return float(average_precision_score(y, p)) if 0 < y.sum() < y.size else None


METRICS: dict[str, Callable[[np.ndarray, np.ndarray, float], float | None]] = {
    "accuracy": _accuracy,
    "sensitivity": _sensitivity,
    "specificity": _specificity,
    "roc_auc": _roc_auc,
    "pr_auc": _pr_auc,
}
"""Metric name -> function of (labels, positive-class probabilities, threshold); ``None``
when the metric is undefined (e.g. AUC with one class only)."""


def confusion_matrix(labels: Sequence[int], scores: Sequence[float], threshold: float = DEFAULT_THRESHOLD) -> list[list[int]]:
    """``[[TN, FP], [FN, TP]]`` (rows: true class 0/1, columns: predicted class 0/1)."""
    y = np.asarray(labels, dtype=int)
    predicted = (np.asarray(scores, dtype=float) >= threshold).astype(int)
    return [[int(np.sum((y == t) & (predicted == q))) for q in (0, 1)] for t in (0, 1)]


def summarise_classification(
    labels: Sequence[int],
    scores: Sequence[float],
    patients: Sequence[str],
    threshold: float = DEFAULT_THRESHOLD,
    n_resamples: int = 2000,
    seed: int = 0,
) -> dict[str, object]:
    """Metrics with patient-clustered bootstrap 95 % CIs, confusion matrix and counts.

    Parameters
    ----------
    labels : Sequence of int
        True class per image (1 = covid).
    scores : Sequence of float
        Predicted probability of class 1 per image.
    patients : Sequence of str
        Patient id per image (the bootstrap's cluster).
    threshold : float
        Decision threshold on the probability.
    n_resamples : int
        Bootstrap resamples.
    seed : int
        Bootstrap seed (the intervals are reproducible).

    Returns
    -------
    dict
        ``{<metric>: value or None, <metric>_ci95: [low, high] or None, ...,
        "confusion_matrix": [[TN, FP], [FN, TP]], "n", "n_positive", "n_negative",
        "n_patients", "threshold"}``.

    Raises
    ------
    ValueError
        If the inputs are empty or of different lengths.
    """
    y = np.asarray(labels, dtype=int)
    p = np.asarray(scores, dtype=float)
    groups = np.asarray(patients)
    if y.size == 0 or not (y.shape == p.shape == groups.shape):
        raise ValueError('Arguments "labels", "scores" and "patients" must be non-empty and of one length')
    group_of, cluster_draws = patient_resamples(patients, n_resamples, seed)
    n_patients = cluster_draws.shape[1]
    members = [np.flatnonzero(group_of == g) for g in range(n_patients)]
    draws = [np.concatenate([members[g] for g in row]) for row in cluster_draws]
    section: dict[str, object] = {}
    for name, fn in METRICS.items():
        value = fn(y, p, threshold)
        section[name] = value
        resampled = [v for v in (fn(y[idx], p[idx], threshold) for idx in draws) if v is not None]
        section[f"{name}_ci95"] = (
            [float(q) for q in np.quantile(resampled, [0.025, 0.975])]
            if value is not None and len(resampled) >= max(10, n_resamples // 2) else None
        )
    section.update(
        confusion_matrix=confusion_matrix(y.tolist(), p.tolist(), threshold),
        n=int(y.size),
        n_positive=int(y.sum()),
        n_negative=int(y.size - y.sum()),
        n_patients=int(n_patients),
        threshold=float(threshold),
    )
    return section


def classification_report(
    rows: Sequence[dict[str, Any]], threshold: float = DEFAULT_THRESHOLD, n_resamples: int = 2000, seed: int = 0
) -> dict[str, object]:
    """The ``"classifier"`` section from per-image rows.

    Parameters
    ----------
    rows : Sequence of dict
        One per image, with ``label`` (0/1), ``score`` (probability of class 1),
        ``patient_id`` and ``source``.
    threshold, n_resamples, seed
        See :func:`summarise_classification`.

    Returns
    -------
    dict
        The overall metrics, plus ``per_source`` (one entry per source) and
        ``within_source`` (pooled over the sources having both labels, with their names
        under ``sources``; ``None`` if no source has both).
    """
    def summary(selected: Sequence[dict[str, Any]]) -> dict[str, object]:
        return summarise_classification(
            [int(r["label"]) for r in selected], [float(r["score"]) for r in selected],
            [str(r["patient_id"]) for r in selected], threshold, n_resamples, seed,
        )

    section = summary(rows)
    sources = sorted({str(r["source"]) for r in rows})
    section["per_source"] = {s: summary([r for r in rows if r["source"] == s]) for s in sources}
    mixed = sources_with_both_labels(rows)
    if mixed:
        section["within_source"] = {"sources": mixed, **summary([r for r in rows if r["source"] in mixed])}
    else:
        section["within_source"] = None
    return section


def curve_subsets(
    rows: Sequence[dict[str, object]], within_sources: Sequence[str] | None
) -> dict[str, tuple[list[int], list[float]]]:
    """Labels and scores of all images and of the within-source subset, for the curve figures.

    Parameters
    ----------
    rows : Sequence of dict
        Per-image rows with ``label``, ``score`` and ``source``.
    within_sources : Sequence of str or None
        The sources having both labels (``within_source["sources"]`` of the report);
        ``None`` or empty: no within-source curve.

    Returns
    -------
    dict
        ``{"all images": (labels, scores)}``, plus ``"within source (<sources>)"`` when
        there are such sources.

    >>> rows = [{"label": 1, "score": 0.9, "source": "a"}, {"label": 0, "score": 0.2, "source": "b"}]
    >>> curve_subsets(rows, ["a"])
    {'all images': ([1, 0], [0.9, 0.2]), 'within source (a)': ([1], [0.9])}
    """
    def pick(selected: Sequence[dict[str, object]]) -> tuple[list[int], list[float]]:
        labels = [int(r["label"]) for r in selected]  # type: ignore[call-overload]
        return labels, [float(r["score"]) for r in selected]  # type: ignore[arg-type]

    subsets = {"all images": pick(rows)}
    if within_sources:
        names = ", ".join(within_sources) if len(within_sources) <= 3 else f"{len(within_sources)} sources"
        subsets[f"within source ({names})"] = pick([r for r in rows if r["source"] in set(within_sources)])
    return subsets


def write_classifier_figures(
    rows: Sequence[dict[str, object]],
    within_sources: Sequence[str] | None,
    output_dir: str | Path,
    threshold: float = DEFAULT_THRESHOLD,
    prefix: str = SECTION,
) -> list[Path]:
    """Write the ROC, PR and score-histogram figures (:data:`FIGURES`) into ``output_dir``.

    Returns
    -------
    list of pathlib.Path
        The files written.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    subsets = curve_subsets(rows, within_sources)
    paths = {name: output_dir / f"{prefix}_{file}" for name, file in FIGURES.items()}
    plot_roc_curves(subsets, paths["roc"])
    plot_pr_curves(subsets, paths["pr"])
    plot_score_histogram(*subsets["all images"], paths["score_histogram"], threshold=threshold)
    return list(paths.values())


class ClassificationReport(PerImageReport):
    """Collect per-image predictions during evaluation, then write the classifier's report.

    Writes the ``section`` (``"classifier"``) of ``output_dir/metrics.json`` (other sections
    are kept), ``<section>_per_image.csv`` and the figures ``<section>_roc.png``,
    ``<section>_pr.png`` (all images and the within-source subset) and
    ``<section>_score_histogram.png``. The evaluator's postprocessing must give
    ``pred`` as class probabilities (softmax) and ``label`` as a class index or one-hot.

    Parameters
    ----------
    output_dir : str or pathlib.Path
        Folder of the report.
    threshold : float
        Decision threshold on the covid probability.
    n_resamples : int
        Bootstrap resamples.
    seed : int
        Bootstrap seed.
    section : str
        Section of ``metrics.json`` and prefix of the files (``"ablation"`` for the network
        without the lung channel).
    """

    def __init__(
        self, output_dir: str | Path, threshold: float = DEFAULT_THRESHOLD, n_resamples: int = 2000, seed: int = 0,
        section: str = SECTION,
    ) -> None:
        self.section = str(section)
        self.output_dir = Path(output_dir)
        self.threshold = float(threshold)
        self.n_resamples = int(n_resamples)
        self.seed = int(seed)
        self.rows: list[dict[str, Any]] = []

    def _collect(self, engine: Engine) -> None:
        for item, out in zip(engine.state.batch, engine.state.output):  # type: ignore[call-overload]  # lists at EPOCH_COMPLETED
            pred = torch.as_tensor(out["pred"]).reshape(-1)
            label = torch.as_tensor(out["label"]).reshape(-1)
            self.rows.append(
                {
                    "image_path": str(item.get("image_path", "")),
                    "patient_id": str(item.get("patient_id", "")),
                    "source": str(item.get("source", "unknown")),
                    "label": int(label.argmax()) if label.numel() > 1 else int(label.item()),
                    "score": float(pred[1]),
                }
            )

    def _write(self, engine: Engine) -> None:
        if not self.rows:
            raise ValueError("the evaluation saw no images")
        section = classification_report(self.rows, self.threshold, self.n_resamples, self.seed)
        update_metrics_file(self.output_dir / "metrics.json", self.section, section)
        with (self.output_dir / f"{self.section}_per_image.csv").open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(  # no patient IDs in the per-image table
                fh, fieldnames=["image_path", "source", "label", "score"], extrasaction="ignore"
            )
            writer.writeheader()
            writer.writerows(self.rows)
        within = section["within_source"]
        write_classifier_figures(
            self.rows, within["sources"] if isinstance(within, dict) else None, self.output_dir, self.threshold,
            prefix=self.section,
        )
        logger.info(
            self.section + ": n=%d accuracy=%s roc_auc=%s", section["n"], section["accuracy"], section["roc_auc"]
        )


def youden_threshold(labels: Sequence[int], scores: Sequence[float]) -> float:
    """The score threshold that maximises Youden's J (sensitivity + specificity - 1).

    Ties go to the higher threshold (fewer positive calls).

    >>> youden_threshold([0, 0, 1, 1], [0.1, 0.3, 0.35, 0.8])
    0.35
    """
    y, p = np.asarray(labels, dtype=int), np.asarray(scores, dtype=float)
    if not 0 < y.sum() < y.size:
        raise ValueError("calibration needs both labels")
    fpr, tpr, thresholds = roc_curve(y, p)
    finite = np.isfinite(thresholds)
    j = np.where(finite, tpr - fpr, -np.inf)
    return float(thresholds[int(np.argmax(j))])


def threshold_subset(rows: Sequence[Mapping[str, Any]]) -> tuple[list[Mapping[str, Any]], list[str]]:
    """The rows that choose a threshold, and their sources: those of the sources having both
    labels (where the source cannot give the answer away), else all rows.

    >>> threshold_subset([{"source": "a", "label": 0}, {"source": "a", "label": 1}, {"source": "b", "label": 0}])[1]
    ['a']
    """
    mixed = sources_with_both_labels(rows)
    return ([r for r in rows if r["source"] in mixed] if mixed else list(rows)), mixed


def calibrate_threshold(per_image_csv: str | Path, output: str | Path) -> float:
    """Choose the decision threshold on a validation report and write it as JSON.

    The rows of the sources having both labels (where the source cannot give the answer
    away) choose it by Youden's J; without such a source, all rows do.

    Parameters
    ----------
    per_image_csv : str or pathlib.Path
        ``classifier_per_image.csv`` of ``evaluating_classifier`` run on the *validation* split.
    output : str or pathlib.Path
        JSON file: ``threshold``, ``subset``, ``sources``, ``n``, and the ``sensitivity`` and
        ``specificity`` at the threshold on that subset.

    Returns
    -------
    float
        The threshold.
    """
    with Path(per_image_csv).open(newline="", encoding="utf-8") as handle:
        rows: list[dict[str, Any]] = [
            {"source": r["source"], "label": int(r["label"]), "score": float(r["score"])} for r in csv.DictReader(handle)
        ]
    subset, mixed = threshold_subset(rows)
    labels, scores = [r["label"] for r in subset], [r["score"] for r in subset]
    threshold = youden_threshold(labels, scores)
    y, p = np.asarray(labels), np.asarray(scores)
    record = {
        "threshold": threshold,
        "method": "Youden's J on the validation split",
        "subset": "within_source" if mixed else "all",
        "sources": mixed,
        "n": len(subset),
        "sensitivity": _sensitivity(y, p, threshold),
        "specificity": _specificity(y, p, threshold),
    }
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    Path(output).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    logger.info("calibrated threshold %.4f on %d %s validation images", threshold, len(subset), record["subset"])
    return threshold

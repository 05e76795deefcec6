"""Patient-grouped, stratified folds of a manifest, and the figures of out-of-fold predictions (pure).

The cross-validation (:mod:`monai_app.evaluation.cross_validation`) retrains the classifier on
each fold; everything it decides from data is here, without torch: which patient is in which
fold, what each fold's manifest says, the k-nearest-neighbour vote on the same folds, and the
summary over folds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from monai_app.labels import CLASS_NAMES

T_975 = {2: 12.706, 3: 4.303, 4: 3.182, 5: 2.776, 6: 2.571, 7: 2.447, 8: 2.365, 9: 2.306, 10: 2.262}
"""Student's t 97.5 % quantile by number of folds (k - 1 degrees of freedom): the folds' interval."""


def assign_folds(rows: Sequence[Mapping[str, str]], n_folds: int = 5, seed: int = 0) -> dict[str, int]:
    """Fold of each labelled patient: patient-grouped, stratified by source and label.

    A patient's images share one fold. Patients with no labelled image get none (their images
    only ever train the pretraining, never count).

    >>> rows = [{"patient_id": f"p{i}", "label": ("covid", "non_covid")[i % 2], "source": "s"} for i in range(8)]
    >>> folds = assign_folds(rows, n_folds=2)
    >>> sorted(folds.values()).count(0), len(folds)
    (4, 8)
    """
    if n_folds not in T_975:
        raise ValueError(f"n_folds must be one of {sorted(T_975)}, got {n_folds}")
    labelled = [r for r in rows if r["label"] in CLASS_NAMES]
    patients = [str(r["patient_id"]) for r in labelled]
    strata = [f"{r.get('source', '')}|{r['label']}" for r in labelled]
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    fold_of: dict[str, int] = {}
    for fold, (_, held_out) in enumerate(splitter.split(np.zeros(len(labelled)), strata, patients)):
        fold_of.update({patients[i]: fold for i in held_out})
    return fold_of


def fold_rows(
    rows: Sequence[Mapping[str, str]], fold_of: Mapping[str, int], fold: int, n_folds: int
) -> list[dict[str, str]]:
    """The manifest of one fold: its patients are ``test``, the next fold's ``val``, the rest ``train``.

    >>> fold_of = {"a": 0, "b": 1, "c": 2}
    >>> [r["split"] for r in fold_rows([{"patient_id": p} for p in "abcz"], fold_of, 0, 3)]
    ['test', 'val', 'train', 'train']
    """
    val_fold = (fold + 1) % n_folds
    out = []
    for row in rows:
        held = fold_of.get(str(row["patient_id"]))
        split = "test" if held == fold else "val" if held == val_fold else "train"
        out.append({**row, "split": split})
    return out


def knn_vote_scores(
    reference: np.ndarray, reference_labels: Sequence[int], queries: np.ndarray, k: int = 4
) -> np.ndarray:
    """Share of COVID-19 among each query's ``k`` nearest references by cosine (exact search).

    The node's similar-study vote on the same embeddings; the share is the vote's score (its
    ROC AUC), and more than half is the vote's decision.

    >>> ref = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    >>> knn_vote_scores(ref, [1, 1, 0], np.array([[1.0, 0.05], [0.1, 1.0]]), k=1).tolist()
    [1.0, 0.0]
    """
    def unit(v: np.ndarray) -> np.ndarray:
        v = np.asarray(v, dtype=np.float64)
        return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)

    labels = np.asarray(reference_labels, dtype=float)
    similarity = unit(queries) @ unit(reference).T
    nearest = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    return labels[nearest].mean(axis=1)


def fold_summary(values: Sequence[float | None], bounds: tuple[float, float] = (0.0, 1.0)) -> dict[str, Any]:
    """Mean, SD, range and the t-interval of one figure over the folds (``None`` folds left out).

    The interval is clipped to ``bounds`` (a rate or an AUC; ``(-1, 1)`` for a difference).

    >>> s = fold_summary([0.6, 0.7, 0.8])
    >>> round(s["mean"], 3), s["n_folds"], [round(x, 3) for x in s["ci95"]]
    (0.7, 3, [0.452, 0.948])
    >>> fold_summary([0.9, 1.0, 1.0])["ci95"][1]
    1.0
    """
    present = np.asarray([v for v in values if v is not None], dtype=float)
    if present.size == 0:
        return {"mean": None, "sd": None, "min": None, "max": None, "ci95": None, "n_folds": 0}
    sd = float(present.std(ddof=1)) if present.size > 1 else 0.0
    half = T_975.get(int(present.size), 2.0) * sd / np.sqrt(present.size) if present.size > 1 else None
    return {
        "mean": float(present.mean()),
        "sd": sd,
        "min": float(present.min()),
        "max": float(present.max()),
        "ci95": (
            [float(max(bounds[0], present.mean() - half)), float(min(bounds[1], present.mean() + half))]
            if half is not None else None
        ),
        "n_folds": int(present.size),
    }


def paired_effects(
    per_fold: Mapping[str, Sequence[float | None]], pairs: Sequence[tuple[str, str]]
) -> dict[str, dict[str, Any]]:
    """Fold-paired differences of one figure between arms (``a - b`` per fold), summarised over folds.

    >>> e = paired_effects({"a": [0.8, 0.7, 0.9], "b": [0.7, 0.7, 0.8]}, [("a", "b")])
    >>> round(e["a - b"]["mean"], 3), e["a - b"]["n_folds"]
    (0.067, 3)
    """
    effects = {}
    for a, b in pairs:
        diffs = [x - y if x is not None and y is not None else None for x, y in zip(per_fold[a], per_fold[b])]
        effects[f"{a} - {b}"] = fold_summary(diffs, bounds=(-1.0, 1.0))
    return effects

"""``run cross_validating``: the classifier recipe retrained on k patient-grouped folds of all labelled images.

Each fold's patients are the test set of a model trained by the bundle's own
``training_classifier`` on the other folds (the next fold chooses its checkpoint and its
threshold, as ``val`` does for the shipped model). Every arm (with the lung channel, without
it: the paper's ablation) is trained on the same folds, and the k-nearest-neighbour vote of the
first arm's embeddings is scored on them too, so each effect gets an interval. Resumable: a
fold's arm with its predictions on disk is not trained again, so once they are written its
training state (the resumable checkpoint and the full-precision best weights, about nine tenths
of its disk) is deleted unless asked to keep it; its compact ``classifier.pt`` stays.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.bundle import ConfigWorkflow

from monai_app.data.manifest import classification_datalist, read_manifest
from monai_app.evaluation.classification import classification_report, threshold_subset, youden_threshold
from monai_app.evaluation.folds import assign_folds, fold_rows, fold_summary, knn_vote_scores, paired_effects
from monai_app.networks.classifier import load_classifier_weights
from monai_app.retrieval.reference_set import classify_and_embed
from monai_app.utils import as_bool

logger = logging.getLogger(__name__)

PREDICTION_FIELDS = ("image_path", "patient_id", "source", "label", "split", "score")
KNN_ARM = "knn_vote"
KNN_MAJORITY = 0.5 + 1e-9
"""The node's vote: COVID-19 when more than half of the k neighbours are (a share above 0.5)."""
TRAINING_STATE = ("*checkpoint_epoch=*.pt", "classifier_best.pt")
"""What an arm's training leaves that only a resumed training reads (globs in its output folder)."""


def choose_threshold(val_rows: Sequence[Mapping[str, Any]]) -> float:
    """The bundle's threshold rule on a fold's val rows (:func:`threshold_subset`, Youden's J)."""
    chosen, _ = threshold_subset(val_rows)
    return youden_threshold([int(r["label"]) for r in chosen], [float(r["score"]) for r in chosen])


def fold_figures(test_rows: Sequence[Mapping[str, Any]], threshold: float, n_resamples: int) -> dict[str, Any]:
    """One fold's test figures at its threshold: overall, within source and per source."""
    report = classification_report([dict(r) for r in test_rows], threshold=threshold, n_resamples=n_resamples)
    within = report["within_source"] or {}
    per_source = report["per_source"]
    assert isinstance(within, dict) and isinstance(per_source, dict)
    return {
        "threshold": threshold,
        "n": report["n"],
        "roc_auc": report["roc_auc"],
        "within_source_roc_auc": within.get("roc_auc"),
        "within_source_sensitivity": within.get("sensitivity"),
        "within_source_specificity": within.get("specificity"),
        "sensitivity": report["sensitivity"],
        "specificity": report["specificity"],
        "per_source_roc_auc": {s: v["roc_auc"] for s, v in per_source.items()},
    }


def pooled_figures(rows: Sequence[Mapping[str, Any]], n_resamples: int) -> dict[str, Any]:
    """Out-of-fold predictions pooled over folds, with patient-bootstrap 95 % intervals.

    ROC AUC pools the scores; sensitivity and specificity pool each image's decision at its own
    fold's threshold.
    """
    scored = classification_report([dict(r) for r in rows], threshold=0.5, n_resamples=n_resamples)
    decided = classification_report(
        [{**r, "score": float(r["score"] >= r["threshold"])} for r in rows], threshold=0.5, n_resamples=n_resamples
    )

    def pick(section: Any, names: Sequence[str]) -> dict[str, Any]:
        return {} if not section else {n: section[n] for k in names for n in (k, f"{k}_ci95")}

    per_source = scored["per_source"]
    assert isinstance(per_source, dict)
    return {
        "all": {**pick(scored, ["roc_auc"]), **pick(decided, ["sensitivity", "specificity"]), "n": scored["n"]},
        "within_source": {
            **pick(scored["within_source"], ["roc_auc"]), **pick(decided["within_source"], ["sensitivity", "specificity"]),
        },
        "per_source": {s: {**pick(v, ["roc_auc"]), "n": v["n"]} for s, v in per_source.items()},
    }


def summarise(folds: Mapping[int, Mapping[str, Mapping[str, Any]]], rows: Mapping[str, Sequence[Mapping[str, Any]]],
              n_resamples: int) -> dict[str, Any]:
    """Per arm: each fold's figures, their summary over folds, and the pooled out-of-fold figures.

    Also the effects: the first arm's within-source ROC AUC minus each other arm's, paired by fold
    (the lung channel's ablation, the kNN vote against the classifier).
    """
    summary: dict[str, Any] = {}
    for arm in rows:
        per_fold = [folds[f][arm] for f in sorted(folds)]
        over_folds = {
            name: fold_summary([f[name] for f in per_fold])
            for name in ("roc_auc", "within_source_roc_auc", "within_source_sensitivity", "within_source_specificity",
                         "sensitivity", "specificity")
        }
        sources = sorted({s for f in per_fold for s in f["per_source_roc_auc"]})
        over_folds["per_source_roc_auc"] = {s: fold_summary([f["per_source_roc_auc"].get(s) for f in per_fold]) for s in sources}
        summary[arm] = {"folds": per_fold, "over_folds": over_folds, "pooled": pooled_figures(rows[arm], n_resamples)}
    arms = list(rows)
    auc = {arm: [folds[f][arm]["within_source_roc_auc"] for f in sorted(folds)] for arm in arms}
    summary["effects_within_source_roc_auc"] = paired_effects(auc, [(arms[0], other) for other in arms[1:]])
    return summary


def _interval(section: Mapping[str, Any] | None, name: str) -> str:
    if not section or section.get(name) is None:
        return "n/a"
    ci = section.get(f"{name}_ci95")
    return f"{section[name]:.3f}" + (f" ({ci[0]:.3f}–{ci[1]:.3f})" if ci else "")


def _over_folds(summary: Mapping[str, Any]) -> str:
    if summary["mean"] is None:
        return "n/a"
    ci = summary["ci95"]
    return f"{summary['mean']:.3f} ± {summary['sd']:.3f}" + (f" ({ci[0]:.3f}–{ci[1]:.3f})" if ci else "")


def summary_table(result: Mapping[str, Any]) -> str:
    """``cross_validation.json`` as Markdown: one row per arm, then the paired effects."""
    arms = [a for a in result if isinstance(result[a], Mapping) and "pooled" in result[a]]
    lines = [
        f"{result['n_folds']}-fold patient-grouped cross-validation, {result['n_labelled_images']} labelled images. "
        "Over folds: mean ± SD (t-interval); pooled: out-of-fold, patient bootstrap 95 % interval.",
        "",
        "| arm | within-source ROC AUC over folds | pooled within-source ROC AUC | pooled within-source sensitivity "
        "| pooled within-source specificity | pooled ROC AUC, all images |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for arm in arms:
        pooled = result[arm]["pooled"]
        lines.append(
            f"| {arm} | {_over_folds(result[arm]['over_folds']['within_source_roc_auc'])} "
            f"| {_interval(pooled['within_source'], 'roc_auc')} | {_interval(pooled['within_source'], 'sensitivity')} "
            f"| {_interval(pooled['within_source'], 'specificity')} | {_interval(pooled['all'], 'roc_auc')} |"
        )
    lines += ["", "| effect on within-source ROC AUC (paired by fold) | mean ± SD (t-interval) |", "| --- | --- |"]
    lines += [f"| {name} | {_over_folds(e)} |" for name, e in result["effects_within_source_roc_auc"].items()]
    return "\n".join(lines) + "\n"


class CrossValidation:
    """Retrain ``training_classifier`` on each fold and arm, predict, and write ``cross_validation.json``.

    Parameters
    ----------
    config_files, meta_file, properties_path
        The classifier's training configs (``common``, ``train_classifier``), the bundle's
        metadata and the classifier's workflow properties.
    manifest, dataset_dir
        All labelled images of this manifest are cross-validated, whatever their ``split``.
    output_dir
        ``folds.csv``, ``fold_<k>/manifest.csv``, ``fold_<k>/<arm>/`` (the training's output and
        ``predictions.csv``) and ``cross_validation.json``.
    arms
        Name -> overrides of each retrained arm; the first arm's embeddings also give the kNN vote.
    overrides
        Overrides of every fold's training (budget, sizes, device).
    keep_training_state
        Keep each arm's :data:`TRAINING_STATE` after its predictions are written (by default
        deleted: with 5 folds and 2 arms of a ResNet50 they are about 4 GB).
    """

    def __init__(
        self,
        config_files: Sequence[str],
        meta_file: str,
        properties_path: str,
        manifest: str,
        dataset_dir: str,
        output_dir: str,
        arms: Mapping[str, Mapping[str, Any]],
        overrides: Mapping[str, Any] | None = None,
        n_folds: int = 5,
        seed: int = 0,
        knn_k: int = 4,
        batch_size: int = 16,
        device: torch.device | str = "cpu",
        bootstrap_resamples: int = 2000,
        keep_training_state: bool = False,
    ) -> None:
        if not arms:
            raise ValueError("at least one arm")
        self.config_files = list(config_files)
        self.meta_file, self.properties_path = meta_file, properties_path
        self.manifest, self.dataset_dir = manifest, dataset_dir
        self.output_dir = Path(output_dir)
        self.arms = {name: dict(o) for name, o in arms.items()}
        self.overrides = dict(overrides or {})
        self.n_folds, self.seed, self.knn_k = n_folds, seed, knn_k
        self.batch_size, self.device, self.bootstrap_resamples = batch_size, device, bootstrap_resamples
        self.keep_training_state = as_bool(keep_training_state, "keep_training_state")

    def run(self) -> dict[str, Any]:
        rows = read_manifest(self.manifest)
        fold_of = assign_folds(rows, self.n_folds, self.seed)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        _write_csv(self.output_dir / "folds.csv", ["patient_id", "fold"],
                   [{"patient_id": p, "fold": f} for p, f in sorted(fold_of.items())])
        figures: dict[int, dict[str, dict[str, Any]]] = {}
        pooled: dict[str, list[dict[str, Any]]] = {arm: [] for arm in [*self.arms, KNN_ARM]}
        for fold in range(self.n_folds):
            manifest = self.output_dir / f"fold_{fold}" / "manifest.csv"
            manifest.parent.mkdir(exist_ok=True)
            _write_csv(manifest, list(rows[0]), fold_rows(rows, fold_of, fold, self.n_folds))
            figures[fold] = {}
            first_embeddings: np.ndarray | None = None
            first_rows: list[dict[str, Any]] = []
            for arm in self.arms:
                predicted, embeddings = self._fold_arm(fold, arm, manifest)
                if first_embeddings is None:
                    first_embeddings, first_rows = embeddings, predicted
                figures[fold][arm] = self._score(predicted, pooled[arm], fold)
            assert first_embeddings is not None
            figures[fold][KNN_ARM] = self._score(
                self._knn_rows(first_rows, first_embeddings), pooled[KNN_ARM], fold, threshold=KNN_MAJORITY)
            logger.info("fold %d of %d: %s", fold + 1, self.n_folds,
                        {a: f["within_source_roc_auc"] for a, f in figures[fold].items()})
        result = {
            "n_folds": self.n_folds, "seed": self.seed, "knn_k": self.knn_k, "arms": self.arms,
            "overrides": {k: str(v) for k, v in self.overrides.items()},
            "n_labelled_images": len(pooled[KNN_ARM]),
            **summarise(figures, pooled, self.bootstrap_resamples),
        }
        (self.output_dir / "cross_validation.json").write_text(json.dumps(result, indent=2) + "\n")
        (self.output_dir / "cross_validation.md").write_text(summary_table(result))
        return result

    def _fold_arm(self, fold: int, arm: str, manifest: Path) -> tuple[list[dict[str, Any]], np.ndarray]:
        """The arm's model of this fold (trained unless its predictions exist) and its predictions on every labelled image."""
        out = self.output_dir / f"fold_{fold}" / arm
        predictions, embeddings_file = out / "predictions.csv", out / "embeddings.npy"
        if predictions.is_file() and embeddings_file.is_file():
            logger.info("fold %d, %s: predictions found, not retrained", fold, arm)
            return _read_predictions(predictions), np.load(embeddings_file)
        workflow = ConfigWorkflow(
            config_file=self.config_files, meta_file=self.meta_file, properties_path=self.properties_path,
            logging_file=False, workflow_type="train", run_id="training_classifier",
            **{**self.overrides, **self.arms[arm], "manifest": str(manifest), "dataset_dir": self.dataset_dir,
               "cls_output_dir": str(out)},
        )
        workflow.initialize()
        workflow.run()
        workflow.finalize()
        network = load_classifier_weights(workflow.parser.get_parsed_content("cls_network"), out / "classifier.pt")
        split_of = {r["image_path"]: r["split"] for r in read_manifest(manifest)}
        datalist = classification_datalist(manifest, self.dataset_dir, ["train", "val", "test"])
        scores, embeddings = classify_and_embed(network, datalist, workflow.parser.get_parsed_content("cls_preprocessing"),
                                                self.batch_size, self.device)
        predicted = [
            {"image_path": d["image_path"], "patient_id": d["patient_id"], "source": d["source"], "label": int(str(d["label"])),
             "split": split_of[str(d["image_path"])], "score": float(s)}
            for d, s in zip(datalist, scores)
        ]
        np.save(embeddings_file, embeddings)
        _write_csv(predictions, list(PREDICTION_FIELDS), predicted)  # last: its presence means the arm is done
        if not self.keep_training_state:
            removed = remove_training_state(out)
            logger.info("fold %d, %s: training state removed (%.0f MB)", fold, arm, removed / 1e6)
        return predicted, embeddings

    def _knn_rows(self, rows: Sequence[Mapping[str, Any]], embeddings: np.ndarray) -> list[dict[str, Any]]:
        """The vote of each image's k nearest ``train`` images of its fold (the node's index holds ``train``)."""
        reference = [i for i, r in enumerate(rows) if r["split"] == "train"]
        scores = knn_vote_scores(embeddings[reference], [int(rows[i]["label"]) for i in reference], embeddings, self.knn_k)
        return [{**r, "score": float(s)} for r, s in zip(rows, scores)]

    def _score(
        self, rows: Sequence[Mapping[str, Any]], pooled: list[dict[str, Any]], fold: int, threshold: float | None = None
    ) -> dict[str, Any]:
        """One fold's test figures, at ``threshold`` or the one its val rows choose; the test rows join ``pooled``."""
        test = [r for r in rows if r["split"] == "test"]
        if threshold is None:
            threshold = choose_threshold([r for r in rows if r["split"] == "val"])
        pooled.extend({**r, "threshold": threshold, "fold": fold} for r in test)
        return fold_figures(test, threshold, n_resamples=0)


def remove_training_state(output_dir: Path) -> int:
    """Delete the :data:`TRAINING_STATE` files of one arm's training folder; returns the bytes freed."""
    freed = 0
    for pattern in TRAINING_STATE:
        for path in output_dir.glob(pattern):
            freed += path.stat().st_size
            path.unlink()
    return freed


def _write_csv(path: Path, fields: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> None:
    """Write whole or not at all (a resumed run trusts a predictions file that exists)."""
    partial = path.with_name(path.name + ".partial")
    with partial.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(fields), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    partial.replace(path)


def _read_predictions(path: Path) -> list[dict[str, Any]]:
    with path.open(newline="") as handle:
        return [{**r, "label": int(r["label"]), "score": float(r["score"])} for r in csv.DictReader(handle)]

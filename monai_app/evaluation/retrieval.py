"""Evaluation of the similar-study index: neighbour vote, recall against exact search, shortcut probe, figures."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import torch

from monai_app.data.image_io import load_chest_xray
from monai_app.errors import ChestXrayError
from monai_app.evaluation.plots import plot_embedding_tsne, plot_retrieval_example
from monai_app.labels import CLASS_NAMES
from monai_app.networks.classifier import CovidClassifier, load_classifier_weights
from monai_app.retrieval.index import (
    SimilarityIndex,
)
from monai_app.retrieval.reference_set import compute_embeddings, reference_instance_uids

logger = logging.getLogger(__name__)

TSNE_FIGURE = "embeddings_tsne.png"
"""t-SNE figure of the evaluation embeddings, written beside ``metrics.json``."""
RETRIEVAL_EXAMPLE_FIGURE = "retrieval_example_{}.png"
"""Retrieval example figures (numbered from 1), written beside ``metrics.json``."""



def retrieval_metrics(
    index: SimilarityIndex,
    queries: np.ndarray,
    labels: Sequence[int],
    k: int = 4,
    reference_embeddings: np.ndarray | None = None,
) -> dict[str, object]:
    """k-nearest-neighbour vote and Annoy quality of an index on labelled query embeddings.

    Parameters
    ----------
    index : SimilarityIndex
        The similar-study index.
    queries : numpy.ndarray
        ``(n, dimension)`` embeddings of the query images (e.g. the test split).
    labels : Sequence of int
        True class of each query (1 = covid).
    k : int
        Neighbours per query.
    reference_embeddings : numpy.ndarray, optional
        The indexed vectors for the exact search; read back from the index when ``None``.

    Returns
    -------
    dict
        ``vote_accuracy``, ``vote_sensitivity``, ``vote_specificity`` (a query is called
        covid when more than half of its labelled neighbours among the ``k`` are covid; ties,
        and no labelled neighbour, count as non_covid; ``unknown`` neighbours do not vote), ``recall_at_k`` (share of the exact k nearest neighbours that Annoy
        returns), ``query_ms_mean``, ``query_ms_p95``, ``k``, ``n``, ``n_reference``, ``metric``,
        and ``mean_distance_same_label`` / ``mean_distance_other_label`` over all returned
        neighbours (a useful embedding puts same-label studies closer).
    """
    from monai_app.retrieval.index import recall_at_k

    y = np.asarray(labels, dtype=int)
    vectors = np.asarray(queries, dtype=np.float32)
    if len(vectors) == 0 or len(vectors) != len(y):
        raise ValueError('Arguments "queries" and "labels" must be non-empty and of one length')
    reference = (
        np.stack([index.vector(i) for i in range(len(index.items))])
        if reference_embeddings is None else np.asarray(reference_embeddings, dtype=np.float32)
    )
    votes, times = [], []
    distances: dict[bool, list[float]] = {True: [], False: []}
    for vector, truth in zip(vectors, y):
        start = time.perf_counter()
        found = index.query(vector, k)
        times.append((time.perf_counter() - start) * 1000.0)
        voters = [n for n in found if n.item.label in CLASS_NAMES]  # priors with no known label do not vote
        votes.append(int(sum(n.item.label == CLASS_NAMES[1] for n in voters) * 2 > len(voters)))
        for n in voters:
            distances[n.item.label == CLASS_NAMES[truth]].append(n.distance)
    predicted = np.asarray(votes)
    positives, negatives = y == 1, y == 0
    return {
        "k": int(k),
        "n": int(len(y)),
        "n_reference": len(index.items),
        "metric": index.metric,
        "vote_accuracy": float(np.mean(predicted == y)),
        "vote_sensitivity": float(np.mean(predicted[positives] == 1)) if positives.any() else None,
        "vote_specificity": float(np.mean(predicted[negatives] == 0)) if negatives.any() else None,
        "recall_at_k": float(recall_at_k(index, reference, vectors, k)),
        "query_ms_mean": float(np.mean(times)),
        "query_ms_p95": float(np.percentile(times, 95)),
        "mean_distance_same_label": float(np.mean(distances[True])) if distances[True] else None,
        "mean_distance_other_label": float(np.mean(distances[False])) if distances[False] else None,
    }


def shortcut_probe(
    embeddings: np.ndarray,
    sources: Sequence[str],
    groups: Sequence[str],
    n_splits: int = 5,
    seed: int = 0,
) -> dict[str, object]:
    """How well a linear model predicts an image's *source* from its embedding.

    A high accuracy means the embedding encodes where an image comes from (hospital,
    scanner, data set), a shortcut the classifier can exploit when its labels are tied to
    its sources. The probe is a standardised multinomial logistic regression, evaluated by
    cross-validation grouped by patient (:class:`sklearn.model_selection.GroupKFold`: no
    patient in both the fitting and the predicted fold). A fold whose fitting part holds a
    single source predicts that source.

    Parameters
    ----------
    embeddings : numpy.ndarray
        ``(n, dimension)`` embeddings.
    sources : Sequence of str
        Source of each image (the target).
    groups : Sequence of str
        Patient of each image (the grouping; used only here, never written).
    n_splits : int
        Folds, at most the number of patients.
    seed : int
        Seed of the logistic regression's solver.

    Returns
    -------
    dict
        ``target`` (``"source"``), ``n``, ``n_classes``, ``n_groups``, ``n_splits``,
        ``accuracy`` and ``balanced_accuracy`` (cross-validated; ``None`` when the probe
        cannot run), ``majority_baseline_accuracy`` (share of the most frequent source),
        ``majority_baseline_balanced_accuracy`` (``1 / n_classes``) and ``note`` (why the
        probe did not run, else ``None``).

    Raises
    ------
    ValueError
        If the inputs are empty or of different lengths.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.asarray(embeddings, dtype=np.float64)
    y = np.asarray([str(v) for v in sources], dtype=object)
    g = np.asarray([str(v) for v in groups], dtype=object)
    if x.ndim != 2 or len(x) == 0 or not (len(x) == len(y) == len(g)):
        raise ValueError('Arguments "embeddings", "sources" and "groups" must be non-empty and of one length')
    classes, counts = np.unique(y, return_counts=True)
    n_groups = int(np.unique(g).size)
    section: dict[str, object] = {
        "target": "source",
        "n": int(len(y)),
        "n_classes": int(classes.size),
        "n_groups": n_groups,
        "n_splits": None,
        "accuracy": None,
        "balanced_accuracy": None,
        "majority_baseline_accuracy": float(counts.max() / len(y)),
        "majority_baseline_balanced_accuracy": float(1.0 / classes.size),
        "note": None,
    }
    if classes.size < 2:
        section["note"] = "one source only: there is no source to predict"
    elif n_groups < 2 or n_splits < 2:
        section["note"] = f"{n_groups} patient(s): grouped cross-validation needs at least 2"
    if section["note"]:
        logger.warning("shortcut probe skipped: %s", section["note"])
        return section
    folds = min(int(n_splits), n_groups)
    predicted = np.empty(len(y), dtype=object)
    for fit, held_out in GroupKFold(n_splits=folds).split(x, y, g):
        if np.unique(y[fit]).size < 2:
            predicted[held_out] = y[fit][0]
            continue
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
        predicted[held_out] = model.fit(x[fit], y[fit]).predict(x[held_out])
    section.update(
        n_splits=folds,
        accuracy=float(np.mean(predicted == y)),
        balanced_accuracy=float(balanced_accuracy_score(y.astype(str), predicted.astype(str))),
    )
    return section


def retrieval_example_queries(labels: Sequence[int], n: int = 2) -> list[int]:
    """Positions of the queries shown as retrieval examples: first covid, first non_covid, then the next ones.

    >>> retrieval_example_queries([0, 0, 1, 1])
    [2, 0]
    >>> retrieval_example_queries([1, 1, 1])
    [0, 1]
    """
    y = [int(v) for v in labels]
    chosen = [y.index(c) for c in (1, 0) if c in y][:n]
    return chosen + [i for i in range(len(y)) if i not in chosen][: n - len(chosen)]


def reference_image_paths(datalist: Sequence[Mapping[str, object]]) -> dict[str, str]:
    """SOP Instance UID -> image file of each entry of a reference datalist.

    The index's items table holds UIDs, not file paths; this maps the items of an index built
    from ``datalist`` (:func:`~monai_app.retrieval.reference_set.build_reference_index`) back to their images. Entries whose UIDs
    cannot be read are left out.
    """
    paths = {}
    for entry in datalist:
        try:
            paths[reference_instance_uids(entry)[2]] = str(entry["image"])
        except (OSError, ValueError, pydicom.errors.InvalidDicomError):
            continue
    return paths


def _load_image(path: str | None) -> np.ndarray | None:
    """The image as :func:`load_chest_xray` reads it, or ``None`` (no path, unreadable file)."""
    if not path:
        return None
    try:
        return load_chest_xray(path)
    except (ChestXrayError, OSError):
        logger.warning("retrieval example: an image could not be read; its panel is left empty")
        return None


def write_retrieval_examples(
    index: SimilarityIndex,
    queries: np.ndarray,
    datalist: Sequence[Mapping[str, object]],
    output_dir: str | Path,
    k: int = 4,
    reference_datalist: Sequence[Mapping[str, object]] | None = None,
    n_examples: int = 2,
) -> list[Path]:
    """Write ``retrieval_example_<i>.png``: query images with their ``k`` nearest reference images.

    Parameters
    ----------
    index : SimilarityIndex
        The similar-study index.
    queries : numpy.ndarray
        Embeddings of ``datalist``'s images, in its order.
    datalist : Sequence of Mapping
        The queries' entries (``image`` path, ``label``); the examples are chosen by
        :func:`retrieval_example_queries`.
    output_dir : str or pathlib.Path
        Folder of the figures.
    k : int
        Neighbours shown.
    reference_datalist : Sequence of Mapping, optional
        The datalist the index was built from, to find the neighbours' image files
        (:func:`reference_image_paths`); without it, or for items it does not hold, the
        neighbour's panel is empty (label and distance still shown).
    n_examples : int
        Figures to write.

    Returns
    -------
    list of pathlib.Path
        The files written.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = reference_image_paths(reference_datalist) if reference_datalist else {}
    labels = [int(d["label"]) for d in datalist]  # type: ignore[call-overload]
    written, missing = [], 0
    for number, position in enumerate(retrieval_example_queries(labels, n_examples), start=1):
        found = index.query(queries[position], k)
        missing += sum(n.item.sop_instance_uid not in paths for n in found)
        target = output_dir / RETRIEVAL_EXAMPLE_FIGURE.format(number)
        plot_retrieval_example(
            _load_image(str(datalist[position]["image"])),
            CLASS_NAMES[labels[position]],
            [_load_image(paths.get(n.item.sop_instance_uid)) for n in found],
            [n.item.label for n in found],
            [n.distance for n in found],
            target,
            title=f"Similar-study retrieval example {number} ({index.metric} distance)",
        )
        written.append(target)
    if missing:
        logger.info("retrieval examples: %d neighbour image(s) not in the reference datalist, shown empty", missing)
    return written


def evaluate_retrieval(
    network: CovidClassifier,
    model_file: str | Path,
    datalist: Sequence[Mapping[str, object]],
    transform: Callable[[dict], dict],
    index_dir: str | Path,
    metrics_file: str | Path,
    k: int = 4,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    reference_datalist: Sequence[Mapping[str, object]] | None = None,
    seed: int = 0,
) -> dict[str, object]:
    """Embed the evaluation images, query the index, probe for a source shortcut; write report and figures.

    Parameters
    ----------
    network, model_file, transform, batch_size, device
        As for :func:`~monai_app.retrieval.reference_set.build_reference_index` (the same weights as the index).
    datalist : Sequence of Mapping
        Labelled query images (the evaluation split), with ``source`` and ``patient_id``.
    index_dir : str or pathlib.Path
        Folder written by :func:`~monai_app.retrieval.reference_set.build_reference_index`.
    metrics_file : str or pathlib.Path
        ``metrics.json``; its other sections are kept. The figures go beside it:
        ``embeddings_tsne.png`` (the evaluation embeddings, colour = label, marker = source)
        and ``retrieval_example_1.png``, ``retrieval_example_2.png``
        (:func:`write_retrieval_examples`).
    k : int
        Neighbours per query.
    reference_datalist : Sequence of Mapping, optional
        The datalist the index was built from, to show the neighbours' images.
    seed : int
        Seed of the t-SNE and of the probe.

    Returns
    -------
    dict
        The ``"retrieval"`` section written: :func:`retrieval_metrics`, plus
        ``shortcut_probe`` (:func:`shortcut_probe` of the evaluation embeddings).
    """
    from monai_app.evaluation.segmentation import update_metrics_file

    index = SimilarityIndex.load(Path(index_dir))
    load_classifier_weights(network, model_file)
    queries = compute_embeddings(network, datalist, transform, batch_size, device)
    labels = [int(d["label"]) for d in datalist]  # type: ignore[call-overload]
    sources = [str(d.get("source", "") or "unknown") for d in datalist]
    section = retrieval_metrics(index, queries, labels, k)
    section["shortcut_probe"] = shortcut_probe(queries, sources, [str(d["patient_id"]) for d in datalist], seed=seed)
    update_metrics_file(metrics_file, "retrieval", section)
    output_dir = Path(metrics_file).parent
    plot_embedding_tsne(queries, [CLASS_NAMES[y] for y in labels], sources, output_dir / TSNE_FIGURE, seed=seed)
    write_retrieval_examples(index, queries, datalist, output_dir, k, reference_datalist)
    logger.info("retrieval: %s", section)
    return section


@dataclass
class RetrievalEvaluation:
    """The bundle's ``evaluating_retrieval`` stage as a component: its arguments are config keys.

    Fields are those of :func:`evaluate_retrieval`.
    """

    network: CovidClassifier
    model_file: str | Path
    datalist: Sequence[Mapping[str, object]]
    transform: Callable[[dict], dict]
    index_dir: str | Path
    metrics_file: str | Path
    k: int = 4
    batch_size: int = 16
    device: str | torch.device = "cpu"
    reference_datalist: Sequence[Mapping[str, object]] | None = None
    seed: int = 0

    def run(self) -> dict[str, object]:
        """Write the ``"retrieval"`` section and its figures (see :func:`evaluate_retrieval`)."""
        return evaluate_retrieval(
            self.network, self.model_file, self.datalist, self.transform, self.index_dir, self.metrics_file,
            int(self.k), int(self.batch_size), self.device, self.reference_datalist, int(self.seed),
        )

"""Build the similar-study index: classifier embeddings of a labelled reference set.

The reference set is a classification datalist (:func:`monai_app.data.classification_datalist`,
the training split of the manifest by default; a hospital lists its own labelled priors in a
manifest of the same format). Each image goes through the classifier's deterministic
preprocessing, :meth:`monai_app.classifier.CovidClassifier.embed` gives its embedding, and
:class:`monai_app.similarity.SimilarityIndex` indexes the embeddings beside a table of
:class:`monai_app.similarity.ReferenceItem` (DICOM UIDs, label, source, pseudonymous
patient key).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pydicom
import torch
from monai.data import DataLoader, Dataset

from monai_app.classifier import CLASS_NAMES, CovidClassifier
from monai_app.image_io import is_dicom_file
from monai_app.similarity import (
    SECONDARY_CAPTURE,
    ReferenceItem,
    SimilarityIndex,
    pseudonymous_patient_key,
    reference_uids,
)

logger = logging.getLogger(__name__)


def reference_item(entry: Mapping[str, object], salt: str) -> ReferenceItem:
    """The :class:`ReferenceItem` of one datalist entry.

    Parameters
    ----------
    entry : Mapping
        A classification datalist item: ``image`` (path), ``image_path`` (as in the
        manifest), ``label`` (0/1), ``source`` and ``patient_id``.
    salt : str
        Secret of the pseudonymous patient key (:func:`pseudonymous_patient_key`).

    Returns
    -------
    ReferenceItem
        For a DICOM image, its own Study/Series/SOP Instance and SOP Class UIDs (read from
        the header); for PNG/JPEG, deterministic UIDs derived from ``image_path``
        (:func:`reference_uids`) and the Secondary Capture SOP class.

    Raises
    ------
    ValueError
        If a DICOM image lacks one of the UIDs, or the label is not 0 or 1.
    """
    path = Path(str(entry["image"]))
    label = int(entry["label"])  # type: ignore[call-overload]
    if label not in (0, 1):
        raise ValueError(f'Argument "entry" has label {label}, expected 0 or 1')
    if is_dicom_file(path):
        header = pydicom.dcmread(path, stop_before_pixels=True, force=True)  # bare CR files too
        keywords = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
        missing = [k for k in keywords if not getattr(header, k, "")]
        if missing:
            raise ValueError(f"DICOM reference {path.name!r} lacks {missing}")
        study, series, instance, sop_class = (str(getattr(header, k)) for k in keywords)
    else:
        study, series, instance = (str(u) for u in reference_uids(str(entry.get("image_path") or path.name)))
        sop_class = str(SECONDARY_CAPTURE)
    return ReferenceItem(
        study_instance_uid=study,
        series_instance_uid=series,
        sop_instance_uid=instance,
        sop_class_uid=sop_class,
        label=CLASS_NAMES[label],
        source=str(entry.get("source", "") or "unknown"),
        patient_key=pseudonymous_patient_key(str(entry["patient_id"]), salt),
    )


def load_classifier_weights(network: CovidClassifier, model_file: str | Path) -> CovidClassifier:
    """Load fp16 or fp32 weights (state dict, or a checkpoint holding it under ``"model"``).

    Returns
    -------
    CovidClassifier
        ``network`` itself, in eval mode.
    """
    state = torch.load(model_file, map_location="cpu", weights_only=True)
    if "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    network.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    return network.eval()


def compute_embeddings(
    network: CovidClassifier,
    datalist: Sequence[Mapping[str, object]],
    transform: Callable[[dict], dict],
    batch_size: int = 16,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Embeddings of the datalist's images, in datalist order.

    Parameters
    ----------
    network : CovidClassifier
        The trained classifier (put in eval mode here).
    datalist : Sequence of Mapping
        Items with an ``image`` path (and whatever ``transform`` needs).
    transform : callable
        The classifier's deterministic preprocessing (ending in the 3-channel input).
    batch_size : int
        Images per forward pass.
    device : str or torch.device
        Where the network runs.

    Returns
    -------
    numpy.ndarray
        ``(len(datalist), embedding_dim)`` float32.
    """
    network.eval().to(device)
    loader = DataLoader(Dataset([dict(d) for d in datalist], transform), batch_size=batch_size, shuffle=False)
    chunks = []
    with torch.no_grad():
        for batch in loader:
            chunks.append(network.embed(torch.as_tensor(batch["image"]).to(device)).cpu().numpy())
    return np.concatenate(chunks).astype(np.float32)


def build_reference_index(
    network: CovidClassifier,
    model_file: str | Path,
    datalist: Sequence[Mapping[str, object]],
    transform: Callable[[dict], dict],
    output_dir: str | Path,
    salt: str,
    metric: str = "angular",
    n_trees: int = 20,
    seed: int = 0,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
) -> SimilarityIndex:
    """Embed a labelled reference set, index it and save the index with its items table.

    Parameters
    ----------
    network : CovidClassifier
        Classifier of the right architecture; ``model_file``'s weights are loaded into it.
    model_file : str or pathlib.Path
        Trained classifier weights.
    datalist : Sequence of Mapping
        The reference set (:func:`monai_app.data.classification_datalist`).
    transform : callable
        The classifier's deterministic preprocessing.
    output_dir : str or pathlib.Path
        Folder receiving ``index.ann``, ``items.csv`` and ``index.json``.
    salt : str
        Secret of the pseudonymous patient keys; must not be empty.
    metric, n_trees, seed
        See :meth:`SimilarityIndex.build` (the seed makes the index reproducible).
    batch_size : int
        Images per forward pass.
    device : str or torch.device
        Where the network runs.

    Returns
    -------
    SimilarityIndex
        The saved index.

    Raises
    ------
    ValueError
        If ``salt`` is empty or ``datalist`` is empty.
    """
    if not salt:
        raise ValueError('Argument "salt" must not be empty: set cls_index_salt (or CXR_INDEX_SALT)')
    if not datalist:
        raise ValueError('Argument "datalist" must not be empty')
    items = [reference_item(entry, salt) for entry in datalist]
    load_classifier_weights(network, model_file)
    embeddings = compute_embeddings(network, datalist, transform, batch_size, device)
    index = SimilarityIndex.build(embeddings, items, metric=metric, n_trees=n_trees, seed=seed)
    index.save(Path(output_dir))
    logger.info("indexed %d reference images (%s, %d trees) in %s", len(items), metric, n_trees, output_dir)
    return index


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
        covid when more than half of its ``k`` neighbours are covid; ties count as
        non_covid), ``recall_at_k`` (share of the exact k nearest neighbours that Annoy
        returns), ``query_ms_mean``, ``query_ms_p95``, ``k``, ``n``, ``n_reference``, ``metric``.
    """
    from monai_app.similarity import recall_at_k

    y = np.asarray(labels, dtype=int)
    vectors = np.asarray(queries, dtype=np.float32)
    if len(vectors) == 0 or len(vectors) != len(y):
        raise ValueError('Arguments "queries" and "labels" must be non-empty and of one length')
    reference = (
        np.stack([index.vector(i) for i in range(len(index.items))])
        if reference_embeddings is None else np.asarray(reference_embeddings, dtype=np.float32)
    )
    votes, times = [], []
    for vector in vectors:
        start = time.perf_counter()
        found = index.query(vector, k)
        times.append((time.perf_counter() - start) * 1000.0)
        votes.append(int(sum(n.item.label == CLASS_NAMES[1] for n in found) * 2 > len(found)))
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
    }


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
) -> dict[str, object]:
    """Embed the evaluation images, query the index and write the ``"retrieval"`` section.

    Parameters
    ----------
    network, model_file, transform, batch_size, device
        As for :func:`build_reference_index` (the same weights as the index).
    datalist : Sequence of Mapping
        Labelled query images (the evaluation split).
    index_dir : str or pathlib.Path
        Folder written by :func:`build_reference_index`.
    metrics_file : str or pathlib.Path
        ``metrics.json``; its other sections are kept.
    k : int
        Neighbours per query.

    Returns
    -------
    dict
        The section written (see :func:`retrieval_metrics`).
    """
    from monai_app.evaluation import update_metrics_file

    index = SimilarityIndex.load(Path(index_dir))
    load_classifier_weights(network, model_file)
    queries = compute_embeddings(network, datalist, transform, batch_size, device)
    section = retrieval_metrics(index, queries, [int(d["label"]) for d in datalist], k)  # type: ignore[call-overload]
    update_metrics_file(metrics_file, "retrieval", section)
    logger.info("retrieval: %s", section)
    return section

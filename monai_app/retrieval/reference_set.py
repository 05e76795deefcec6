"""Build the similar-study index: classifier embeddings of a labelled reference set.

The reference set is a classification datalist (:func:`monai_app.data.manifest.classification_datalist`,
the training split of the manifest by default; a hospital lists its own labelled priors in a
manifest of the same format). Each image goes through the classifier's deterministic
preprocessing, :meth:`monai_app.networks.classifier.CovidClassifier.embed` gives its embedding, and
:class:`monai_app.retrieval.index.SimilarityIndex` indexes the embeddings beside a table of
:class:`monai_app.retrieval.index.ReferenceItem` (DICOM UIDs, label, source, pseudonymous
patient key).

Its evaluation is :mod:`monai_app.evaluation.retrieval`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import torch
from monai.data import DataLoader, Dataset

from monai_app.data.image_io import is_dicom_file
from monai_app.labels import CLASS_NAMES, POSITIVE_CLASS
from monai_app.networks.classifier import CovidClassifier, load_classifier_weights
from monai_app.retrieval.index import (
    SECONDARY_CAPTURE,
    ReferenceItem,
    SimilarityIndex,
    pseudonymous_patient_key,
    reference_uids,
)

logger = logging.getLogger(__name__)


def reference_instance_uids(entry: Mapping[str, object]) -> tuple[str, str, str, str]:
    """(Study, Series, SOP Instance, SOP Class) UIDs of one reference datalist entry.

    A DICOM image's own UIDs (read from its header); for PNG/JPEG, deterministic UIDs derived
    from ``image_path`` (:func:`reference_uids`) and the Secondary Capture SOP class.

    Raises
    ------
    ValueError
        If a DICOM image lacks one of the UIDs.
    """
    path = Path(str(entry["image"]))
    if is_dicom_file(path):
        header = pydicom.dcmread(path, stop_before_pixels=True, force=True)  # bare CR files too
        keywords = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
        missing = [k for k in keywords if not getattr(header, k, "")]
        if missing:
            raise ValueError(f"DICOM reference {path.name!r} lacks {missing}")
        study, series, instance, sop_class = (str(getattr(header, k)) for k in keywords)
        return study, series, instance, sop_class
    study, series, instance = (str(u) for u in reference_uids(str(entry.get("image_path") or path.name)))
    return study, series, instance, str(SECONDARY_CAPTURE)


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
    label = int(entry["label"])  # type: ignore[call-overload]
    if label not in (0, 1):
        raise ValueError(f'Argument "entry" has label {label}, expected 0 or 1')
    study, series, instance, sop_class = reference_instance_uids(entry)
    return ReferenceItem(
        study_instance_uid=study,
        series_instance_uid=series,
        sop_instance_uid=instance,
        sop_class_uid=sop_class,
        label=CLASS_NAMES[label],
        source=str(entry.get("source", "") or "unknown"),
        patient_key=pseudonymous_patient_key(str(entry["patient_id"]), salt),
    )


def classify_and_embed(
    network: CovidClassifier,
    datalist: Sequence[Mapping[str, object]],
    transform: Callable[[dict], dict],
    batch_size: int = 16,
    device: str | torch.device = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """COVID-19 probability and embedding of each of the datalist's images, in order (one pass).

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
    tuple of numpy.ndarray
        ``(len(datalist),)`` probabilities (float64) and ``(len(datalist), embedding_dim)``
        embeddings (float32).
    """
    network.eval().to(device)
    loader = DataLoader(Dataset([dict(d) for d in datalist], transform), batch_size=batch_size, shuffle=False)
    scores, embeddings = [], []
    with torch.no_grad():
        for batch in loader:
            embedding = network.embed(torch.as_tensor(batch["image"]).to(device))
            scores.append(torch.softmax(network.head(embedding), dim=1)[:, POSITIVE_CLASS].cpu().numpy())
            embeddings.append(embedding.cpu().numpy())
    return np.concatenate(scores).astype(float), np.concatenate(embeddings).astype(np.float32)


def compute_embeddings(
    network: CovidClassifier,
    datalist: Sequence[Mapping[str, object]],
    transform: Callable[[dict], dict],
    batch_size: int = 16,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Embeddings of the datalist's images, in datalist order (see :func:`classify_and_embed`).

    Returns
    -------
    numpy.ndarray
        ``(len(datalist), embedding_dim)`` float32.
    """
    return classify_and_embed(network, datalist, transform, batch_size, device)[1]


def require_salt(salt: str) -> None:
    """Stop before hours of training when the index cannot be built at the end (no salt).

    Raises
    ------
    ValueError
        If ``salt`` is empty.
    """
    if not salt:
        raise ValueError('the similar-study index needs a secret salt: set CXR_INDEX_SALT (or --cls_index_salt)')


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
        The reference set (:func:`monai_app.data.manifest.classification_datalist`).
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
    require_salt(salt)
    if not datalist:
        raise ValueError('Argument "datalist" must not be empty')
    items = [reference_item(entry, salt) for entry in datalist]
    load_classifier_weights(network, model_file)
    embeddings = compute_embeddings(network, datalist, transform, batch_size, device)
    index = SimilarityIndex.build(embeddings, items, metric=metric, n_trees=n_trees, seed=seed)
    index.save(Path(output_dir))
    logger.info("indexed %d reference images (%s, %d trees) in %s", len(items), metric, n_trees, output_dir)
    return index


@dataclass
class ReferenceIndexBuild:
    """The bundle's ``build_index`` stage as a component: its arguments are config keys.

    Fields are those of :func:`build_reference_index`, except ``salt``: ``None`` reads
    ``$CXR_INDEX_SALT`` when the stage runs (:func:`monai_app.workflows.index_salt`).
    """

    network: CovidClassifier
    model_file: str | Path
    datalist: Sequence[Mapping[str, object]]
    transform: Callable[[dict], dict]
    output_dir: str | Path
    salt: str | None = None
    metric: str = "angular"
    n_trees: int = 20
    seed: int = 0
    batch_size: int = 16
    device: str | torch.device = "cpu"

    def run(self) -> SimilarityIndex:
        """Embed, index and save the reference set (see :func:`build_reference_index`)."""
        from monai_app.workflows import index_salt  # workflows imports this module

        return build_reference_index(
            self.network, self.model_file, self.datalist, self.transform, self.output_dir,
            index_salt(self.salt), self.metric, int(self.n_trees), int(self.seed), int(self.batch_size), self.device,
        )

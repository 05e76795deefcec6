"""The similar-study index of a hospital's prior studies: retrieved images embedded exactly as the node embeds them.

Each retrieved file goes through the node's own path: the header rule
(:func:`~dicom_node.analyse.applicability.check_header`), the bundle's preprocessing
(:meth:`monai_app.inference.BundleAnalyser.prepare`), the lung-field and frontal-chest checks
(:func:`~dicom_node.analyse.applicability.check_image`) and the classifier's embedding
(:meth:`~monai_app.inference.BundleAnalyser.predict`), in batches, so memory holds one batch of
images at a time. An image the node would not analyse is not indexed.

Every result is kept per SOP Instance UID in an :class:`EmbeddingCache` (one small JSON file
each, written atomically), so a build stopped half-way does not embed anything twice, and the
retrieved file can go once its embedding is safe. Annoy indexes are immutable: the index is
rebuilt from its items and their vectors, which ``embeddings.npy`` beside it keeps (an index
without that file gives them back from Annoy itself), so an index can be extended with newer
studies or relabelled without embedding again.

The items table (``items.csv``) holds, per image: Study, Series and SOP Instance UIDs (to
fetch and show the prior), SOP Class UID, label (``unknown`` when the site's labels do not
know it), source (the site), a salted pseudonymous patient key (to keep one patient's studies
apart in evaluation, without the patient ID) and the study date (a radiologist reads how old
the prior is). No patient name, ID, birth date or accession number.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from dicom_node.analyse.applicability import check_header, check_image
from dicom_node.log_safety import describe_exception
from dicom_node.pacs.labels import StudyLabels
from dicom_node.pacs.query import FoundInstance
from dicom_node.pacs.retrieve import InstanceFolder
from dicom_node.spool.durable import remove_temp_files, write_atomically
from monai_app.errors import UndecodableImageError, find_cause
from monai_app.retrieval.index import (
    INDEX_FILE,
    ITEMS_FILE,
    META_FILE,
    ReferenceItem,
    SimilarityIndex,
    pseudonymous_patient_key,
)

logger = logging.getLogger(__name__)

EMBEDDINGS_FILE = "embeddings.npy"
"""The indexed vectors, in ``items.csv`` order (float32), kept so the index can be rebuilt."""
BUILD_FILE = "build.json"
"""How the index was built: bundle, weights SHA-256, site and counts (no patient data)."""


class EmbeddingCache:
    """The node's verdict on each retrieved instance: its embedding, or why it is not indexed.

    One file ``<SOP Instance UID>.json`` each: ``{"sop_class_uid", "embedding"}`` or ``{"reason"}``.
    """

    def __init__(self, directory: Path, *, fsync: bool = True) -> None:
        self.directory = directory
        self.fsync = fsync
        directory.mkdir(parents=True, exist_ok=True)
        remove_temp_files(directory)

    def _path(self, sop_instance_uid: str) -> Path:
        return self.directory / f"{''.join(c if c in '0123456789.' else '_' for c in sop_instance_uid)}.json"

    def has(self, sop_instance_uid: str) -> bool:
        return self._path(sop_instance_uid).is_file()

    def put_embedding(self, sop_instance_uid: str, sop_class_uid: str, embedding: np.ndarray) -> None:
        record = {"sop_class_uid": sop_class_uid, "embedding": [float(v) for v in np.asarray(embedding, np.float32)]}
        write_atomically(self._path(sop_instance_uid), [json.dumps(record).encode()], fsync=self.fsync)

    def put_reason(self, sop_instance_uid: str, reason: str) -> None:
        write_atomically(self._path(sop_instance_uid), [json.dumps({"reason": reason}).encode()], fsync=self.fsync)

    def get(self, sop_instance_uid: str) -> dict[str, Any] | None:
        """The record, or ``None`` when the instance was not embedded yet."""
        path = self._path(sop_instance_uid)
        return json.loads(path.read_text()) if path.is_file() else None


@dataclass
class EmbedCounts:
    """Instances embedded now, found in the cache, and not indexed (by reason category)."""

    embedded: int = 0
    cached: int = 0
    missing: int = 0  # not retrieved (the PACS did not deliver them)
    not_indexed: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        category = reason.split(":", 1)[0]
        self.not_indexed[category] = self.not_indexed.get(category, 0) + 1


def embed_instances(
    analyser: Any,
    folder: InstanceFolder,
    instances: Sequence[FoundInstance],
    cache: EmbeddingCache,
    *,
    batch_size: int = 4,
    delete_after: bool = False,
    on_instance: Callable[[int], None] | None = None,
) -> EmbedCounts:
    """Embed the retrieved instances the cache does not know yet, as the node would analyse them.

    Parameters
    ----------
    analyser : monai_app.inference.BundleAnalyser
        The bundle, loaded as the node loads it (its index is not needed).
    folder : InstanceFolder
        Where the retrieved files are.
    instances : Sequence of FoundInstance
        What the query found.
    cache : EmbeddingCache
        Results so far; new ones are added before a file is deleted.
    batch_size : int
        Images per forward pass (memory holds one batch of prepared images).
    delete_after : bool
        Delete each retrieved file once its result is in the cache.
    on_instance : callable, optional
        Progress callback, called with the number of instances done.
    """
    counts = EmbedCounts()
    batch: list[tuple[FoundInstance, str, Any]] = []

    def flush() -> None:
        if not batch:
            return
        predictions = analyser.predict([image for _, _, image in batch])
        for (instance, sop_class_uid, _), prediction in zip(batch, predictions):
            cache.put_embedding(instance.sop_instance_uid, sop_class_uid, prediction.embedding)
            counts.embedded += 1
        finish([instance for instance, _, _ in batch])
        batch.clear()

    def finish(done: list[FoundInstance]) -> None:
        if delete_after:
            for instance in done:
                folder.path(instance.sop_instance_uid).unlink(missing_ok=True)
        if on_instance is not None:
            on_instance(len(done))

    def not_indexed(instance: FoundInstance, reason: str) -> None:
        cache.put_reason(instance.sop_instance_uid, reason)
        counts.skip(reason)
        finish([instance])

    for instance in instances:
        if cache.has(instance.sop_instance_uid):
            counts.cached += 1
            finish([instance])  # a run stopped between the cache write and the delete left the file
            continue
        path = folder.path(instance.sop_instance_uid)
        if not path.is_file():
            counts.missing += 1
            continue
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
            verdict = check_header(header)
            if not verdict.applicable:
                not_indexed(instance, verdict.reason)
                continue
            image = analyser.prepare(path)
        except Exception as exc:
            cause = find_cause(exc, (UndecodableImageError, pydicom.errors.InvalidDicomError))
            if cause is None:
                raise
            not_indexed(instance, f"undecodable: {describe_exception(cause)}")
            continue
        verdict = check_image(image)
        if not verdict.applicable:
            not_indexed(instance, verdict.reason)
            continue
        batch.append((instance, str(header.SOPClassUID), image))
        if len(batch) >= batch_size:
            flush()
    flush()
    return counts


def patient_key(instance: FoundInstance, salt: str) -> str:
    """The salted pseudonymous key of the instance's patient (its study's when the PACS gives no Patient ID)."""
    return study_patient_key(instance.patient_id, instance.study_instance_uid, salt)


def study_patient_key(patient_id: str, study_instance_uid: str, salt: str) -> str:
    """The salted pseudonymous key of a study's patient; the study's own when there is no Patient ID."""
    return pseudonymous_patient_key(patient_id or f"study:{study_instance_uid}", salt)


def prior_items(
    instances: Sequence[FoundInstance], cache: EmbeddingCache, labels: StudyLabels, salt: str, site: str
) -> tuple[list[ReferenceItem], np.ndarray]:
    """The index items and their embeddings, in ``instances`` order, of every instance the cache embedded."""
    items, vectors = [], []
    for instance in instances:
        record = cache.get(instance.sop_instance_uid)
        if record is None or "embedding" not in record:
            continue
        items.append(
            ReferenceItem(
                study_instance_uid=instance.study_instance_uid, series_instance_uid=instance.series_instance_uid,
                sop_instance_uid=instance.sop_instance_uid, sop_class_uid=record["sop_class_uid"],
                label=labels.label(instance.study_instance_uid, instance.accession_number), source=site,
                patient_key=patient_key(instance, salt), study_date=instance.study_date,
            )
        )
        vectors.append(np.asarray(record["embedding"], np.float32))
    return items, (np.stack(vectors) if vectors else np.zeros((0, 0), np.float32))


def existing_index(index_dir: Path) -> tuple[list[ReferenceItem], np.ndarray, dict[str, Any]]:
    """Items, vectors and build record of the index in ``index_dir`` (vectors from Annoy when ``embeddings.npy`` is absent)."""
    index = SimilarityIndex.load(index_dir)
    vectors_file = index_dir / EMBEDDINGS_FILE
    if vectors_file.is_file():
        vectors = np.load(vectors_file)
    else:
        vectors = np.stack([index.vector(i) for i in range(len(index.items))])
    if len(vectors) != len(index.items):
        raise ValueError(f"{vectors_file} has {len(vectors)} vectors for {len(index.items)} items")
    build_file = index_dir / BUILD_FILE
    build = json.loads(build_file.read_text()) if build_file.is_file() else {}
    return list(index.items), vectors.astype(np.float32), build


def merge_items(
    old: Sequence[ReferenceItem], old_vectors: np.ndarray, new: Sequence[ReferenceItem], new_vectors: np.ndarray
) -> tuple[list[ReferenceItem], np.ndarray]:
    """``old`` extended by ``new``: an image already indexed (same SOP Instance UID) is updated in place.

    >>> a = ReferenceItem("1", "1.1", "1.1.1", "1.2", "unknown", "site", "k")
    >>> b = ReferenceItem("2", "2.1", "2.1.1", "1.2", "covid", "site", "k")
    >>> items, v = merge_items([a], np.zeros((1, 2)), [b, ReferenceItem(**{**a.__dict__, "label": "covid"})], np.ones((2, 2)))
    >>> [(i.sop_instance_uid, i.label) for i in items], v.tolist()
    ([('1.1.1', 'covid'), ('2.1.1', 'covid')], [[1.0, 1.0], [1.0, 1.0]])
    """
    position = {item.sop_instance_uid: i for i, item in enumerate(old)}
    items = list(old)
    rows = [np.asarray(v, np.float32) for v in old_vectors]
    for item, vector in zip(new, new_vectors):
        at = position.get(item.sop_instance_uid)
        if at is None:
            position[item.sop_instance_uid] = len(items)
            items.append(item)
            rows.append(np.asarray(vector, np.float32))
        else:
            items[at], rows[at] = item, np.asarray(vector, np.float32)
    return items, np.stack(rows)


def write_index(
    index_dir: Path,
    items: Sequence[ReferenceItem],
    vectors: np.ndarray,
    build: dict[str, Any],
    *,
    metric: str = "angular",
    n_trees: int = 20,
    seed: int = 0,
) -> SimilarityIndex:
    """Build the Annoy index and put it, its items, its vectors and its build record in ``index_dir``.

    The files are written in a folder beside it and renamed into place, ``index.json`` last.
    """
    index = SimilarityIndex.build(vectors, items, metric=metric, n_trees=n_trees, seed=seed)
    index_dir.mkdir(parents=True, exist_ok=True)
    staging = index_dir.parent / f".tmp-{uuid.uuid4().hex}-{index_dir.name}"
    try:
        index.save(staging)
        np.save(staging / EMBEDDINGS_FILE, np.asarray(vectors, np.float32))
        (staging / BUILD_FILE).write_text(json.dumps(build, indent=1, sort_keys=True) + "\n")
        for name in (EMBEDDINGS_FILE, BUILD_FILE, INDEX_FILE, ITEMS_FILE, META_FILE):
            os.replace(staging / name, index_dir / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    labels = {label: sum(item.label == label for item in items) for label in sorted({i.label for i in items})}
    logger.info("index: %d items (%s) in %s", len(items), labels, index_dir)
    return index


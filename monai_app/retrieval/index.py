"""Similar-study retrieval: an Annoy index of classifier embeddings and its metadata table.

The index holds the embeddings of a reference set; the table beside it says, for each item,
which DICOM instance it is (Study, Series and SOP Instance UIDs), its label (``unknown`` for a
prior with no known result), its source, a pseudonymous patient key and, when known, its study
date. It holds no patient name, ID or birth date. :meth:`SimilarityIndex.query` is the pure function
the node calls: embedding in, the k nearest items with their distances out, deterministic
for a given index file.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
from annoy import AnnoyIndex
from pydicom.uid import UID, generate_uid

METRICS = ("angular", "euclidean", "manhattan", "dot")
INDEX_FILE = "index.ann"
ITEMS_FILE = "items.csv"
META_FILE = "index.json"

# UIDs for reference images that are not DICOM (PNG/JPEG): derived from the image path, so
# the same image always gets the same UIDs. Prefix: pydicom's root for generated UIDs.
_UID_PREFIX = "1.2.826.0.1.3680043.8.498."
SECONDARY_CAPTURE = UID("1.2.840.10008.5.1.4.1.1.7")


UNKNOWN_LABEL = "unknown"
"""The label of a reference image with no known result: shown as a similar prior, never counted in a vote."""


@dataclass(frozen=True)
class ReferenceItem:
    """One reference image in the index (``label``: a class name, or ``unknown``)."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    label: str
    source: str
    patient_key: str
    study_date: str = ""  # DICOM DA (YYYYMMDD), "" when not known (images that are not DICOM)


@dataclass(frozen=True)
class Neighbour:
    """A reference item found near a query, with its distance (index metric) and position."""

    item: ReferenceItem
    distance: float
    position: int
    similarity: float | None = None  # cosine similarity of the two embeddings (-1..1), whatever the metric


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float | None:
    """Cosine of the angle between two vectors; ``None`` when one is zero.

    >>> round(cosine_similarity(np.array([1.0, 0.0]), np.array([1.0, 1.0])), 4)
    0.7071
    """
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    if norms == 0.0:
        return None
    return float(np.clip(np.dot(a, b) / norms, -1.0, 1.0))


def reference_uids(image_path: str) -> tuple[UID, UID, UID]:
    """Deterministic (Study, Series, SOP Instance) UIDs for a non-DICOM reference image.

    Parameters
    ----------
    image_path : str
        The image's path relative to its data set root (e.g. the manifest's ``image_path``).
    """
    if not image_path:
        raise ValueError('Argument "image_path" must not be empty.')
    return tuple(  # type: ignore[return-value]
        generate_uid(prefix=_UID_PREFIX, entropy_srcs=[level, image_path]) for level in ("study", "series", "instance")
    )


def pseudonymous_patient_key(patient_id: str, salt: str) -> str:
    """A key that groups a patient's items without revealing the patient ID."""
    if not patient_id:
        raise ValueError('Argument "patient_id" must not be empty.')
    return hashlib.sha256(f"{salt}\x00{patient_id}".encode()).hexdigest()[:16]


class SimilarityIndex:
    """An Annoy index of embeddings with the :class:`ReferenceItem` of each vector.

    Build it with :meth:`build`, persist with :meth:`save`, reload with :meth:`load`.
    """

    def __init__(self, annoy: AnnoyIndex, items: Sequence[ReferenceItem], metric: str, n_trees: int) -> None:
        if annoy.get_n_items() != len(items):
            raise ValueError(f"index has {annoy.get_n_items()} vectors but {len(items)} items")
        self._annoy = annoy
        self.items = tuple(items)
        self.metric = metric
        self.n_trees = n_trees
        self.dimension = annoy.f

    @classmethod
    def build(
        cls,
        embeddings: np.ndarray,
        items: Sequence[ReferenceItem],
        *,
        metric: str = "angular",
        n_trees: int = 20,
        seed: int = 0,
    ) -> SimilarityIndex:
        """Build an index over ``embeddings`` (one row per item, in ``items`` order).

        The seed makes the trees, hence every query result, reproducible.
        """
        vectors = np.asarray(embeddings, dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) != len(items) or len(vectors) == 0:
            raise ValueError('Argument "embeddings" must be a non-empty (n_items, dimension) array matching "items".')
        if metric not in METRICS:
            raise ValueError(f'Argument "metric" must be one of {", ".join(METRICS)}.')
        if not np.isfinite(vectors).all():
            raise ValueError('Argument "embeddings" must be finite.')
        annoy = AnnoyIndex(vectors.shape[1], metric)  # type: ignore[arg-type]  # checked against METRICS above
        annoy.set_seed(seed)
        for i, vector in enumerate(vectors):
            annoy.add_item(i, vector)
        annoy.build(n_trees, n_jobs=1)  # one job: multi-threaded builds are not reproducible
        return cls(annoy, items, metric, n_trees)

    def query(self, embedding: np.ndarray, k: int = 4, *, search_k: int = -1) -> list[Neighbour]:
        """The ``k`` nearest reference items to ``embedding``, nearest first."""
        vector = np.asarray(embedding, dtype=np.float32).reshape(-1)
        if vector.shape[0] != self.dimension:
            raise ValueError(f'Argument "embedding" must have {self.dimension} values, got {vector.shape[0]}.')
        if k < 1:
            raise ValueError('Argument "k" must be >= 1.')
        ids, distances = self._annoy.get_nns_by_vector(vector, k, search_k=search_k, include_distances=True)
        return [
            Neighbour(self.items[i], float(d), i, cosine_similarity(vector, self.vector(i)))
            for i, d in zip(ids, distances)
        ]

    def vector(self, item_index: int) -> np.ndarray:
        return np.asarray(self._annoy.get_item_vector(item_index), dtype=np.float32)

    def save(self, directory: Path) -> None:
        """Write ``index.ann``, ``items.csv`` and ``index.json`` into ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        self._annoy.save(str(directory / INDEX_FILE))
        with open(directory / ITEMS_FILE, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=[fl.name for fl in fields(ReferenceItem)])
            writer.writeheader()
            writer.writerows(asdict(item) for item in self.items)
        meta = {"metric": self.metric, "dimension": self.dimension, "n_trees": self.n_trees, "n_items": len(self.items)}
        (directory / META_FILE).write_text(json.dumps(meta, indent=1) + "\n")

    @classmethod
    def load(cls, directory: Path) -> SimilarityIndex:
        """Load an index written by :meth:`save` (memory-mapped, so loading is instant)."""
        meta = json.loads((directory / META_FILE).read_text())
        annoy = AnnoyIndex(int(meta["dimension"]), meta["metric"])
        annoy.load(str(directory / INDEX_FILE))
        with open(directory / ITEMS_FILE, newline="") as f:
            items = [ReferenceItem(**row) for row in csv.DictReader(f)]
        return cls(annoy, items, meta["metric"], int(meta["n_trees"]))


def exact_neighbours(embeddings: np.ndarray, query: np.ndarray, k: int, metric: str = "angular") -> np.ndarray:
    """Indices of the ``k`` nearest rows of ``embeddings`` by brute force (Annoy's metrics)."""
    x = np.asarray(embeddings, dtype=np.float64)
    q = np.asarray(query, dtype=np.float64).reshape(-1)
    if metric == "angular":
        xn = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        qn = q / np.maximum(np.linalg.norm(q), 1e-12)
        distances = np.sqrt(np.maximum(2 - 2 * xn @ qn, 0))
    elif metric == "euclidean":
        distances = np.linalg.norm(x - q, axis=1)
    elif metric == "manhattan":
        distances = np.abs(x - q).sum(axis=1)
    elif metric == "dot":
        distances = -(x @ q)
    else:
        raise ValueError(f'Argument "metric" must be one of {", ".join(METRICS)}.')
    return np.argsort(distances, kind="stable")[:k]


def recall_at_k(index: SimilarityIndex, embeddings: np.ndarray, queries: np.ndarray, k: int) -> float:
    """Share of the exact k nearest neighbours that the Annoy index returns, over ``queries``."""
    found = 0
    for query in np.asarray(queries):
        exact = set(exact_neighbours(embeddings, query, k, index.metric).tolist())
        approx = {n.position for n in index.query(query, k)}
        found += len(exact & approx)
    return found / (k * len(queries))

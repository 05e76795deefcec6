"""``cxr-node pacs-index`` and ``cxr-node pacs-export``: query, retrieve, label, then index or export.

Both are resumable: run again after an interruption, they retrieve only what is not on disk
and (the index) embed only what is not in the cache, and end with the same result. They log
counts and UIDs only.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from dicom_node.analyse.applicability import check_header
from dicom_node.errors import NodeError
from dicom_node.pacs.export import DEFAULT_FRACTIONS, IMAGES, manifest_rows, write_manifest
from dicom_node.pacs.labels import StudyLabels, read_labels
from dicom_node.pacs.peer import PacsPeer
from dicom_node.pacs.prior_index import (
    EmbeddingCache,
    embed_instances,
    existing_index,
    merge_items,
    prior_items,
    write_index,
)
from dicom_node.pacs.progress import Progress
from dicom_node.pacs.query import FoundInstance, StudyQuery, find_frontal_chest_instances, unique_by_sop
from dicom_node.pacs.retrieve import CHUNK, InstanceFolder, Method, Retriever, chunks
from monai_app.retrieval.index import META_FILE, ReferenceItem

logger = logging.getLogger(__name__)

SALT_ENV = "CXR_INDEX_SALT"
"""The secret of the pseudonymous patient keys (the bundle's index salt)."""


class PacsCommandError(NodeError):
    """A PACS command cannot run as asked (missing salt, an index built by other weights, ...)."""


@dataclass(frozen=True)
class PacsSource:
    """Where the studies come from and how they are retrieved."""

    peer: PacsPeer
    calling_ae_title: str
    query: StudyQuery
    method: Method = "get"
    move_ae_title: str | None = None
    move_port: int | None = None
    timeout: float = 60.0

    def retriever(self, folder: InstanceFolder) -> Retriever:
        return Retriever(
            self.peer, folder, self.calling_ae_title, self.method, move_ae_title=self.move_ae_title,
            move_port=self.move_port, timeout=self.timeout,
        )

    def describe(self) -> dict[str, Any]:
        """What the build record says about the source (no patient data)."""
        return {
            "pacs": str(self.peer), "retrieve": self.method, "date_from": self.query.date_from,
            "date_to": self.query.date_to, "modalities": list(self.query.modalities),
            "study_keys": dict(self.query.study_keys),
        }


def salt_from(salt: str | None) -> str:
    """The salt given, else ``$CXR_INDEX_SALT``; it must not be empty."""
    value = os.environ.get(SALT_ENV, "") if salt is None else salt
    if not value:
        raise PacsCommandError(f"the pseudonymous patient keys need a secret salt: set {SALT_ENV} (or --salt)")
    return value


def _find(source: PacsSource, max_instances: int | None) -> list[FoundInstance]:
    found, _ = find_frontal_chest_instances(source.peer, source.query, source.calling_ae_title, source.timeout)
    found = unique_by_sop(found)
    return found[:max_instances] if max_instances is not None else found


def _index_settings(bundle: Path) -> dict[str, Any]:
    """Metric, trees and seed of the bundle's ``build_index`` stage (plain values in its config)."""
    from monai.bundle import ConfigParser

    config = ConfigParser.load_config_file(bundle / "configs" / "build_index.yaml")
    return {"metric": config["cls_index_metric"], "n_trees": int(config["cls_index_trees"]), "seed": int(config["cls_index_seed"])}


def build_index_from_pacs(
    source: PacsSource,
    index_dir: Path,
    work_dir: Path,
    bundle: Path,
    *,
    labels_csv: Path | None = None,
    site: str = "site",
    salt: str | None = None,
    extend: bool = False,
    device: str = "auto",
    batch_size: int = 4,
    keep_images: bool = False,
    max_instances: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Build (or with ``extend``, extend) the similar-study index in ``index_dir`` from the PACS.

    ``work_dir`` holds the retrieved files (deleted once embedded unless ``keep_images``) and
    the embedding cache; keep it to resume. Returns the summary that is also written as
    ``build.json`` in the index folder.

    Raises
    ------
    PacsCommandError
        No salt; ``extend`` onto an index embedded by other weights; nothing to index.
    """
    from monai_app.inference import BundleAnalyser  # torch and MONAI: only for this command

    key_salt = salt_from(salt)
    labels = read_labels(labels_csv)
    # Models first: a missing weights file stops the command before any retrieval.
    analyser = BundleAnalyser(bundle, device, load_index=False)
    old_items: list[ReferenceItem] = []
    old_vectors: np.ndarray | None = None
    old_build: dict[str, Any] = {}
    if extend and (index_dir / META_FILE).is_file():
        old_items, old_vectors, old_build = existing_index(index_dir)
        if old_build.get("weights_sha256") not in (None, analyser.identity.sha256):
            raise PacsCommandError(
                f"{index_dir} was embedded by other weights ({old_build['weights_sha256'][:12]}): rebuild it without --extend"
            )
    found = _find(source, max_instances)
    folder = InstanceFolder(work_dir / "instances")
    cache = EmbeddingCache(work_dir / "embeddings")
    retriever = source.retriever(folder)
    bar = Progress(len(found), "retrieve+embed", stream=None) if progress else None
    totals: dict[str, Any] = {"found": len(found), "retrieved": 0, "on_disk": 0, "failed": 0}
    embed_counts = []
    for chunk in chunks(found, CHUNK):
        todo = [i for i in chunk if not cache.has(i.sop_instance_uid)]
        got = retriever.retrieve(todo)
        totals["retrieved"] += got.retrieved
        totals["on_disk"] += got.on_disk
        totals["failed"] += len(got.failed)
        embed_counts.append(
            embed_instances(
                analyser, folder, chunk, cache, batch_size=batch_size, delete_after=not keep_images,
                on_instance=bar.advance if bar else None,
            )
        )
    if bar:
        bar.close()
    for c in embed_counts:
        for name in ("embedded", "cached", "missing"):
            totals[name] = totals.get(name, 0) + getattr(c, name)
        for reason, n in c.not_indexed.items():
            totals.setdefault("not_indexed", {})[reason] = totals.get("not_indexed", {}).get(reason, 0) + n
    new_items, new_vectors = prior_items(found, cache, labels, key_salt, site)
    if old_vectors is not None and new_items:
        if old_vectors.shape[1] != new_vectors.shape[1]:
            raise PacsCommandError(f"{index_dir} has {old_vectors.shape[1]}-d vectors, the bundle makes {new_vectors.shape[1]}-d")
        items, vectors = merge_items(old_items, old_vectors, new_items, new_vectors)
    elif old_vectors is not None:
        items, vectors = old_items, old_vectors
    else:
        items, vectors = new_items, new_vectors
    if not items:
        raise PacsCommandError("no image to index: the query found none the node would analyse")
    totals["indexed_now"] = len(new_items)
    totals["items"] = len(items)
    build = {
        "bundle": analyser.identity.name, "bundle_version": analyser.identity.version,
        "weights_sha256": analyser.identity.sha256, "site": site, "source": source.describe(),
        "counts": totals, "extended_from": old_build.get("counts", {}).get("items") if extend else None,
    }
    write_index(index_dir, items, vectors, build, **_index_settings(bundle))
    logger.info("pacs-index: %s", {k: v for k, v in totals.items()})
    return build


def export_training_set(
    source: PacsSource,
    out_dir: Path,
    *,
    labels_csv: Path | None = None,
    site: str = "site",
    salt: str | None = None,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    max_instances: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Export the query's images to ``out_dir/images`` with ``out_dir/manifest.csv`` (the bundle's format).

    Rerun after an interruption, it retrieves only the missing files and rewrites the manifest.
    Returns the counts (no patient data).
    """
    key_salt = salt_from(salt)
    labels: StudyLabels = read_labels(labels_csv)
    found = _find(source, max_instances)
    folder = InstanceFolder(out_dir / IMAGES)
    bar = Progress(len(found), "retrieve", stream=None) if progress else None
    got = source.retriever(folder).retrieve(found, on_instance=bar.advance if bar else None)
    if bar:
        bar.close()
    image_paths: dict[str, str] = {}
    skipped: dict[str, int] = {}
    for instance in found:
        path = folder.path(instance.sop_instance_uid)
        if not path.is_file():
            continue
        # The file's own header, as the node would judge it (a PACS may answer a C-FIND sparsely).
        verdict = check_header(pydicom.dcmread(path, stop_before_pixels=True))
        if not verdict.applicable:
            skipped[verdict.category] = skipped.get(verdict.category, 0) + 1
            continue
        image_paths[instance.sop_instance_uid] = path.relative_to(out_dir).as_posix()
    rows = manifest_rows(found, image_paths, labels, key_salt, site, fractions)
    write_manifest(out_dir, rows)
    summary = {
        "found": len(found), "retrieved": got.retrieved, "on_disk": got.on_disk, "failed": len(got.failed),
        "skipped": skipped, "rows": len(rows),
        "labels": {label: sum(r["label"] == label for r in rows) for label in ("covid", "non_covid", "unknown")},
        "splits": {split: sum(r["split"] == split for r in rows) for split in ("train", "val", "test")},
    }
    logger.info("pacs-export: %s", summary)
    return summary


"""The similar-study index grown from the node's own traffic (``[index] grow = true``).

Each analysed study's embedding is kept as a *pending prior* (``pending/<SOP>.npz``, written
before its result enters the outbox). Once the study's result was delivered, the next
rebuild adds it to the index, with the PACS's Study/Series/SOP Instance UIDs, its study date,
a salted patient key and the label ``unknown`` (no outcome is known from traffic; such
priors are listed, and do not vote). Annoy indexes are immutable: a rebuild writes a new
version folder and then switches the ``current`` link with one atomic rename, so the node
and a restart always see a whole index. Everything lives under a folder named after the
classifier weights: embeddings of other weights are not comparable, so a new bundle starts
a new grown index from its own base.

Layout::

    <grow_directory>/<weights sha256, 16 hex>/pending/<SOPInstanceUID>.npz
    <grow_directory>/<weights sha256, 16 hex>/versions/<n>/index.ann, items.csv, index.json, ...
    <grow_directory>/<weights sha256, 16 hex>/current -> versions/<n>
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from dicom_node.errors import ConfigError
from dicom_node.pacs.commands import SALT_ENV, PacsCommandError, salt_from
from dicom_node.pacs.prior_index import existing_index, merge_items, study_patient_key, write_index
from dicom_node.spool.durable import fsync_directory, is_temp_file, write_atomically
from monai_app.retrieval.index import META_FILE, ReferenceItem, SimilarityIndex

logger = logging.getLogger(__name__)

UNKNOWN_LABEL = "unknown"
VERSIONS_KEPT = 2  # the current one, and the one a query in flight may still read


@dataclass(frozen=True)
class PendingPrior:
    """One analysed study waiting to enter the index once its result is delivered."""

    item: ReferenceItem
    embedding: np.ndarray


def prior_from_header(header: Dataset, embedding: np.ndarray, salt: str, source: str) -> PendingPrior:
    """The pending prior of an analysed image: its UIDs and date, a salted patient key, no label.

    The Patient ID is only an input of the salted hash; no name, ID or birth date is kept.
    """
    study = str(header.StudyInstanceUID)
    item = ReferenceItem(
        study_instance_uid=study, series_instance_uid=str(header.SeriesInstanceUID),
        sop_instance_uid=str(header.SOPInstanceUID), sop_class_uid=str(header.SOPClassUID),
        label=UNKNOWN_LABEL, source=source,
        patient_key=study_patient_key(str(header.get("PatientID", "") or ""), study, salt),
        study_date=str(header.get("StudyDate", "") or ""),
    )
    return PendingPrior(item, np.asarray(embedding, np.float32).reshape(-1))


def index_salt() -> str:
    """The secret of the grown index's patient keys, ``$CXR_INDEX_SALT``.

    Raises
    ------
    dicom_node.errors.ConfigError
        It is not set: the patient keys would be plain hashes of Patient IDs.
    """
    try:
        return salt_from(None)
    except PacsCommandError:
        raise ConfigError(f"index.grow = true needs a secret salt for the patient keys: set {SALT_ENV}") from None


class GrownIndex:
    """The grown index of one set of classifier weights, and its pending priors.

    Parameters
    ----------
    grow_directory : pathlib.Path
        ``[index] grow_directory``.
    base_index : pathlib.Path
        The index the growth starts from (the bundle's, or ``[index] directory``).
    weights_sha256 : str
        The classifier weights' digest: embeddings of other weights are not comparable.
    fsync : bool
        Flush pending priors and the switch of ``current`` to stable storage.
    """

    def __init__(self, grow_directory: Path, base_index: Path, weights_sha256: str, *, fsync: bool = True) -> None:
        self.root = Path(grow_directory) / weights_sha256[:16]
        self.base_index = Path(base_index)
        self.fsync = fsync
        self.pending_dir = self.root / "pending"
        self.versions_dir = self.root / "versions"
        self.current_link = self.root / "current"
        self._rebuild_lock = threading.Lock()
        for folder in (self.pending_dir, self.versions_dir):
            folder.mkdir(parents=True, exist_ok=True)

    def current(self) -> Path:
        """The index to query now: the latest grown version, else the base."""
        return self.current_link.resolve() if self.current_link.is_symlink() else self.base_index

    def add_pending(self, prior: PendingPrior) -> None:
        """Keep ``prior`` until its study's result is delivered (atomic, so a crash leaves no half file)."""
        buffer = io.BytesIO()
        arrays: dict[str, Any] = {k: np.array(v) for k, v in asdict(prior.item).items()}
        np.savez(buffer, embedding=prior.embedding, **arrays)
        write_atomically(self.pending_dir / f"{prior.item.sop_instance_uid}.npz", [buffer.getvalue()], fsync=self.fsync)

    def pending(self) -> list[PendingPrior]:
        """The pending priors, oldest first."""
        paths = sorted(
            (p for p in self.pending_dir.glob("*.npz") if not is_temp_file(p)), key=lambda p: p.stat().st_mtime_ns
        )
        priors = []
        for path in paths:
            with np.load(path) as data:
                item = ReferenceItem(**{k: str(data[k]) for k in data.files if k != "embedding"})
                priors.append(PendingPrior(item, np.asarray(data["embedding"], np.float32)))
        return priors

    def rebuild(self, is_delivered: Callable[[str], bool]) -> Path | None:
        """Add every pending prior whose result is delivered to a new version and make it current.

        Returns the new version's folder, or ``None`` when nothing was delivered yet.
        """
        with self._rebuild_lock:
            ready = [p for p in self.pending() if is_delivered(p.item.sop_instance_uid)]
            if not ready:
                return None
            current = self.current()
            items, vectors, build = existing_index(current)
            items, vectors = merge_items(items, vectors, [p.item for p in ready], np.stack([p.embedding for p in ready]))
            metric = json.loads((current / META_FILE).read_text())["metric"]  # existing_index read the rest
            version = self.versions_dir / str(self._next_version())
            write_index(version, items, vectors, {**build, "grown_from_traffic": True}, metric=metric)
            self._switch_current(version)
            for prior in ready:  # only now: a crash before this adds them again, in place (same SOP UID)
                (self.pending_dir / f"{prior.item.sop_instance_uid}.npz").unlink(missing_ok=True)
            self._prune_versions(keep=version)
            return version

    def _next_version(self) -> int:
        numbers = [int(p.name) for p in self.versions_dir.iterdir() if p.name.isdigit()]
        return max(numbers, default=0) + 1

    def _switch_current(self, version: Path) -> None:
        link = self.root / f".tmp-current-{os.getpid()}"
        link.unlink(missing_ok=True)
        link.symlink_to(version.relative_to(self.root))
        os.replace(link, self.current_link)  # atomic: readers see the old version or the new
        if self.fsync:
            fsync_directory(self.root)

    def _prune_versions(self, keep: Path) -> None:
        numbers = sorted((int(p.name) for p in self.versions_dir.iterdir() if p.name.isdigit()), reverse=True)
        for number in numbers[VERSIONS_KEPT:]:
            if number != int(keep.name):
                shutil.rmtree(self.versions_dir / str(number), ignore_errors=True)


class IndexGrowthLoop:
    """Rebuilds the grown index every ``interval_seconds`` and hands each new version to ``use``.

    ``use`` receives the loaded :class:`SimilarityIndex` (the analyser swaps it in); errors
    are logged and the loop goes on: analysis never waits for it.
    """

    def __init__(
        self,
        grown: GrownIndex,
        is_delivered: Callable[[str], bool],
        use: Callable[[SimilarityIndex], None],
        interval_seconds: float,
    ) -> None:
        self.grown = grown
        self.is_delivered = is_delivered
        self.use = use
        self.interval_seconds = interval_seconds
        self.wake = threading.Event()

    def rebuild_now(self) -> Path | None:
        started = time.monotonic()
        version = self.grown.rebuild(self.is_delivered)
        if version is not None:
            index = SimilarityIndex.load(version)
            self.use(index)
            logger.info(
                "index: grown to %d items from the node's traffic in %.1f s (%s)",
                len(index.items), time.monotonic() - started, version.name,
            )
        return version

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.wake.wait(self.interval_seconds)
            self.wake.clear()
            if stop.is_set():
                break
            try:
                self.rebuild_now()
            except Exception:
                logger.exception("index: rebuild failed; the node goes on with the index it has")

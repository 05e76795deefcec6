"""Datalists for the bundle, built from a manifest CSV in the format of the shared data.

Required manifest columns: ``image_path`` (relative to ``dataset_dir``), ``patient_id``,
``label``, ``mask_path`` (relative, may be empty) and ``split`` (``train``/``val``/``test``,
assigned by patient). ``source`` is used when present. The *mask source* of a row is the
name of the folder holding its mask (``ieee8023_v7labs`` for human-reviewed masks,
``ieee8023_lungvae`` for model-made ones in the shared data).
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path

from monai_app.labels import CLASS_LABELS, FINDING_CLASS_NAMES, NO_FINDING_TEXTS, POSITIVE_CLASS, checked_head_size

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("image_path", "patient_id", "label", "mask_path", "split")
"""Columns every manifest must have."""
SPLITS = ("train", "val", "test")
"""Valid values of the ``split`` column."""
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".dcm", ".dicom", ""})
"""Suffixes of the files :func:`image_datalist` takes from a folder (lower case)."""


def read_manifest(manifest: str | Path) -> list[dict[str, str]]:
    """Read a manifest CSV and check its columns.

    Parameters
    ----------
    manifest : str or pathlib.Path
        Path of the CSV file.

    Returns
    -------
    list of dict
        One dict per row.

    Raises
    ------
    ValueError
        If a required column is missing or a ``split`` value is unknown.
    """
    with Path(manifest).open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"manifest {Path(manifest).name!r} lacks columns {missing}")
        rows = list(reader)
    bad = sorted({r["split"] for r in rows} - set(SPLITS))
    if bad:
        raise ValueError(f"manifest {Path(manifest).name!r} has unknown split values {bad}")
    return rows


def mask_source(mask_path: str) -> str:
    """The mask source of a row: the name of the folder holding its mask (``""`` if none)."""
    return Path(mask_path).parent.name if mask_path else ""


def segmentation_datalist(
    manifest: str | Path,
    dataset_dir: str | Path,
    split: str,
    mask_sources: Sequence[str] | None = None,
    *,
    allow_empty: bool = False,
) -> list[dict[str, str]]:
    """Image/mask pairs of one split, for the lung segmentation network.

    Parameters
    ----------
    manifest : str or pathlib.Path
        Manifest CSV.
    dataset_dir : str or pathlib.Path
        Folder the manifest's relative paths start from.
    split : str
        ``"train"``, ``"val"`` or ``"test"``.
    mask_sources : Sequence of str, optional
        Keep only masks from these sources (e.g. ``["ieee8023_v7labs"]`` for human-reviewed
        masks); ``None`` keeps every row with a mask.
    allow_empty : bool
        Return ``[]`` instead of raising when nothing matches: the training stage's datasets
        are built before :func:`monai_app.workflows.train_segmentation` decides what an
        unmasked dataset (e.g. a PACS export) means.

    Returns
    -------
    list of dict
        Items with keys ``image``, ``label`` (absolute paths), ``patient_id``, ``source``
        and ``mask_source``, in manifest order.

    Raises
    ------
    ValueError
        If ``split`` is unknown, or the selection is empty and ``allow_empty`` is false.
    """
    if split not in SPLITS:
        raise ValueError(f'Argument "split" must be one of {SPLITS}, got {split!r}')
    root = Path(dataset_dir).resolve()
    items = []
    for row in read_manifest(manifest):
        if row["split"] != split or not row["mask_path"]:
            continue
        origin = mask_source(row["mask_path"])
        if mask_sources is not None and origin not in mask_sources:
            continue
        items.append(
            {
                "image": str(root / row["image_path"]),
                "label": str(root / row["mask_path"]),
                "patient_id": row["patient_id"],
                "source": row.get("source", "") or "unknown",
                "mask_source": origin,
            }
        )
    if not items and not allow_empty:
        raise ValueError(f"no {split!r} rows with masks from {mask_sources} in the manifest")
    logger.info("%s: %d image/mask pairs from %s", split, len(items), mask_sources or "all sources")
    return items


def image_datalist(paths: Sequence[str | Path]) -> list[dict[str, str]]:
    """Datalist for inference: one ``{"image": path}`` item per file.

    Parameters
    ----------
    paths : Sequence of str or pathlib.Path
        Image files (PNG/JPEG/DICOM) or folders. A folder contributes, in sorted order, its
        files named ``*.png``, ``*.jpg``, ``*.jpeg``, ``*.dcm``, ``*.dicom`` or without a
        suffix (DICOM exports); other files (``manifest.csv``, ...) are skipped.

    Returns
    -------
    list of dict
        Items with the key ``image`` (absolute path).
    """
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files.extend(
                p for p in sorted(path.iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
        else:
            files.append(path)
    return [{"image": str(p.resolve())} for p in files]


def checked_splits(split: str | Sequence[str]) -> tuple[str, ...]:
    """``split`` as a tuple of split names; ``ValueError`` if empty or a name is unknown."""
    splits = (split,) if isinstance(split, str) else tuple(split)
    if not splits or any(s not in SPLITS for s in splits):
        raise ValueError(f'Argument "split" must be among {SPLITS}, got {split!r}')
    return splits


def split_images(
    manifest: str | Path,
    dataset_dir: str | Path,
    split: str | Sequence[str],
) -> list[dict[str, str]]:
    """Every image of one or more splits, labelled or not (for self-supervised pretraining).

    Returns
    -------
    list of dict
        Items with keys ``image`` (absolute path), ``patient_id`` and ``source``, in
        manifest order.

    Raises
    ------
    ValueError
        If a split is unknown or the selection is empty.
    """
    splits = checked_splits(split)
    root = Path(dataset_dir).resolve()
    items = [
        {"image": str(root / row["image_path"]), "patient_id": row["patient_id"],
         "source": row.get("source", "") or "unknown"}
        for row in read_manifest(manifest) if row["split"] in splits
    ]
    if not items:
        raise ValueError(f"no rows of splits {splits} in the manifest")
    logger.info("%s: %d images (labelled or not)", "+".join(splits), len(items))
    return items



"""Manifest ``label`` -> classifier class index; other labels (``unknown``) are left out."""


def finding_class(label: str, finding: str) -> int | None:
    """Index of a row in :data:`~monai_app.labels.FINDING_CLASS_NAMES`, or ``None`` when it cannot be told.

    >>> [finding_class("covid", "COVID-19, ARDS"), finding_class("non_covid", "No Finding"),
    ...  finding_class("non_covid", "Atelectasis|Pneumonia"), finding_class("non_covid", "")]
    [1, 0, 2, None]
    """
    if label == "covid":
        return POSITIVE_CLASS
    text = finding.strip().lower()
    if label != "non_covid" or not text:
        return None
    return FINDING_CLASS_NAMES.index("no_finding" if text in NO_FINDING_TEXTS else "other_pneumonia")


def classification_datalist(
    manifest: str | Path,
    dataset_dir: str | Path,
    split: str | Sequence[str],
    num_classes: int = 2,
) -> list[dict[str, object]]:
    """Labelled images of one or more splits, for the COVID-19 classifier.

    Parameters
    ----------
    manifest : str or pathlib.Path
        Manifest CSV.
    dataset_dir : str or pathlib.Path
        Folder the manifest's relative paths start from.
    split : str or Sequence of str
        ``"train"``, ``"val"``, ``"test"`` or several of them.
    num_classes : int
        2: COVID-19 or not. 3: items also carry ``finding`` (:func:`finding_class`), the target
        of the three-class head; non-COVID rows with no ``finding`` text are then skipped.

    Returns
    -------
    list of dict
        Items with keys ``image`` (absolute path), ``label`` (0 non_covid, 1 covid),
        ``image_path`` (as in the manifest), ``patient_id`` and ``source``, in manifest
        order. Rows labelled otherwise (``unknown``) are skipped.

    Raises
    ------
    ValueError
        If a split is unknown or the selection is empty.
    """
    splits = checked_splits(split)
    three_classes = checked_head_size(num_classes) == len(FINDING_CLASS_NAMES)
    root = Path(dataset_dir).resolve()
    items: list[dict[str, object]] = []
    no_finding_text = 0
    for row in read_manifest(manifest):
        if row["split"] not in splits or row["label"] not in CLASS_LABELS:
            continue
        item: dict[str, object] = {
            "image": str(root / row["image_path"]),
            "label": CLASS_LABELS[row["label"]],
            "image_path": row["image_path"],
            "patient_id": row["patient_id"],
            "source": row.get("source", "") or "unknown",
        }
        if three_classes:
            finding = finding_class(row["label"], row.get("finding", "") or "")
            if finding is None:
                no_finding_text += 1
                continue
            item["finding"] = finding
        items.append(item)
    if not items:
        raise ValueError(f"no labelled {splits} rows in the manifest")
    if no_finding_text:
        logger.info("%s: %d non-COVID images without a finding text left out of the three classes",
                    "+".join(splits), no_finding_text)
    logger.info("%s: %d labelled images", "+".join(splits), len(items))
    return items

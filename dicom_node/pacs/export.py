"""A training set from the PACS: the retrieved images and a manifest in the bundle's format.

The manifest (``manifest.csv``) has the columns :func:`monai_app.data.manifest.read_manifest`
requires, so the bundle's commands run on the folder unchanged (``--dataset_dir <folder>``):

- ``image_path``: ``images/<SOP Instance UID>.dcm``, the file as the PACS sent it;
- ``patient_id``: the salted pseudonymous key of the patient, never the PACS's Patient ID;
- ``label``: ``covid``, ``non_covid`` or ``unknown`` (the bundle's classifier skips ``unknown``
  rows; its self-supervised pretraining uses them);
- ``mask_path``: empty (no lung masks: the lung U-Net is not retrained on this set);
- ``split``: ``train`` / ``val`` / ``test`` by patient, from the key (:func:`patient_split`),
  so a patient's studies share a split and a patient keeps it when the export grows;
- ``source``: the site's name; ``study_date``; and the image's UIDs.

No patient name, Patient ID, birth date or accession number is written to the manifest.
The DICOM files themselves are not de-identified (the data stays in the hospital).
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Sequence
from pathlib import Path

from dicom_node.pacs.labels import StudyLabels
from dicom_node.pacs.prior_index import patient_key
from dicom_node.pacs.query import FoundInstance
from dicom_node.spool.durable import write_atomically
from monai_app.data.manifest import SPLITS

MANIFEST = "manifest.csv"
IMAGES = "images"
COLUMNS = (
    "image_path", "patient_id", "label", "mask_path", "split", "source", "study_date",
    "study_instance_uid", "series_instance_uid", "sop_instance_uid",
)
DEFAULT_FRACTIONS = (0.7, 0.15, 0.15)
"""Shares of patients in train, val and test (repeated in :mod:`dicom_node.pacs.cli`)."""


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    """Three non-negative shares that sum to 1 (train, val, test).

    >>> check_fractions([0.5, 0.25, 0.25])
    (0.5, 0.25, 0.25)
    """
    values = tuple(float(f) for f in fractions)
    if len(values) != 3 or min(values) < 0 or abs(sum(values) - 1.0) > 1e-6:
        raise ValueError(f'Argument "fractions" must be three shares (train, val, test) that sum to 1, got {fractions!r}.')
    return values[0], values[1], values[2]


def patient_split(key: str, fractions: Sequence[float] = DEFAULT_FRACTIONS) -> str:
    """The split of a patient, from the patient's salted key alone.

    A hash of the key, as a number in [0, 1), picks the split: reproducible, the same for every
    study of the patient, and unchanged when more patients are exported later.

    >>> patient_split("0123456789abcdef") == patient_split("0123456789abcdef")
    True
    >>> sorted({patient_split(f"{i:016x}") for i in range(50)})
    ['test', 'train', 'val']
    """
    train, val, _ = check_fractions(fractions)
    u = int(hashlib.sha256(f"split\x00{key}".encode()).hexdigest()[:13], 16) / 16**13
    return SPLITS[0] if u < train else SPLITS[1] if u < train + val else SPLITS[2]


def manifest_rows(
    instances: Sequence[FoundInstance],
    image_paths: dict[str, str],
    labels: StudyLabels,
    salt: str,
    site: str,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
) -> list[dict[str, str]]:
    """One manifest row per exported image (``image_paths``: SOP Instance UID -> path relative to the folder)."""
    rows = []
    for instance in instances:
        if instance.sop_instance_uid not in image_paths:
            continue
        key = patient_key(instance, salt)
        rows.append({
            "image_path": image_paths[instance.sop_instance_uid], "patient_id": key,
            "label": labels.label(instance.study_instance_uid, instance.accession_number), "mask_path": "",
            "split": patient_split(key, fractions), "source": site, "study_date": instance.study_date,
            "study_instance_uid": instance.study_instance_uid, "series_instance_uid": instance.series_instance_uid,
            "sop_instance_uid": instance.sop_instance_uid,
        })
    return rows


def write_manifest(folder: Path, rows: Sequence[dict[str, str]]) -> Path:
    """Write ``folder/manifest.csv`` atomically (a reader never sees half a manifest)."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(COLUMNS))
    writer.writeheader()
    writer.writerows(rows)
    path = folder / MANIFEST
    write_atomically(path, [text.getvalue().encode()])
    return path

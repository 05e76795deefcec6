"""A site's labels CSV: the known result of each study (e.g. its PCR), keyed by Accession Number or Study Instance UID.

Columns: ``label`` and at least one of ``accession_number`` and ``study_instance_uid``
(DICOM keywords ``AccessionNumber`` / ``StudyInstanceUID`` are accepted as headers too).
Label values: ``covid`` / ``non_covid`` (the bundle's class names), or the PCR words
``positive`` / ``negative`` / ``detected`` / ``not detected``; ``unknown`` or an empty value
leaves the study unlabelled. A study the CSV does not list is unlabelled as well: it is kept
as a similar prior with no known label, and it neither votes nor trains.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from monai_app.labels import CLASS_NAMES, POSITIVE_CLASS

UNKNOWN = "unknown"
"""The label of a study with no known result (as in the shared manifest)."""
COVID, NON_COVID = CLASS_NAMES[POSITIVE_CLASS], CLASS_NAMES[1 - POSITIVE_CLASS]
_VALUES = {  # keys in lower case, words separated by one space
    "covid": COVID, "positive": COVID, "pos": COVID, "detected": COVID,
    "non covid": NON_COVID, "negative": NON_COVID, "neg": NON_COVID, "not detected": NON_COVID,
    "unknown": UNKNOWN, "": UNKNOWN,
}
_HEADERS = {
    "accession_number": "accession_number", "accessionnumber": "accession_number",
    "study_instance_uid": "study_instance_uid", "studyinstanceuid": "study_instance_uid", "label": "label",
}


def normalise_label(value: str) -> str:
    """A labels CSV value as ``covid``, ``non_covid`` or ``unknown``.

    >>> [normalise_label(v) for v in ("Positive", "not detected", "", "covid")]
    ['covid', 'non_covid', 'unknown', 'covid']
    >>> normalise_label("maybe")
    Traceback (most recent call last):
    ...
    ValueError: label 'maybe' is not one of covid, non_covid, unknown (or positive/negative/detected/not detected)
    """
    label = _VALUES.get(" ".join(value.lower().replace("_", " ").replace("-", " ").split()))
    if label is None:
        raise ValueError(
            f"label {value!r} is not one of {COVID}, {NON_COVID}, {UNKNOWN} (or positive/negative/detected/not detected)"
        )
    return label


@dataclass(frozen=True)
class StudyLabels:
    """Labels by Accession Number and by Study Instance UID (the UID wins when both match)."""

    by_accession: dict[str, str] = field(default_factory=dict)
    by_study: dict[str, str] = field(default_factory=dict)

    def label(self, study_instance_uid: str, accession_number: str) -> str:
        """The study's label; ``unknown`` when the CSV does not list it."""
        if study_instance_uid in self.by_study:
            return self.by_study[study_instance_uid]
        if accession_number and accession_number in self.by_accession:
            return self.by_accession[accession_number]
        return UNKNOWN

    def __len__(self) -> int:
        return len(self.by_accession) + len(self.by_study)


def read_labels(path: Path | None) -> StudyLabels:
    """Read a labels CSV (``None``: every study unlabelled).

    Raises
    ------
    ValueError
        A column is missing, a label value is unknown, or a key has two different labels.
        The message names the row number, never its values (an accession number is an identifier).
    """
    if path is None:
        return StudyLabels()
    by_accession: dict[str, str] = {}
    by_study: dict[str, str] = {}
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = {_HEADERS[h.strip().lower()]: h for h in reader.fieldnames or [] if h.strip().lower() in _HEADERS}
        if "label" not in columns or not ({"accession_number", "study_instance_uid"} & set(columns)):
            raise ValueError(f"labels CSV {path.name!r} needs a 'label' column and 'accession_number' or 'study_instance_uid'")
        for number, row in enumerate(reader, start=2):
            try:
                label = normalise_label(row[columns["label"]] or "")
            except ValueError:
                raise ValueError(f"labels CSV {path.name!r} row {number}: unknown label value") from None
            for key, table in (("accession_number", by_accession), ("study_instance_uid", by_study)):
                value = (row.get(columns.get(key, ""), "") or "").strip()
                if not value:
                    continue
                if table.get(value, label) != label:
                    raise ValueError(f"labels CSV {path.name!r} row {number}: a {key} listed before with another label")
                table[value] = label
    return StudyLabels(by_accession, by_study)

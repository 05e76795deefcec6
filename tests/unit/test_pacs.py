"""The PACS import's pure parts: labels CSV, the frontal selection from query identifiers, splits, and unlabelled neighbours."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset

from dicom_node.pacs.export import patient_split
from dicom_node.pacs.labels import read_labels
from dicom_node.pacs.query import StudyQuery, image_verdict
from monai_app.evaluation.retrieval import retrieval_metrics
from monai_app.retrieval.index import ReferenceItem, SimilarityIndex


def test_labels_csv_keys_by_accession_or_study_uid_and_reads_pcr_words(tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    path.write_text("AccessionNumber,StudyInstanceUID,label\nA1,,Positive\nA2,1.2.3,not detected\n,1.2.4,covid\nA5,,\n")
    labels = read_labels(path)
    assert labels.label("9.9", "A1") == "covid"
    assert labels.label("1.2.3", "other") == "non_covid"  # the UID wins
    assert labels.label("1.2.4", "") == "covid"
    assert labels.label("9.9", "A5") == "unknown" and labels.label("9.9", "A9") == "unknown"
    assert read_labels(None).label("1.2", "A1") == "unknown"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("accession_number,label\nSECRET-1,maybe\n", "row 2: unknown label value"),
        ("accession_number,label\nSECRET-1,covid\nSECRET-1,negative\n", "row 3: a accession_number listed before"),
        ("patient,label\nx,covid\n", "needs a 'label' column"),
    ],
)
def test_a_bad_labels_csv_names_the_row_never_its_values(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "labels.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as failure:
        read_labels(path)
    assert "SECRET" not in str(failure.value)


def _series(modality: str = "DX", body_part: str = "CHEST", description: str = "") -> Dataset:
    ds = Dataset()
    ds.Modality, ds.BodyPartExamined, ds.SeriesDescription = modality, body_part, description
    return ds


def _image(view: str = "PA", body_part: str = "") -> Dataset:
    ds = Dataset()
    ds.ViewPosition, ds.BodyPartExamined = view, body_part
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    return ds


@pytest.mark.parametrize(
    ("series", "image", "taken"),
    [
        (_series(), _image(), True),
        (_series(body_part=""), _image(view=""), True),  # nothing said: the pixels decide later, as in the node
        (_series(), _image(view="LL"), False),
        (_series(body_part="KNEE"), _image(), False),
        (_series(), _image(body_part="HAND"), False),  # the image's body part wins over the series'
        (_series(description="CHEST LAT"), _image(view=""), False),
    ],
)
def test_the_query_takes_what_the_node_would_analyse(series: Dataset, image: Dataset, taken: bool) -> None:
    assert image_verdict(series, image).applicable is taken


def test_a_query_checks_its_dates_and_modalities() -> None:
    assert StudyQuery(date_from="20200101").date_range == "20200101-" and StudyQuery().date_range == ""
    with pytest.raises(ValueError, match="date_from"):
        StudyQuery("2020-01-01")
    with pytest.raises(ValueError, match="modalities"):
        StudyQuery(modalities=("CT",))


def test_a_patient_keeps_its_split_and_the_shares_are_about_right() -> None:
    keys = [f"{i:016x}" for i in range(3000)]
    splits = [patient_split(k) for k in keys]
    assert splits == [patient_split(k) for k in keys]
    shares = [splits.count(s) / len(splits) for s in ("train", "val", "test")]
    assert shares == pytest.approx([0.7, 0.15, 0.15], abs=0.03)


def test_unlabelled_neighbours_are_listed_but_never_vote() -> None:
    rng = np.random.default_rng(0)
    covid, unknown = rng.normal(size=(1, 8)), rng.normal(size=(3, 8))
    vectors = np.concatenate([covid, unknown]).astype(np.float32)
    labels = ["covid", "unknown", "unknown", "unknown"]
    items = [ReferenceItem(f"1.{i}", f"1.{i}.1", f"1.{i}.1.1", "1.2", label, "site", "k") for i, label in enumerate(labels)]
    index = SimilarityIndex.build(vectors, items, n_trees=2)
    r = retrieval_metrics(index, covid, [1], k=4)
    assert r["vote_accuracy"] == 1.0, "one covid neighbour and three unknown: the vote is covid"
    assert r["mean_distance_other_label"] is None

"""The three-class head's target (no finding / COVID-19 / other pneumonia), scored on p(COVID-19) like the binary head."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.metrics import compute_roc_auc

from monai_app.data.manifest import classification_datalist, finding_class
from monai_app.engines.targets import ClassifierTarget
from monai_app.handlers import covid_score_and_label_on_cpu
from monai_app.labels import FINDING_CLASS_NAMES, POSITIVE_CLASS
from monai_app.networks.classifier import CovidClassifier, load_classifier_weights


def test_every_labelled_shared_image_gets_the_finding_its_text_says(shared_data: Path) -> None:
    with (shared_data / "manifest.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    by_class: dict[int | None, set[str]] = {}
    for row in rows:
        by_class.setdefault(finding_class(row["label"], row["finding"]), set()).add(row["finding"])
    assert by_class[POSITIVE_CLASS] == {r["finding"] for r in rows if r["label"] == "covid"}
    assert {t.lower() for t in by_class[FINDING_CLASS_NAMES.index("no_finding")]} == {"no finding"}
    other = by_class[FINDING_CLASS_NAMES.index("other_pneumonia")]
    assert "Pneumonia" in other and "Streptococcus" in other and not any(t.lower() == "no finding" for t in other)
    assert all(r["label"] == "unknown" for r in rows if finding_class(r["label"], r["finding"]) is None)


def test_the_three_class_datalist_is_the_binary_one_with_a_finding_that_agrees(shared_data: Path) -> None:
    binary = classification_datalist(shared_data / "manifest.csv", shared_data, "train")
    three = classification_datalist(shared_data / "manifest.csv", shared_data, "train", num_classes=3)
    assert [d["image_path"] for d in three] == [d["image_path"] for d in binary]  # every shared non-COVID row has a text
    assert all((d["finding"] == POSITIVE_CLASS) == (d["label"] == POSITIVE_CLASS) for d in three)
    assert {d["finding"] for d in three} == {0, 1, 2}
    assert all("finding" not in d for d in binary)
    with pytest.raises(ValueError, match="num_classes"):
        classification_datalist(shared_data / "manifest.csv", shared_data, "train", num_classes=4)


def test_a_non_covid_row_without_a_finding_text_is_left_out_of_three_classes(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.csv"
    fields = ["image_path", "patient_id", "label", "finding", "mask_path", "split"]
    with manifest.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerow({"image_path": "a.png", "patient_id": "p1", "label": "non_covid", "finding": "", "mask_path": "", "split": "train"})
        writer.writerow({"image_path": "b.png", "patient_id": "p2", "label": "covid", "finding": "", "mask_path": "", "split": "train"})
    assert len(classification_datalist(manifest, tmp_path, "train")) == 2
    assert [d["image_path"] for d in classification_datalist(manifest, tmp_path, "train", num_classes=3)] == ["b.png"]


def test_the_trainer_gets_the_label_or_the_finding_as_its_target() -> None:
    batch = {"image": torch.zeros(2, 3, 8, 8), "label": torch.tensor([1, 0]), "finding": torch.tensor([1, 2])}
    _, binary_target = ClassifierTarget(2)(batch)
    _, three_target = ClassifierTarget(3)(batch)
    assert binary_target.tolist() == [1, 0] and three_target.tolist() == [1, 2]
    with pytest.raises(KeyError, match="finding"):
        ClassifierTarget(3)({"image": batch["image"], "label": batch["label"]})
    with pytest.raises(ValueError):
        ClassifierTarget(4)


def test_the_validation_auc_of_a_binary_head_is_unchanged_and_a_three_class_head_is_scored_on_covid() -> None:
    generator = torch.Generator().manual_seed(0)
    labels = torch.tensor([0, 1] * 20)
    onehot = torch.nn.functional.one_hot(labels, 2).float()
    binary = torch.softmax(torch.randn(40, 2, generator=generator) + labels[:, None] * torch.tensor([0.0, 1.0]), dim=1)
    output = [{"pred": p, "label": y} for p, y in zip(binary, onehot)]
    preds, targets = covid_score_and_label_on_cpu(output)
    covid_only = np.asarray(compute_roc_auc(torch.stack(preds), torch.stack(targets)))
    assert covid_only == pytest.approx(np.asarray(compute_roc_auc(binary, onehot, average="macro")))
    three = torch.softmax(torch.randn(40, 3, generator=generator), dim=1)
    preds, _ = covid_score_and_label_on_cpu([{"pred": p, "label": y} for p, y in zip(three, onehot)])
    assert torch.equal(torch.stack(preds)[:, 0], three[:, POSITIVE_CLASS])


def test_weights_of_a_three_class_head_loaded_into_a_binary_network_name_the_setting(tmp_path: Path) -> None:
    three = CovidClassifier(num_classes=3, hidden_dim=16, embedding_dim=8)
    torch.save(three.state_dict(), tmp_path / "classifier.pt")
    with pytest.raises(ValueError, match="3-class head .* set cls_num_classes to 3"):
        load_classifier_weights(CovidClassifier(num_classes=2, hidden_dim=16, embedding_dim=8), tmp_path / "classifier.pt")
    loaded = load_classifier_weights(CovidClassifier(num_classes=3, hidden_dim=16, embedding_dim=8), tmp_path / "classifier.pt")
    assert torch.equal(loaded.fc3.weight, three.fc3.weight)

"""Datalists come from the manifest by split, with mask sources kept apart."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from monai_app.data.manifest import image_datalist, read_manifest, segmentation_datalist


def test_shared_manifest_gives_train_pairs_from_both_mask_sources(shared_data: Path) -> None:
    train = segmentation_datalist(shared_data / "manifest.csv", shared_data, "train")
    assert {item["mask_source"] for item in train} == {"ieee8023_v7labs", "ieee8023_lungvae"}
    assert all(Path(item["image"]).is_file() and Path(item["label"]).is_file() for item in train)


def test_test_split_can_be_restricted_to_human_reviewed_masks(shared_data: Path) -> None:
    test = segmentation_datalist(
        shared_data / "manifest.csv", shared_data, "test", ["ieee8023_v7labs"]
    )
    assert test and {item["mask_source"] for item in test} == {"ieee8023_v7labs"}


def test_no_patient_appears_in_two_splits(shared_data: Path) -> None:
    patients = {
        split: {i["patient_id"] for i in segmentation_datalist(shared_data / "manifest.csv", shared_data, split)}
        for split in ("train", "val", "test")
    }
    assert not patients["train"] & patients["test"]
    assert not patients["train"] & patients["val"]
    assert not patients["val"] & patients["test"]


def _write_manifest(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_manifest_without_a_required_column_is_rejected(tmp_path: Path) -> None:
    path = _write_manifest(tmp_path / "m.csv", ["image_path", "patient_id", "label", "split"], [])
    with pytest.raises(ValueError, match="mask_path"):
        read_manifest(path)


def test_unknown_split_value_is_rejected(tmp_path: Path) -> None:
    header = ["image_path", "patient_id", "label", "mask_path", "split"]
    path = _write_manifest(tmp_path / "m.csv", header, [["a.png", "p", "covid", "", "holdout"]])
    with pytest.raises(ValueError, match="holdout"):
        read_manifest(path)


def test_split_without_masks_is_an_error(tmp_path: Path) -> None:
    header = ["image_path", "patient_id", "label", "mask_path", "split"]
    path = _write_manifest(tmp_path / "m.csv", header, [["a.png", "p", "covid", "", "test"]])
    with pytest.raises(ValueError, match="no 'test' rows"):
        segmentation_datalist(path, tmp_path, "test")


def test_image_datalist_lists_image_files_of_a_folder_in_order(tmp_path: Path) -> None:
    for name in ("b.dcm", "a.png", "manifest.csv", "IM0001"):
        (tmp_path / name).write_bytes(b"")
    names = [Path(i["image"]).name for i in image_datalist([tmp_path])]
    assert names == ["IM0001", "a.png", "b.dcm"]

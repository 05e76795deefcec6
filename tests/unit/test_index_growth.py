"""The index grown from the node's traffic: pending priors, rebuilds once delivered, atomic switch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset

from dicom_node.analyse.index_growth import GrownIndex, index_salt, prior_from_header
from dicom_node.errors import ConfigError
from monai_app.retrieval.index import ReferenceItem, SimilarityIndex

DIM = 8
WEIGHTS = "ab" * 32


def _base_index(directory: Path, n: int = 5) -> Path:
    rng = np.random.default_rng(0)
    items = [ReferenceItem(f"1.{i}", f"1.{i}.1", f"1.{i}.1.1", "1.2.840.10008.5.1.4.1.1.7", "covid", "public", "k")
             for i in range(n)]
    SimilarityIndex.build(rng.normal(size=(n, DIM)).astype(np.float32), items).save(directory)
    return directory


def _header(n: int, patient_id: str = "PAT-0042") -> Dataset:
    header = Dataset()
    header.StudyInstanceUID, header.SeriesInstanceUID = f"2.{n}", f"2.{n}.1"
    header.SOPInstanceUID, header.SOPClassUID = f"2.{n}.1.1", "1.2.840.10008.5.1.4.1.1.1.1"
    header.PatientID, header.PatientName, header.StudyDate = patient_id, "DOE^JANE", "20261130"
    return header


def _prior(n: int):
    return prior_from_header(_header(n), np.full(DIM, float(n + 1), np.float32), "secret", "node:CXR_AI")


def test_a_prior_keeps_uids_date_and_a_salted_key_never_the_patient_id() -> None:
    prior = _prior(1)
    assert (prior.item.study_instance_uid, prior.item.sop_instance_uid, prior.item.study_date) == (
        "2.1", "2.1.1.1", "20261130")
    assert prior.item.label == "unknown" and prior.item.source == "node:CXR_AI"
    assert "PAT-0042" not in repr(prior.item) and "DOE" not in repr(prior.item)
    other_salt = prior_from_header(_header(1), prior.embedding, "other", "node:CXR_AI")
    assert other_salt.item.patient_key != prior.item.patient_key


def test_only_delivered_priors_enter_and_each_rebuild_is_a_new_current_version(tmp_path: Path) -> None:
    base = _base_index(tmp_path / "base")
    grown = GrownIndex(tmp_path / "grown", base, WEIGHTS, fsync=False)
    assert grown.current() == base
    for n in (1, 2):
        grown.add_pending(_prior(n))
    delivered = {"2.1.1.1"}

    first = grown.rebuild(lambda uid: uid in delivered)

    assert first is not None and grown.current() == first.resolve()
    index = SimilarityIndex.load(grown.current())
    assert len(index.items) == 6 and index.items[-1].sop_instance_uid == "2.1.1.1"
    assert [p.item.sop_instance_uid for p in grown.pending()] == ["2.2.1.1"], "undelivered priors wait"
    assert grown.rebuild(lambda uid: uid in delivered) is None, "nothing new: no rebuild"
    delivered.add("2.2.1.1")
    second = grown.rebuild(lambda uid: uid in delivered)
    assert second is not None and len(SimilarityIndex.load(grown.current()).items) == 7
    grown.add_pending(_prior(1))  # the same image analysed again: updated in place, not twice
    delivered.add("2.1.1.1")
    third = grown.rebuild(lambda uid: uid in delivered)
    assert third is not None and len(SimilarityIndex.load(third).items) == 7
    assert sorted(p.name for p in grown.versions_dir.iterdir()) == ["2", "3"], "old versions pruned"
    nearest = SimilarityIndex.load(third).query(np.full(DIM, 2.0), 1)[0]
    assert nearest.item.sop_instance_uid == "2.1.1.1" and nearest.distance == pytest.approx(0, abs=1e-3)


def test_other_weights_grow_their_own_index_from_the_base(tmp_path: Path) -> None:
    base = _base_index(tmp_path / "base")
    grown = GrownIndex(tmp_path / "grown", base, WEIGHTS, fsync=False)
    grown.add_pending(_prior(1))
    assert grown.rebuild(lambda _: True) is not None
    retrained = GrownIndex(tmp_path / "grown", base, "cd" * 32, fsync=False)
    assert retrained.current() == base and retrained.pending() == []


def test_growth_needs_a_salt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CXR_INDEX_SALT", raising=False)
    with pytest.raises(ConfigError, match="CXR_INDEX_SALT"):
        index_salt()
    monkeypatch.setenv("CXR_INDEX_SALT", "s3cret")
    assert index_salt() == "s3cret"

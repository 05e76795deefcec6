"""``cxr-node pacs-index`` against a real Orthanc: the index of the PACS's frontal chest studies, resumable and extendable."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dicom_node.analyse.worker import similar_studies
from dicom_node.pacs.prior_index import BUILD_FILE, EMBEDDINGS_FILE
from dicom_node.report.sr import KnownLabel
from monai_app.retrieval.index import SimilarityIndex, pseudonymous_patient_key
from testkit.pacs import CALLING_AE, DATE_FROM, DATE_TO, LoadedPacs, make_study
from testkit.shared_data import REPO_ROOT

SALT = "test-salt"
SITE = "TESTSITE"


def pacs_index(pacs: LoadedPacs, index_dir: Path, *extra: str) -> subprocess.Popen[str]:
    """``python -m dicom_node pacs-index`` on the test PACS (C-GET), started, not waited for."""
    return subprocess.Popen(
        [sys.executable, "-m", "dicom_node", "pacs-index", "--pacs", pacs.address, "--calling-ae", CALLING_AE,
         "--from", DATE_FROM, "--to", DATE_TO, "--labels", str(pacs.labels_csv), "--site", SITE,
         "--index-dir", str(index_dir), "--device", "cpu", "--salt", SALT, *extra],
        cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )


def cached(embeddings: Path) -> list[Path]:
    """The embedding cache's records (not its temp files, which pathlib's glob also matches)."""
    return [p for p in embeddings.glob("*.json") if not p.name.startswith(".")]


def run_to_end(process: subprocess.Popen[str]) -> tuple[dict, str]:
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]
    return json.loads(out), err


@pytest.fixture(scope="module")
def built(loaded_pacs: LoadedPacs, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, str]:
    """One uninterrupted build of the index from the test PACS."""
    index_dir = tmp_path_factory.mktemp("pacs_index") / "index"
    summary, log = run_to_end(pacs_index(loaded_pacs, index_dir))
    return index_dir, summary, log


def test_the_index_holds_exactly_the_frontal_chest_studies_with_their_pacs_uids_dates_and_labels(
    loaded_pacs: LoadedPacs, built: tuple[Path, dict, str]
) -> None:
    index_dir, summary, _ = built
    index = SimilarityIndex.load(index_dir)
    by_sop = {s.sop_instance_uid: s for s in loaded_pacs.studies}
    assert sorted(i.sop_instance_uid for i in index.items) == sorted(s.sop_instance_uid for s in loaded_pacs.wanted)
    for item in index.items:
        study = by_sop[item.sop_instance_uid]
        assert (item.study_instance_uid, item.series_instance_uid) == (study.study_instance_uid, study.series_instance_uid)
        assert item.study_date == study.study_date and item.source == SITE
        assert item.label == loaded_pacs.expected_label(study)
        assert item.patient_key == pseudonymous_patient_key(study.patient_id, SALT)
    assert {i.label for i in index.items} == {"covid", "non_covid", "unknown"}
    assert summary["counts"]["found"] == len(loaded_pacs.wanted) == summary["counts"]["embedded"]
    assert summary["weights_sha256"] and json.loads((index_dir / BUILD_FILE).read_text()) == summary
    assert np.load(index_dir / EMBEDDINGS_FILE).shape == (len(index.items), index.dimension)


def test_the_index_table_and_log_hold_no_patient_id_name_or_accession(
    loaded_pacs: LoadedPacs, built: tuple[Path, dict, str]
) -> None:
    index_dir, _, log = built
    with (index_dir / "items.csv").open(newline="") as handle:
        header = next(csv.reader(handle))
    assert header == ["study_instance_uid", "series_instance_uid", "sop_instance_uid", "sop_class_uid", "label",
                      "source", "patient_key", "study_date"]
    written = "".join((index_dir / name).read_text() for name in ("items.csv", BUILD_FILE)) + log
    for study in loaded_pacs.studies:
        assert study.patient_id not in written and study.accession_number not in written
    assert "Test^" not in written and "19600101" not in written
    assert "retrieve+embed [" in log, "a progress bar on stderr"


def test_an_indexed_image_queried_as_the_node_does_is_its_own_nearest_neighbour(
    loaded_pacs: LoadedPacs, shared_data: Path, built: tuple[Path, dict, str], tmp_path: Path
) -> None:
    from monai_app.inference import BundleAnalyser

    index_dir, _, _ = built
    analyser = BundleAnalyser(REPO_ROOT / "bundle", "cpu", load_index=False)
    analyser.index = SimilarityIndex.load(index_dir)
    unlabelled = next(s for s in loaded_pacs.wanted if loaded_pacs.expected_label(s) == "unknown")
    for study in (loaded_pacs.wanted[0], unlabelled):
        path = tmp_path / f"{study.sop_instance_uid}.dcm"
        make_study(shared_data, study).save_as(path, enforce_file_format=True)
        [prediction] = analyser.predict([analyser.prepare(path)])
        found = similar_studies(analyser.similar(prediction.embedding, 4))
        assert found[0].sop_instance_uid == study.sop_instance_uid and found[0].distance == pytest.approx(0.0, abs=1e-3)
        assert found[0].study_date == study.study_date
    assert found[0].label is KnownLabel.UNKNOWN
    assert found[0].summary_line(1).startswith("1. Similar prior, no known label; similarity 1.00")


def test_an_interrupted_build_run_again_ends_with_the_same_index(
    loaded_pacs: LoadedPacs, built: tuple[Path, dict, str], tmp_path: Path
) -> None:
    reference_dir = built[0]
    index_dir = tmp_path / "index"
    embeddings = tmp_path / "index.work" / "embeddings"
    process = pacs_index(loaded_pacs, index_dir)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if embeddings.is_dir() and len(cached(embeddings)) >= 5:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=30)
    assert process.returncode == -signal.SIGKILL, "killed half-way"
    done = len(cached(embeddings))
    assert 5 <= done < len(loaded_pacs.wanted) and not (index_dir / "index.json").exists()

    summary, _ = run_to_end(pacs_index(loaded_pacs, index_dir))

    assert summary["counts"]["cached"] == done and summary["counts"]["embedded"] == len(loaded_pacs.wanted) - done
    assert (index_dir / "items.csv").read_text() == (reference_dir / "items.csv").read_text(), "same items, no duplicates"
    np.testing.assert_allclose(
        np.load(index_dir / EMBEDDINGS_FILE), np.load(reference_dir / EMBEDDINGS_FILE), rtol=1e-4, atol=1e-5
    )
    assert not list((tmp_path / "index.work" / "instances").glob("*.dcm")), "retrieved files go once embedded"


def test_extending_relabels_in_place_without_duplicates_or_embedding_again(
    loaded_pacs: LoadedPacs, built: tuple[Path, dict, str], tmp_path: Path
) -> None:
    index_dir = tmp_path / "index"
    shutil.copytree(built[0], index_dir)
    shutil.copytree(built[0].with_name("index.work"), tmp_path / "index.work")
    every_label = tmp_path / "labels.csv"
    with every_label.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["AccessionNumber", "label"])  # the DICOM keyword as a header; PCR words as values
        writer.writerows((s.accession_number, "positive" if s.label == "covid" else "negative") for s in loaded_pacs.wanted)

    summary, _ = run_to_end(pacs_index(loaded_pacs, index_dir, "--extend", "--labels", str(every_label)))

    index = SimilarityIndex.load(index_dir)
    by_sop = {s.sop_instance_uid: s for s in loaded_pacs.wanted}
    assert [i.sop_instance_uid for i in index.items] == [i.sop_instance_uid for i in SimilarityIndex.load(built[0]).items]
    assert all(item.label == by_sop[item.sop_instance_uid].label for item in index.items)
    assert summary["counts"]["embedded"] == 0 and summary["counts"]["cached"] == len(by_sop)
    assert summary["extended_from"] == len(by_sop)

"""``[index] grow``: a running node adds each study it delivered to its similar-study index,
rebuilt in the background, and a later study's report points at the earlier one."""

from __future__ import annotations

import csv
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from dicom_node.spool import JobState, Spool
from testkit.dicom_factory import make_dx, save
from testkit.orthanc import ORTHANC_AE_TITLE, OrthancServer
from testkit.peers import dcmtk, dcmtk_env, wait_for

KEY_OBJECT_SELECTION = "1.2.840.10008.5.1.4.1.1.88.59"


def _radiograph(shared_data: Path) -> np.ndarray:
    with (shared_data / "manifest.csv").open(newline="") as handle:
        row = next(r for r in csv.DictReader(handle) if r["split"] == "test" and r["view"] == "PA")
    image = Image.open(shared_data / row["image_path"]).convert("L")
    image.thumbnail((512, 512))
    return np.asarray(image)


def _dx(pixels: np.ndarray, target: Path, study: str, patient: str) -> Path:
    ds = make_dx(pixels, bits_stored=8)
    ds.BodyPartExamined, ds.ViewPosition, ds.StudyDate = "CHEST", "PA", "20261130"
    ds.StudyInstanceUID, ds.PatientID, ds.PatientName = study, patient, f"Grow^{patient}"
    return save(ds, target / f"{ds.SOPInstanceUID}.dcm")


def _send(port: int, path: Path) -> None:
    subprocess.run([dcmtk("dcmsend"), "-aec", "CXR_AI", "127.0.0.1", str(port), str(path)],
                   env=dcmtk_env(), check=True, capture_output=True, timeout=60)


def _images(ds: Dataset) -> list[str]:
    found = []
    for item in ds.get("ContentSequence", []):
        if item.get("ValueType") == "IMAGE":
            found.append(str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID))
        found += _images(item)
    return found


def _sent(spool: Spool, uid: str) -> bool:
    job = spool.find_job(uid)
    return job is not None and job.state is JobState.SENT


def test_a_delivered_study_becomes_a_similar_prior_of_the_next(
    start_node, tmp_path: Path, shared_data: Path, orthanc_pacs: OrthancServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CXR_INDEX_SALT", "test-salt")  # the node inherits it
    pixels = _radiograph(shared_data)
    study_a = generate_uid()
    first = _dx(pixels, tmp_path, study_a, "GROW-A")
    same_study = _dx(pixels, tmp_path, study_a, "GROW-A")  # a second image of study A, same pixels
    later = _dx(pixels, tmp_path, generate_uid(), "GROW-B")  # another patient's study, the same picture
    config = tmp_path / "node.toml"
    config.write_text(
        "[inference]\nsimilar_k = 3\ndevice = \"cpu\"\n"
        "[results]\nrelevance_map = false\nsummary_image = false\nkey_images = true\n"
        "[index]\ngrow = true\nrebuild_minutes = 0.02\n"
        f'[[destinations]]\nname = "pacs"\nae_title = "{ORTHANC_AE_TITLE}"\nhost = "127.0.0.1"\nport = {orthanc_pacs.dicom_port}\n'
    )
    spool = Spool(tmp_path / "spool")
    node = start_node(spool.root, "--analysis", "--config", str(config))
    first_uid, same_uid, later_uid = (str(pydicom.dcmread(p).SOPInstanceUID) for p in (first, same_study, later))

    _send(node.port, first)
    assert wait_for(lambda: _sent(spool, first_uid), 90), node.log()
    assert wait_for(lambda: "index: grown to" in node.log(), 30), node.log()
    for path in (same_study, later):
        _send(node.port, path)
    assert wait_for(lambda: _sent(spool, same_uid) and _sent(spool, later_uid), 90), node.log()

    later_job, same_job = spool.find_job(later_uid), spool.find_job(same_uid)
    assert later_job is not None and same_job is not None
    report = pydicom.dcmread(spool.result_path(later_job))
    similar = [uid for uid in _images(report) if uid != later_uid]  # the source is referenced too
    assert similar[0] in {first_uid, same_uid}, "study A (same picture) is the nearest prior"
    texts = [str(i.TextValue) for i in report.ContentSequence[-1].ContentSequence if i.get("ValueType") == "TEXT"]
    assert any(t.startswith("1. Similar prior, no known label") and "study date 2026-11-30" in t for t in texts), texts
    kos = next(pydicom.dcmread(spool.root / f) for f in later_job.companion_files if f.endswith(".ko.dcm"))
    assert kos.SOPClassUID == KEY_OBJECT_SELECTION and _images(kos)[0] == similar[0]
    own_study = pydicom.dcmread(spool.result_path(same_job))
    assert first_uid not in _images(own_study), "a study is never its own similar prior"

    grown = spool.root / "grown_index"
    items = next(grown.glob("*/current/items.csv")).read_text()
    assert first_uid in items and "GROW-A" not in items and "Grow^" not in items
    assert not list(grown.glob("*/pending/*.npz")) or wait_for(lambda: not list(grown.glob("*/pending/*.npz")), 30)
    node.terminate()
    restarted = start_node(spool.root, "--analysis", "--config", str(config))
    assert "index: growing from the node's delivered studies" in restarted.log()
    assert "versions/" in restarted.log().split("index: growing from the node's delivered studies")[1].splitlines()[0]

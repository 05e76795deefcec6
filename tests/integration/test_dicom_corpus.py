"""Tests for scripts.dicom_corpus: every generated file decodes and is what it claims."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import uid

from scripts import dicom_corpus as dc

# Missing shared data or DCMTK fails (conftest), as everywhere in this suite: CI must not skip.
pytestmark = pytest.mark.usefixtures("shared_data", "require_dcmtk")

LOSSLESS = {uid.ImplicitVRLittleEndian, uid.ExplicitVRLittleEndian,
            uid.DeflatedExplicitVRLittleEndian, uid.JPEGLossless, uid.JPEGLosslessSV1,
            uid.JPEGLSLossless, uid.JPEG2000Lossless, uid.RLELossless}


@pytest.fixture(scope="module")
def ts_runs(tmp_path_factory: pytest.TempPathFactory) -> list[list[dc.CorpusFile]]:
    """The transfer-syntax corpus, built twice in two folders (for determinism)."""
    return [dc.build_transfer_syntax_corpus(tmp_path_factory.mktemp(f"ts_{run}"))
            for run in "ab"]


@pytest.fixture(scope="module")
def corpora(
    tmp_path_factory: pytest.TempPathFactory, ts_runs: list[list[dc.CorpusFile]]
) -> dict[str, list[Path]]:
    """Every corpus built twice: keys ``<name>_a`` and ``<name>_b``."""
    built = {f"ts_{run}": [f.path for f in files] for run, files in zip("ab", ts_runs)}
    for run in "ab":
        root = tmp_path_factory.mktemp(f"images_{run}")
        built[f"small_{run}"] = dc.build_small_corpus(root / "small", 5)
        built[f"cxr_{run}"] = dc.build_cxr_sized_corpus(root / "cxr", 3, real_every=3)
    return built


def test_transfer_syntax_corpus_covers_every_sop_class_and_syntax(
    ts_runs: list[list[dc.CorpusFile]],
) -> None:
    files = ts_runs[0]
    expected = {(str(s), str(t)) for s in dc.SOP_CLASSES for t in dc.TRANSFER_SYNTAXES}
    assert {(f.sop_class_uid, f.transfer_syntax_uid) for f in files} == expected
    assert len(files) == len(expected) == 36
    reference = {}  # SOP class -> pixels of the explicit VR LE file
    for f in files:
        assert f.path.stat().st_size < 1_000_000
        ds = pydicom.dcmread(f.path)
        assert ds.file_meta.TransferSyntaxUID == f.transfer_syntax_uid
        assert ds.SOPClassUID == ds.file_meta.MediaStorageSOPClassUID == f.sop_class_uid
        assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
        is_dx = f.sop_class_uid != dc.CR_IMAGE_STORAGE
        assert ds.Modality == ("DX" if is_dx else "CR")
        if is_dx:
            presentation = f.sop_class_uid == dc.DX_FOR_PRESENTATION
            assert ds.PresentationIntentType == (
                "FOR PRESENTATION" if presentation else "FOR PROCESSING")
        assert ds.pixel_array.shape == (440, 440)
        if f.transfer_syntax_uid == uid.ExplicitVRLittleEndian:
            reference[f.sop_class_uid] = ds.pixel_array
    for f in files:
        pixels = pydicom.dcmread(f.path).pixel_array.astype(np.int32)
        diff = np.abs(pixels - reference[f.sop_class_uid]).max()
        if f.transfer_syntax_uid in LOSSLESS:
            assert diff == 0, f.description
        elif f.transfer_syntax_uid == uid.JPEGLSNearLossless:
            assert diff <= 2, f.description


def test_uids_are_unique_across_all_corpora(corpora: dict[str, list[Path]]) -> None:
    paths = [p for key, ps in corpora.items() if key.endswith("_a") for p in ps]
    sop_uids = [pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in paths]
    assert len(sop_uids) == len(set(sop_uids)) == 36 + 5 + 3


def test_corpora_are_byte_identical_across_runs(corpora: dict[str, list[Path]]) -> None:
    for name in ("ts", "small", "cxr"):
        first, second = corpora[f"{name}_a"], corpora[f"{name}_b"]
        assert [p.name for p in first] == [p.name for p in second]
        for a, b in zip(first, second):
            assert a.read_bytes() == b.read_bytes(), a.name


@pytest.mark.parametrize("name, shape", [("small", dc.SMALL_SHAPE), ("cxr", dc.CXR_SHAPE)])
def test_image_corpora_are_plausible_dx(
    corpora: dict[str, list[Path]], name: str, shape: tuple[int, int]
) -> None:
    patients_by_study: dict[str, set[str]] = defaultdict(set)
    for i, path in enumerate(corpora[f"{name}_a"]):
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == uid.ExplicitVRLittleEndian
        assert ds.SOPClassUID == dc.DX_FOR_PRESENTATION and ds.Modality == "DX"
        real = name == "cxr" and i % 3 == 2  # real_every=3: the third file is a real DICOM
        pixels = ds.pixel_array
        if not real:
            assert pixels.shape == shape and ds.BitsStored == 12
        assert pixels.shape[0] >= 1500 or name == "small"
        assert int(pixels.max()) < 2**ds.BitsStored and pixels.std() > 0
        patients_by_study[ds.StudyInstanceUID].add(ds.PatientID)
    assert all(len(ids) == 1 for ids in patients_by_study.values())
    assert len(patients_by_study) > 1  # two images per study by default

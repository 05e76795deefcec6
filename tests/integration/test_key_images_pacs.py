"""Issue #15: the similar studies the node reports are studies the PACS holds, and one C-GET away.

A small similar-study index is built with the bundle's ``build_index`` from DICOM priors that
are also stored in a real Orthanc. The node (``serve --analysis --bundle`` with that index)
analyses a new study and sends its results to Orthanc; the SR's similar-image references and
the Key Object Selection's references must then all be retrievable from Orthanc with C-GET,
and the KOS must be in Orthanc in the source's study.
"""

from __future__ import annotations

import csv
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import generate_uid

from dicom_node.pacs.peer import PacsPeer
from dicom_node.pacs.query import FoundInstance
from dicom_node.pacs.retrieve import InstanceFolder, Retriever
from testkit.bundle import build_similar_index
from testkit.dicom_factory import make_dx, save
from testkit.orthanc import ORTHANC_AE_TITLE, OrthancServer, c_get_instances, orthanc_binary
from testkit.peers import dcmtk, dcmtk_env, free_port
from testkit.sr import content_items

NODE_AE = "CXR_AI"
RETRIEVER_AE = "KOS_CHECK"  # the viewer side: a workstation that fetches what the KOS lists
MOVE_AE = "KOS_MOVE"  # its Storage SCP, where Orthanc C-MOVEs the images to
KEY_OBJECT_SELECTION = "1.2.840.10008.5.1.4.1.1.88.59"
SIMILAR_K = 3
TIMEOUT = 90  # seconds for the node's start and one CPU analysis on a loaded 2-core machine


def _chest_dx(shared_data: Path, row: dict[str, str], target: Path, study: str, patient: str) -> Path:
    """A 512-pixel DX For Presentation of a shared radiograph, in ``study`` of ``patient``."""
    image = Image.open(shared_data / row["image_path"]).convert("L")
    image.thumbnail((512, 512))
    ds = make_dx(np.asarray(image), bits_stored=8)
    ds.BodyPartExamined, ds.ViewPosition = "CHEST", "PA"
    ds.StudyInstanceUID, ds.PatientID, ds.PatientName = study, patient, f"Prior^{patient}"
    return save(ds, target / f"{ds.SOPInstanceUID}.dcm")


@pytest.fixture(scope="module")
def priors_and_source(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], Path, Path]:
    """Five DX priors (two in one study) with their index, and a new study to analyse."""
    target = tmp_path_factory.mktemp("priors")
    with (shared_data / "manifest.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    train = [r for r in rows if r["split"] == "train" and r["view"] == "PA"]
    chosen = [r for r in train if r["label"] == "covid"][:3] + [r for r in train if r["label"] == "non_covid"][:2]
    studies = [generate_uid() for _ in range(4)]
    study_of = [studies[0], studies[0], studies[1], studies[2], studies[3]]  # two priors share a study
    priors = [_chest_dx(shared_data, row, target, study, f"PRIOR{study[-4:]}") for row, study in zip(chosen, study_of)]
    index = build_similar_index([(p, r["label"]) for p, r in zip(priors, chosen)], target / "build")
    test_row = next(r for r in rows if r["split"] == "test" and r["label"] == "covid" and r["view"] == "PA")
    source = _chest_dx(shared_data, test_row, target, generate_uid(), "NEWPATIENT")
    return priors, index, source


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[OrthancServer]:
    if orthanc_binary() is None:
        pytest.fail("Orthanc is not installed: run scripts/setup.sh")
    server = OrthancServer(
        tmp_path / "orthanc", calling_ae_titles=(NODE_AE, RETRIEVER_AE), move_destinations={MOVE_AE: free_port()}
    ).start()
    yield server
    server.stop()


def _instances(orthanc: OrthancServer, query: dict[str, str]) -> list[pydicom.Dataset]:
    found: list[pydicom.Dataset] = []
    for orthanc_id in orthanc.post("/tools/find", {"Level": "Instance", "Query": query}):
        url = f"http://127.0.0.1:{orthanc.http_port}/instances/{orthanc_id}/file"
        with urllib.request.urlopen(url, timeout=10) as response:
            found.append(pydicom.dcmread(pydicom.filebase.DicomBytesIO(response.read())))
    return found


def _evidence(ds: pydicom.Dataset, keyword: str) -> dict[str, tuple[str, str, str, str]]:
    """SOP Instance UID -> (study, series, instance, class) of an evidence sequence."""
    return {
        str(i.ReferencedSOPInstanceUID): (str(s.StudyInstanceUID), str(r.SeriesInstanceUID),
                                          str(i.ReferencedSOPInstanceUID), str(i.ReferencedSOPClassUID))
        for s in ds.get(keyword, []) for r in s.ReferencedSeriesSequence for i in r.ReferencedSOPSequence
    }


def test_similar_images_in_the_report_and_the_kos_are_retrievable_from_the_pacs(
    start_node, tmp_path: Path, orthanc: OrthancServer, priors_and_source: tuple[list[Path], Path, Path]
) -> None:
    priors, index, source_path = priors_and_source
    for prior in priors:  # the PACS already holds the studies the index was built from
        orthanc.upload(prior.read_bytes())
    config = tmp_path / "node.toml"
    config.write_text(  # the site's own index beside the shipped bundle, as a hospital deploys one
        f'[inference]\ndevice = "cpu"\nsimilar_k = {SIMILAR_K}\n[index]\ndirectory = "{index}"\n'
        f'[[destinations]]\nname = "pacs"\nae_title = "{ORTHANC_AE_TITLE}"\nhost = "127.0.0.1"\nport = {orthanc.dicom_port}\n'
    )
    node = start_node(tmp_path / "spool", "--analysis", "--config", str(config))
    sent = subprocess.run(
        [dcmtk("storescu"), "-aet", "PORTABLE_DX1", "-aec", NODE_AE, "127.0.0.1", str(node.port), str(source_path)],
        capture_output=True, text=True, env=dcmtk_env(), timeout=60,
    )
    assert sent.returncode == 0, sent.stderr
    source = pydicom.dcmread(source_path, stop_before_pixels=True)
    study = {"StudyInstanceUID": str(source.StudyInstanceUID)}
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline and not (_instances(orthanc, {**study, "Modality": "SR"})
                                               and _instances(orthanc, {**study, "Modality": "KO"})):
        time.sleep(0.5)
    [report] = _instances(orthanc, {**study, "Modality": "SR"}) or pytest.fail(f"no report:\n{node.log()[-4000:]}")
    [kos] = _instances(orthanc, {**study, "Modality": "KO"}) or pytest.fail(f"no KOS:\n{node.log()[-4000:]}")

    # The KOS: in the source's study and patient, its own series, the report's similar images in order.
    assert kos.SOPClassUID == KEY_OBJECT_SELECTION and kos.SeriesNumber == 9003
    assert (kos.PatientID, kos.SeriesInstanceUID != report.SeriesInstanceUID) == ("NEWPATIENT", True)
    similar_in_report = [
        str(ref.ReferencedSOPInstanceUID) for item in content_items(report)
        if item.get("ValueType") == "IMAGE" and item.ConceptNameCodeSequence[0].CodeMeaning == "Similar image"
        for ref in item.ReferencedSOPSequence
    ]
    selected = [str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
                for item in kos.ContentSequence if item.ValueType == "IMAGE"]
    assert len(similar_in_report) == SIMILAR_K and selected == similar_in_report
    prior_uids = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in priors}
    assert set(selected) <= prior_uids and str(source.SOPInstanceUID) not in selected

    # Every reference resolves to the PACS's own study, series and instance, and comes back with C-GET.
    from_kos = _evidence(kos, "CurrentRequestedProcedureEvidenceSequence")
    from_report = _evidence(report, "PertinentOtherEvidenceSequence")
    assert set(from_kos) == set(selected) and from_kos == {uid: from_report[uid] for uid in selected}
    for uid, (study_uid, series_uid, _, sop_class) in from_kos.items():
        [held] = _instances(orthanc, {"SOPInstanceUID": uid})
        assert (held.StudyInstanceUID, held.SeriesInstanceUID, held.SOPClassUID) == (study_uid, series_uid, sop_class)
    assert c_get_instances(orthanc, RETRIEVER_AE, list(from_kos.values())) == set(selected)
    assert c_get_instances(orthanc, RETRIEVER_AE, [from_report[uid] for uid in similar_in_report]) == set(similar_in_report)
    # ... and with C-MOVE, for a viewer whose PACS pushes (Orthanc to a Storage SCP of its own).
    folder = InstanceFolder(tmp_path / "moved", fsync=False)
    mover = Retriever(
        PacsPeer(ORTHANC_AE_TITLE, "127.0.0.1", orthanc.dicom_port), folder, RETRIEVER_AE, "move",
        move_ae_title=MOVE_AE, move_port=orthanc.move_destinations[MOVE_AE], move_bind="127.0.0.1",
    )
    wanted = [FoundInstance(study, series, uid, sop_class, "", "", "") for uid, (study, series, _, sop_class) in from_kos.items()]
    counts = mover.retrieve(wanted)
    assert counts.failed == [] and {uid for uid in selected if folder.has(uid)} == set(selected)

"""End to end with real peers on loopback: DCMTK storescu -> the node (shipped bundle) -> Orthanc.

The node runs as a subprocess with ``--analysis`` and the repository's bundle; Orthanc is the
PACS; the reports are checked as Orthanc stores them, and with dciodvfy.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import generate_uid

from dicom_node.spool import JobState, Spool
from testkit.dicom_factory import make_dx, save
from testkit.orthanc import ORTHANC_AE_TITLE, OrthancServer, orthanc_binary
from testkit.peers import dcmtk, dcmtk_env, echo_ok, free_port
from testkit.shared_data import REPO_ROOT
from testkit.sr import content_items, referenced_images, reports_in_orthanc

NODE_AE = "CXR_AI"
COVID_CODE = "840539006"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
REPORT_TIMEOUT = 180  # seconds for a handful of CPU analyses on a loaded 2-core CI machine


def _frontal_dx_from_shared_image(shared_data: Path, label: str, target: Path) -> Path:
    """A DX For Presentation made from the first test-split image with ``label`` (1024 px, 8 bit)."""
    with (shared_data / "manifest.csv").open(newline="") as handle:
        row = next(r for r in csv.DictReader(handle) if r["split"] == "test" and r["label"] == label)
    image = Image.open(shared_data / row["image_path"]).convert("L")
    image.thumbnail((1024, 1024))
    ds = make_dx(np.asarray(image), bits_stored=8)
    ds.BodyPartExamined, ds.ViewPosition = "CHEST", "PA"
    return save(ds, target / f"{label}.dcm")


def _new_instance(source: Path, target: Path, **changes: str) -> Path:
    """A copy of ``source`` as a new instance in a new series, with attributes ``changes``d."""
    ds = pydicom.dcmread(source, force=True)
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    ds.SOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    if getattr(ds, "file_meta", None) is not None and "TransferSyntaxUID" in ds.file_meta:
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    path = target / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def frontal_chests(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Real frontal chest radiographs: a CR from the shared DICOM files and two DX from shared images."""
    target = tmp_path_factory.mktemp("frontal")
    return [
        shared_data / "dicom" / "fo-dicom" / "CR-MONO1-10-chest.dcm",
        _frontal_dx_from_shared_image(shared_data, "covid", target),
        _frontal_dx_from_shared_image(shared_data, "non_covid", target),
    ]


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[OrthancServer]:
    if orthanc_binary() is None:
        pytest.fail("Orthanc is not installed: run scripts/setup.sh")
    server = OrthancServer(tmp_path / "orthanc", calling_ae_titles=(NODE_AE,))
    yield server
    server.stop()


def _config(tmp_path: Path, orthanc: OrthancServer | None) -> Path:
    text = "[delivery]\nretry_initial_seconds = 1\nretry_max_seconds = 2\n[inference]\ndevice = \"cpu\"\n"
    if orthanc is not None:
        text += (
            f'[[destinations]]\nname = "pacs"\nae_title = "{ORTHANC_AE_TITLE}"\n'
            f'host = "127.0.0.1"\nport = {orthanc.dicom_port}\n'
        )
    path = tmp_path / "node.toml"
    path.write_text(text)
    return path


def _send(port: int, files: list[Path], tool: str = "storescu") -> None:
    """Send with DCMTK ``tool``: storescu, or dcmsend, which proposes each file's own transfer
    syntax (compressed files travel as they are)."""
    options = ["-dn"] if tool == "dcmsend" else []
    result = subprocess.run(
        [dcmtk(tool), *options, "-aet", "PORTABLE_DX1", "-aec", NODE_AE, "127.0.0.1", str(port), *map(str, files)],
        capture_output=True, text=True, env=dcmtk_env(), timeout=120,
    )
    assert result.returncode == 0, result.stderr


def _wait_for(predicate: Callable[[], bool], timeout: float, what: str, log: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}\n{log()[-6000:]}")


def _reports_in(orthanc: OrthancServer, sources: set[str]) -> dict[str, pydicom.Dataset]:
    """The SRs stored in Orthanc, by the source image (one of ``sources``) each reports on."""
    return {source: reports[-1] for source, reports in reports_in_orthanc(orthanc, sources).items()}


def _sop_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True, force=True).SOPInstanceUID)


def test_chest_radiographs_come_back_to_orthanc_as_valid_reports(
    start_node, tmp_path: Path, orthanc: OrthancServer, frontal_chests: list[Path]
) -> None:
    orthanc.start()
    node = start_node(tmp_path / "spool", "--analysis", "--config", str(_config(tmp_path, orthanc)))
    assert "model: name=" in node.log() and "sha256=" in node.log()
    _send(node.port, frontal_chests)
    sources = {_sop_uid(p) for p in frontal_chests}
    _wait_for(lambda: sources <= set(_reports_in(orthanc, sources)), REPORT_TIMEOUT, "one SR per image in Orthanc", node.log)

    for source_uid, report in _reports_in(orthanc, sources).items():
        source = pydicom.dcmread(next(p for p in frontal_chests if _sop_uid(p) == source_uid), stop_before_pixels=True, force=True)
        assert report.StudyInstanceUID == source.StudyInstanceUID and report.SeriesInstanceUID != source.SeriesInstanceUID
        assert report.get("PatientID", "") == source.get("PatientID", "") and report.VerificationFlag == "UNVERIFIED"
        items = list(content_items(report))
        codes = {str(i.ConceptCodeSequence[0].CodeValue) for i in items if "ConceptCodeSequence" in i}
        assert COVID_CODE in codes, "the finding COVID-19 is not in the report"
        probabilities = [float(i.MeasuredValueSequence[0].NumericValue) for i in items if "MeasuredValueSequence" in i
                         and i.ConceptNameCodeSequence[0].CodeMeaning == "Probability"]
        assert len(probabilities) == 1 and 0.0 <= probabilities[0] <= 100.0  # percent
        assert len(referenced_images(report)) == 1 + 4, "the source image and four similar studies"
        similar = [i for i in items if i.get("ValueType") == "TEXT" and i.ConceptNameCodeSequence[0].CodeMeaning == "Similar case"]
        assert len(similar) == 4, "four similar studies (k = 4) expected"
        regions = [i for i in items if i.get("ValueType") == "SCOORD"]
        assert len(regions) == 1 and regions[0].GraphicType == "POLYLINE", "the finding's image region"
        purposes = [e.PurposeOfReferenceCodeSequence[0].CodeMeaning for e in report.ContributingEquipmentSequence]
        assert "Processing Algorithm" in purposes, purposes
        path = tmp_path / f"{source_uid}.sr.dcm"
        report.save_as(path, enforce_file_format=True)
        check = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
        errors = [line for line in (check.stdout + check.stderr).splitlines() if line.startswith("Error")]
        assert errors == [], errors
        # The summary image: in the source's study, sent with the report, listed as its evidence.
        [summary_id] = orthanc.post("/tools/find", {"Level": "Instance", "Query": {
            "StudyInstanceUID": source.StudyInstanceUID, "SOPClassUID": SECONDARY_CAPTURE}})
        summary = orthanc.get(f"/instances/{summary_id}/simplified-tags")
        assert summary["BurnedInAnnotation"] == "YES" and summary["SeriesInstanceUID"] != report.SeriesInstanceUID
        evidence = {str(i.ReferencedSOPInstanceUID) for s in report.CurrentRequestedProcedureEvidenceSequence
                    for r in s.ReferencedSeriesSequence for i in r.ReferencedSOPSequence}
        assert summary["SOPInstanceUID"] in evidence

    spool = Spool(tmp_path / "spool")
    _wait_for(lambda: spool.counts()["sent"] == len(frontal_chests), 30, "jobs marked sent", node.log)


def test_lateral_non_chest_and_undecodable_images_get_no_finding_and_the_node_goes_on(
    start_node, tmp_path: Path, shared_data: Path, frontal_chests: list[Path]
) -> None:
    dicom = shared_data / "dicom"
    odd = {
        "lateral view": _new_instance(frontal_chests[0], tmp_path, ViewPosition="LL"),
        "not a chest image": dicom / "dicom-test-files" / "RG2_JPLY.dcm",  # a hip
        "undecodable": dicom / "pylibjpeg-data" / "DX_chest_Canon_966.dcm",  # broken JPEG 2000 stream
    }
    node = start_node(tmp_path / "spool", "--analysis", "--config", str(_config(tmp_path, None)))
    _send(node.port, [*odd.values(), frontal_chests[1]], tool="dcmsend")
    spool = Spool(tmp_path / "spool")
    _wait_for(lambda: spool.counts()["not_analysed"] == 3 and spool.counts()["outbox"] == 1,
              REPORT_TIMEOUT, "three jobs not analysed and one report", node.log)
    for reason, path in odd.items():
        job = spool.find_job(_sop_uid(path))
        assert job is not None, reason
        assert job.state is JobState.NOT_ANALYSED and job.detail.startswith(reason), job.detail
    assert echo_ok(node.port), "the node must stay up"
    status = subprocess.run(
        [sys.executable, "-m", "dicom_node", "status", "--json", "--spool", str(spool.root)],
        capture_output=True, text=True, check=True,
    )
    summary = json.loads(status.stdout)
    assert summary["not_analysed"] == {reason: 1 for reason in odd}
    assert [item["destinations"] for item in summary["outbox"]] == [[]], "no destination: the report waits in the outbox"
    assert "PatientName" not in node.log() and "Test^Synthetic" not in node.log()


def test_kill_9_before_delivery_and_a_late_pacs_lose_nothing(
    start_node, tmp_path: Path, orthanc: OrthancServer, frontal_chests: list[Path]
) -> None:
    config = _config(tmp_path, orthanc)  # Orthanc is not started yet: the PACS is down
    node = start_node(tmp_path / "spool", "--analysis", "--config", str(config))
    _send(node.port, frontal_chests)
    node.kill9()  # right after the C-STOREs were answered: jobs received or in analysis
    counts = Spool(tmp_path / "spool").counts()
    assert counts["instances"] == len(frontal_chests) and counts["sent"] == 0

    restarted = start_node(tmp_path / "spool", "--analysis", "--config", str(config))
    spool = Spool(tmp_path / "spool")
    _wait_for(lambda: spool.counts()["outbox"] == len(frontal_chests), REPORT_TIMEOUT, "reports waiting", restarted.log)
    orthanc.start()
    sources = {_sop_uid(p) for p in frontal_chests}
    _wait_for(lambda: sources <= set(_reports_in(orthanc, sources)), 60, "reports in Orthanc after it came up", restarted.log)
    _wait_for(lambda: spool.counts()["sent"] == len(frontal_chests), 30, "jobs marked sent", restarted.log)
    assert len(orthanc.post("/tools/find", {"Level": "Instance", "Query": {"Modality": "SR"}})) == len(frontal_chests)


def test_reports_made_while_the_pacs_is_down_arrive_once_it_is_back(
    start_node, tmp_path: Path, orthanc: OrthancServer, frontal_chests: list[Path]
) -> None:
    orthanc.start()
    node = start_node(tmp_path / "spool", "--analysis", "--config", str(_config(tmp_path, orthanc)))
    first = frontal_chests[0]
    _send(node.port, [first])
    _wait_for(lambda: {_sop_uid(first)} <= set(_reports_in(orthanc, {_sop_uid(first)})), REPORT_TIMEOUT,
              "the first report", node.log)
    orthanc.stop()  # the PACS goes down while the node works
    later = [_new_instance(p, tmp_path) for p in frontal_chests[1:]]
    _send(node.port, later)
    _wait_for(lambda: node.log().count("delivered=False") >= len(later), REPORT_TIMEOUT, "failed attempts", node.log)
    orthanc.start()
    sources = {_sop_uid(p) for p in [first, *later]}
    _wait_for(lambda: sources <= set(_reports_in(orthanc, sources)), 60, "every report once the PACS is back", node.log)
    assert len(orthanc.post("/tools/find", {"Level": "Instance", "Query": {"Modality": "SR"}})) == len(sources)


def test_a_bundle_without_weights_stops_start_up_with_a_clear_message(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    (bundle / "models").mkdir(parents=True)
    (bundle / "configs").symlink_to(REPO_ROOT / "bundle" / "configs")
    result = subprocess.run(
        [sys.executable, "-m", "dicom_node", "serve", "--analysis", "--bundle", str(bundle), "--bind", "127.0.0.1",
         "--port", str(free_port()), "--spool", str(tmp_path / "spool")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert "cannot load the model bundle" in result.stderr and "lung_unet.pt" in result.stderr

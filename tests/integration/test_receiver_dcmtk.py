"""The node as a subprocess, judged by real DCMTK peers on loopback."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ImplicitVRLittleEndian

from dicom_node.spool import JobState, Spool
from testkit.peers import dcmtk, dcmtk_env, echo_ok, free_port, instance_dataset_bytes

RADIOGRAPHY_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.1",
    "1.2.840.10008.5.1.4.1.1.1.1",
    "1.2.840.10008.5.1.4.1.1.1.1.1",
}
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
ACCEPTED_SOP_CLASSES = RADIOGRAPHY_SOP_CLASSES | {SECONDARY_CAPTURE}


def _header(path: Path) -> pydicom.Dataset:
    return pydicom.dcmread(path, stop_before_pixels=True, force=True)


def _dcmsend(port: int, files: list[Path], *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [dcmtk("dcmsend"), "-v", "+f", "-nh", "-aet", "MODALITY", "-aec", "CXR_AI", *extra,
         "127.0.0.1", str(port), *map(str, files)],
        env=dcmtk_env(), capture_output=True, text=True, timeout=300,
    )


def test_echoscu_gets_success(start_node) -> None:
    node = start_node()
    result = subprocess.run(
        [dcmtk("echoscu"), "-v", "-aet", "MODALITY", "-aec", "CXR_AI", "127.0.0.1", str(node.port)],
        env=dcmtk_env(), capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "Received Echo Response (Success)" in result.stderr + result.stdout


def test_echo_to_a_wrong_called_ae_title_is_rejected(start_node) -> None:
    node = start_node()
    result = subprocess.run(
        [dcmtk("echoscu"), "-aet", "MODALITY", "-aec", "NOT_THE_NODE", "127.0.0.1", str(node.port)],
        env=dcmtk_env(), capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0
    assert "Called AE Title Not Recognized" in result.stderr + result.stdout


@pytest.fixture
def reference_storescp(tmp_path: Path):
    """DCMTK storescp in bit-preserving mode: it keeps the bytes exactly as they came off the wire.

    DCMTK re-encodes a file as it sends it (e.g. sequence lengths), so "stored exactly as
    sent" is judged against what this peer received from the same sender.
    """
    out = tmp_path / "reference"
    out.mkdir()
    port = free_port()
    process = subprocess.Popen(
        [dcmtk("storescp"), "+xa", "+B", "-od", str(out), "-aet", "CXR_AI", str(port)],
        env=dcmtk_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while not echo_ok(port) and time.monotonic() < deadline:
        time.sleep(0.1)
    yield port, out
    process.terminate()
    process.wait(timeout=10)


def test_every_shared_cr_dx_file_is_stored_exactly_as_sent(
    start_node, reference_storescp, shared_dicom_files: list[Path]
) -> None:
    """dcmsend proposes each file's own transfer syntax: compressed files travel as they are.

    The two files that no decoder can read are stored too: decoding is not the receiver's job.
    """
    candidates = [p for p in shared_dicom_files if str(_header(p).SOPClassUID) in ACCEPTED_SOP_CLASSES]
    assert len(candidates) >= 10
    node = start_node()
    reference_port, reference_dir = reference_storescp
    assert _dcmsend(node.port, candidates, "-dn").returncode == 0
    assert _dcmsend(reference_port, candidates, "-dn").returncode == 0
    for source in candidates:
        uid = str(_header(source).SOPInstanceUID)
        stored = node.spool / "instances" / f"{uid}.dcm"
        assert stored.is_file(), f"{source.name} not stored"
        (reference,) = reference_dir.glob(f"*{uid}*")
        assert instance_dataset_bytes(stored) == instance_dataset_bytes(reference), source.name
        # No transcoding: a compressed source arrives in its own transfer syntax.
        source_syntax = pydicom.dcmread(source, force=True).file_meta.get("TransferSyntaxUID", ImplicitVRLittleEndian)
        if source_syntax.is_compressed:
            assert pydicom.dcmread(stored, stop_before_pixels=True).file_meta.TransferSyntaxUID == source_syntax


def test_storescu_sends_an_uncompressed_chest_cr(start_node, shared_data: Path) -> None:
    source = shared_data / "dicom" / "fo-dicom" / "CR-MONO1-10-chest.dcm"
    node = start_node()
    result = subprocess.run(
        [dcmtk("storescu"), "-v", "-aet", "MODALITY", "-aec", "CXR_AI", "127.0.0.1", str(node.port), str(source)],
        env=dcmtk_env(), capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "Received Store Response (Success)" in result.stderr + result.stdout
    stored = node.spool / "instances" / f"{_header(source).SOPInstanceUID}.dcm"
    assert pydicom.dcmread(stored).PixelData == pydicom.dcmread(source, force=True).PixelData


def test_secondary_capture_is_accepted_and_analysed_only_as_a_radiograph(
    start_node, shared_data: Path, tmp_path: Path
) -> None:
    """A mixed send: a CR, the SIIM chest (SC, Modality CR) and an SC of another modality, in one association."""
    siim = next((shared_data / "dicom" / "torchxrayvision").glob("*.dcm"))
    assert _header(siim).SOPClassUID == SECONDARY_CAPTURE and _header(siim).Modality == "CR"
    other = pydicom.dcmread(siim)
    other.Modality = "OT"
    other.SOPInstanceUID = other.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    other_path = tmp_path / "sc_ot.dcm"
    other.save_as(other_path, enforce_file_format=True)
    cr = shared_data / "dicom" / "fo-dicom" / "CR-MONO1-10-chest.dcm"
    config = tmp_path / "node.toml"
    config.write_text('[inference]\ndevice = "cpu"\nsimilar_k = 0\n')
    node = start_node(tmp_path / "spool", "--analysis", "--config", str(config))
    output = _dcmsend(node.port, [cr, siim, other_path], "-dn").stderr
    assert "sent to the peer       : 3" in output and "with status SUCCESS  : 3" in output, output
    for source in (cr, siim, other_path):
        assert (node.spool / "instances" / f"{_header(source).SOPInstanceUID}.dcm").is_file(), source.name
    deadline = time.monotonic() + 180
    jobs: dict[str, int] = {}
    while time.monotonic() < deadline:
        status = subprocess.run(
            [sys.executable, "-m", "dicom_node", "status", "--json", "--spool", str(node.spool)],
            capture_output=True, text=True, timeout=60,
        )
        jobs = json.loads(status.stdout)["jobs"]
        if jobs["outbox"] + jobs["sent"] == 2 and jobs["not_analysed"] == 1:
            break
        time.sleep(0.5)
    assert jobs["outbox"] + jobs["sent"] == 2 and jobs["not_analysed"] == 1, (jobs, node.log()[-4000:])
    spool = Spool(node.spool)
    for source in (cr, siim):
        job = spool.find_job(str(_header(source).SOPInstanceUID))
        assert job is not None and job.state is JobState.OUTBOX, source.name
        assert pydicom.dcmread(spool.result_path(job)).Modality == "SR"
    job = spool.find_job(str(other.SOPInstanceUID))
    assert job is not None and job.state is JobState.NOT_ANALYSED
    assert job.detail == "not a radiograph: Secondary Capture of modality OT"


def test_sending_the_same_instance_twice_is_idempotent(start_node, shared_data: Path) -> None:
    source = shared_data / "dicom" / "dicom-test-files" / "RG3_RLE.dcm"
    node = start_node()
    for _ in range(2):
        assert _dcmsend(node.port, [source], "-dn").returncode == 0
    status = subprocess.run(
        [sys.executable, "-m", "dicom_node", "status", "--json", "--spool", str(node.spool)],
        capture_output=True, text=True, timeout=60,
    )
    assert json.loads(status.stdout)["jobs"] == {
        "received": 1, "processing": 0, "outbox": 0, "sent": 0, "failed": 0, "not_analysed": 0, "instances": 1,
    }
    assert "duplicate instance" in node.log()


def test_logs_name_the_instance_but_never_the_patient(start_node, shared_data: Path) -> None:
    source = shared_data / "dicom" / "pylibjpeg-data" / "DX_chest_Canon_966_fixed.dcm"
    header = _header(source)
    node = start_node()
    assert _dcmsend(node.port, [source], "-dn").returncode == 0
    node.terminate()
    log = node.log()
    assert f"sop_instance_uid={header.SOPInstanceUID} status=0x0000" in log
    assert "calling_ae=MODALITY" in log
    for identifier in (str(header.PatientID), str(header.PatientName), str(header.get("PatientBirthDate", ""))):
        if identifier:
            assert identifier not in log


@pytest.mark.parametrize("sop_class", sorted(RADIOGRAPHY_SOP_CLASSES))
def test_each_radiography_sop_class_is_accepted(start_node, shared_data: Path, tmp_path: Path, sop_class: str) -> None:
    ds = pydicom.dcmread(shared_data / "dicom" / "fo-dicom" / "CR-MONO1-10-chest.dcm", force=True)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[sop_class])
    ds.Modality = "CR" if sop_class.endswith("1.1.1") and not sop_class.endswith("1.1.1.1") else "DX"
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    path = tmp_path / "x.dcm"
    ds.save_as(path, enforce_file_format=True)
    node = start_node()
    assert _dcmsend(node.port, [path]).returncode == 0
    assert (node.spool / "instances" / f"{ds.SOPInstanceUID}.dcm").is_file()

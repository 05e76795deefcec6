"""Bad input, refused callers, a full disk, SIGTERM and kill -9: clear statuses, nothing lost."""

from __future__ import annotations

import os
import re
import subprocess
import time
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomFileLike
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    UID,
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    generate_uid,
)
from pynetdicom import AE

from dicom_node.receive import dimse_status
from testkit.peers import dcmtk, dcmtk_env, echo_ok, send_raw_c_store

CR = ComputedRadiographyImageStorage


def _chest_cr(shared_data: Path, sop_instance_uid: str | None = None) -> pydicom.Dataset:
    ds = pydicom.dcmread(shared_data / "dicom" / "fo-dicom" / "CR-MONO1-10-chest.dcm", force=True)
    ds.SOPInstanceUID = sop_instance_uid or generate_uid()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def _encoded(ds: pydicom.Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _send_raw_file(port: int, path: Path, sop_class: str = CR, calling_ae: str = "MODALITY") -> int | None:
    """Send a file's bytes after its meta as they are (no parsing): how a broken sender behaves."""
    status = send_raw_c_store(port, path, sop_class, ExplicitVRLittleEndian, calling_ae)
    return int(status.Status) if "Status" in status else None


def _raw_file(tmp_path: Path, dataset_bytes: bytes, sop_instance_uid: str, sop_class: str = CR) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = tmp_path / f"{sop_instance_uid}.raw.dcm"
    with open(path, "wb") as f:
        f.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(DicomFileLike(f), meta)
        f.write(dataset_bytes)
    return path


def _dataset_part(encoded: bytes) -> bytes:
    with BytesIO(encoded) as f:
        f.seek(132)
        pydicom.filereader._read_file_meta_info(f)
        return f.read()


def test_garbage_byte_stream_gets_cannot_understand_and_node_stays_up(start_node, tmp_path: Path) -> None:
    node = start_node()
    path = _raw_file(tmp_path, os.urandom(4096), "1.2.826.0.1.3680043.10.1")
    assert _send_raw_file(node.port, path) == dimse_status.CANNOT_UNDERSTAND
    assert echo_ok(node.port)
    assert list((node.spool / "instances").iterdir()) == []
    assert "status=0xC000" in node.log()


@pytest.mark.parametrize("keep_fraction", [0.5, 0.95])
def test_truncated_data_set_gets_cannot_understand(start_node, shared_data: Path, tmp_path: Path, keep_fraction: float) -> None:
    ds = _chest_cr(shared_data)
    dataset = _dataset_part(_encoded(ds))
    path = _raw_file(tmp_path, dataset[: int(len(dataset) * keep_fraction)], ds.SOPInstanceUID)
    node = start_node()
    assert _send_raw_file(node.port, path) == dimse_status.CANNOT_UNDERSTAND
    assert node.spool.joinpath("instances").is_dir() and not any(node.spool.joinpath("instances").iterdir())


def test_data_set_without_sop_instance_uid_is_refused(start_node, shared_data: Path, tmp_path: Path) -> None:
    ds = _chest_cr(shared_data)
    uid = ds.SOPInstanceUID
    del ds.SOPInstanceUID
    path = _raw_file(tmp_path, _dataset_part(_encoded(ds)), uid)
    node = start_node()
    assert _send_raw_file(node.port, path) == dimse_status.CANNOT_UNDERSTAND_MISSING_UIDS


def test_data_set_whose_uids_differ_from_the_request_is_refused(start_node, shared_data: Path, tmp_path: Path) -> None:
    ds = _chest_cr(shared_data)
    node = start_node()
    other_instance = _raw_file(tmp_path, _dataset_part(_encoded(ds)), generate_uid())
    assert _send_raw_file(node.port, other_instance) == dimse_status.CANNOT_UNDERSTAND_UID_MISMATCH
    other_class = _raw_file(tmp_path, _dataset_part(_encoded(ds)), ds.SOPInstanceUID, DigitalXRayImageStorageForPresentation)
    assert _send_raw_file(node.port, other_class, DigitalXRayImageStorageForPresentation) == (
        dimse_status.DATASET_DOES_NOT_MATCH_SOP_CLASS
    )


def _write_allow_list(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(body)
    return path


def _echo_output(port: int, calling_ae: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [dcmtk("echoscu"), "-aet", calling_ae, "-aec", "CXR_AI", "127.0.0.1", str(port)],
        env=dcmtk_env(), capture_output=True, text=True, timeout=60,
    )


def test_allow_list_rejects_unknown_calling_ae_titles(start_node, tmp_path: Path) -> None:
    config = _write_allow_list(tmp_path, '[[allowed_callers]]\nae_title = "PORTABLE_DX1"\n')
    node = start_node(None, "--config", str(config))
    assert _echo_output(node.port, "PORTABLE_DX1").returncode == 0
    refused = _echo_output(node.port, "INTRUDER")
    assert refused.returncode != 0
    assert "Calling AE Title Not Recognized" in refused.stderr + refused.stdout
    assert "association rejected: calling_ae=INTRUDER" in node.log()


def test_allow_list_rejects_a_known_ae_title_from_another_host(start_node, tmp_path: Path) -> None:
    config = _write_allow_list(
        tmp_path,
        '[[allowed_callers]]\nae_title = "FROM_HERE"\nhosts = ["127.0.0.1"]\n'
        '[[allowed_callers]]\nae_title = "ELSEWHERE"\nhosts = ["10.9.9.9"]\n',
    )
    node = start_node(None, "--config", str(config))
    assert _echo_output(node.port, "FROM_HERE").returncode == 0
    refused = _echo_output(node.port, "ELSEWHERE")
    assert refused.returncode != 0
    assert "Calling AE Title Not Recognized" in refused.stderr + refused.stdout
    assert not echo_ok(node.port, "UNLISTED")


@pytest.fixture
def small_tmpfs(tmp_path: Path):
    """A 3 MiB tmpfs: a disk that really fills up (needs root, as in CI)."""
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount_point)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_full_disk_gets_out_of_resources_and_node_recovers_when_space_is_back(
    start_node, shared_data: Path, small_tmpfs: Path
) -> None:
    node = start_node(small_tmpfs / "spool")
    statuses = []
    for _ in range(12):  # ~390 KB each: the 3 MiB file system fills after about 7
        ds = _chest_cr(shared_data)
        statuses.append(_send_pynetdicom(node.port, ds))
    assert dimse_status.SUCCESS in statuses
    assert statuses[-1] == dimse_status.OUT_OF_RESOURCES
    assert "spool is out of disk space" in node.log()
    assert not list((small_tmpfs / "spool" / "instances").glob(".tmp-*")), "half-written file left behind"
    stored = {p.stem for p in (small_tmpfs / "spool" / "instances").glob("*.dcm")}
    subprocess.run(["mount", "-o", "remount,size=20m", str(small_tmpfs)], check=True)
    ds = _chest_cr(shared_data)
    assert _send_pynetdicom(node.port, ds) == dimse_status.SUCCESS
    assert ds.SOPInstanceUID not in stored
    assert (small_tmpfs / "spool" / "instances" / f"{ds.SOPInstanceUID}.dcm").is_file()


def _send_pynetdicom(port: int, ds: pydicom.Dataset) -> int | None:
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(ds.SOPClassUID, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="CXR_AI")
    assert assoc.is_established
    status = assoc.send_c_store(ds)
    assoc.release()
    return int(status.Status) if "Status" in status else None


def test_sigterm_stops_the_node_cleanly(start_node) -> None:
    node = start_node()
    started = time.monotonic()
    assert node.terminate() == 0
    assert time.monotonic() - started < 15
    assert "received SIGTERM: shutting down" in node.log()
    assert "stopped" in node.log()


def test_sigterm_mid_batch_exits_cleanly_and_keeps_every_acknowledged_instance(
    start_node, shared_data: Path, tmp_path: Path
) -> None:
    node, acknowledged, _ = _interrupt_a_batch(start_node(), shared_data, tmp_path, lambda n: n.terminate() == 0)
    instances = node.spool / "instances"
    assert acknowledged
    for uid in acknowledged:
        assert pydicom.dcmread(instances / f"{uid}.dcm").PixelData
    assert not list(instances.glob(".tmp-*"))
    assert "stopped" in node.log()


def test_kill_9_mid_batch_loses_no_instance_that_was_answered_success(
    start_node, shared_data: Path, tmp_path: Path
) -> None:
    node, acknowledged, uids = _interrupt_a_batch(start_node(), shared_data, tmp_path, lambda n: n.kill9() is None)
    instances = node.spool / "instances"
    assert 5 <= len(acknowledged) < len(uids), "the kill should land mid-batch"

    restarted = start_node(node.spool)
    for uid in acknowledged:
        stored = instances / f"{uid}.dcm"
        assert stored.is_file(), f"instance {uid} was acknowledged but is missing"
        assert pydicom.dcmread(stored).PixelData == pydicom.dcmread(tmp_path / "batch" / "000.dcm").PixelData
    assert not list(instances.glob(".tmp-*")), "a temp file survived recovery"
    for stored in instances.glob("*.dcm"):  # nothing half-written under a final name
        assert pydicom.dcmread(stored).PixelData
    counts = restarted.spool.joinpath("jobs", "received")
    assert len(list(counts.glob("*.json"))) == len(list(instances.glob("*.dcm")))


def _interrupt_a_batch(node, shared_data: Path, tmp_path: Path, interrupt) -> tuple:
    """storescu sends 60 instances; once 10 are on disk, ``interrupt(node)`` must return True.

    Returns the node, the SOP Instance UIDs storescu saw answered Success, and all UIDs.
    """
    batch, uids = _write_batch(shared_data, tmp_path, 60)
    sender = _storescu(node.port, batch)
    _wait_for_files(node.spool / "instances", 10)
    assert interrupt(node)
    output, _ = sender.communicate(timeout=60)
    return node, _uids_answered_success(output, uids), uids


def _write_batch(shared_data: Path, tmp_path: Path, n: int) -> tuple[Path, list[str]]:
    batch = tmp_path / "batch"
    batch.mkdir()
    uids = []
    for i in range(n):
        ds = _chest_cr(shared_data)
        uids.append(ds.SOPInstanceUID)
        ds.save_as(batch / f"{i:03d}.dcm", enforce_file_format=True)
    return batch, uids


def _storescu(port: int, batch: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [dcmtk("storescu"), "-v", "-aet", "MODALITY", "-aec", "CXR_AI", "127.0.0.1", str(port),
         *sorted(map(str, batch.iterdir()))],
        env=dcmtk_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def _wait_for_files(directory: Path, n: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while len(list(directory.glob("*.dcm"))) < n and time.monotonic() < deadline:
        time.sleep(0.01)


def _uids_answered_success(storescu_output: str, uids: list[str]) -> list[str]:
    """Parse storescu -v: each 'Sending file: X' followed by 'Received Store Response (Success)'."""
    acknowledged, current = [], None
    for line in storescu_output.splitlines():
        sending = re.search(r"Sending file: (\S+)", line)
        if sending:
            current = Path(sending.group(1))
        elif "Received Store Response (Success)" in line and current is not None:
            acknowledged.append(uids[int(current.stem)])
            current = None
    return acknowledged

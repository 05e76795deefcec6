"""Issue 12, data-level defects at the network edge, against the node as a subprocess.

Patient data never reaches the log, log lines cannot be forged, Success only for data that
reads back, received data streams to disk under a size limit, and the 0xC001 comment says
whether a UID is missing or invalid. Senders are raw (pynetdicom sending the bytes as they
are, or a plain socket): a real modality's toolkit would refuse to send most of these.
"""

from __future__ import annotations

import os
import struct
import threading
import time
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomFileLike
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    UID,
    ComputedRadiographyImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)
from pynetdicom import AE, _config

from dicom_node.receive import dimse_status
from testkit.peers import send_raw_c_store

CR = ComputedRadiographyImageStorage
CANARY = "CANARY^ZQXJ"


def _chest(shared_data: Path, uid: str | None = None) -> Dataset:
    ds = pydicom.dcmread(shared_data / "dicom" / "fo-dicom" / "CR-MONO1-10-chest.dcm", force=True)
    ds.SOPInstanceUID = uid or generate_uid()
    ds.PatientName = CANARY
    return ds


def _dataset_bytes(ds: Dataset, syntax: UID) -> bytes:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buffer = BytesIO()
    ds.save_as(buffer, implicit_vr=syntax.is_implicit_VR, little_endian=True, enforce_file_format=True)
    buffer.seek(132)
    pydicom.filereader._read_file_meta_info(buffer)
    return buffer.read()


def _part10(path: Path, dataset: bytes, uid: str, syntax: UID = ExplicitVRLittleEndian) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(CR)
    meta.MediaStorageSOPInstanceUID = UID(uid)
    meta.TransferSyntaxUID = syntax
    with open(path, "wb") as f:
        f.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(DicomFileLike(f), meta, enforce_standard=False)
        f.write(dataset)
    return path


def _send(port: int, path: Path, syntax: UID = ExplicitVRLittleEndian, calling_ae: str = "MODALITY") -> Dataset:
    """C-STORE the file's data set bytes exactly as they are; the status data set (empty: none)."""
    return send_raw_c_store(port, path, CR, syntax, calling_ae)


def _element_offset(data: bytes, tag: int) -> int:
    needle = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
    offset = data.find(needle)
    assert offset >= 0
    return offset


def _wait_final(spool: Path, uid: str, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for state in ("outbox", "not_analysed", "failed"):
            if (spool / "jobs" / state / f"{uid}.json").exists():
                return state
        time.sleep(0.5)
    raise AssertionError(f"job {uid} reached no final state in {timeout} s")


def _rss_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise AssertionError(f"{key} not in /proc/{pid}/status")


# -- defect 2: patient data in the log ---------------------------------------------------------


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRLittleEndian], ids=["implicit", "explicit"])
def test_a_name_under_a_renamed_tag_reaches_no_log_line(
    start_node, shared_data: Path, tmp_path: Path, syntax: UID
) -> None:
    """(0010,0010) renamed to (0010,0000): in implicit VR a 12-byte "UL"; the worker reads it."""
    node = start_node(None, "--analysis")
    uids = []
    for tag in (0x00100000, 0x00280000):  # a patient group length, and one in the image group
        ds = _chest(shared_data)
        data = bytearray(_dataset_bytes(ds, syntax))
        struct.pack_into("<HH", data, _element_offset(bytes(data), 0x00100010), tag >> 16, tag & 0xFFFF)
        path = _part10(tmp_path / f"{tag:08x}.dcm", bytes(data), ds.SOPInstanceUID, syntax)
        status = _send(node.port, path, syntax)
        uids.append(ds.SOPInstanceUID)
        if status.Status == dimse_status.SUCCESS:
            _wait_final(node.spool, ds.SOPInstanceUID)
    node.terminate()
    log = node.log()
    assert "ZQXJ" not in log.upper(), [line for line in log.splitlines() if "ZQXJ" in line.upper()]
    assert "Traceback" not in log


# -- defect 3: log forging ---------------------------------------------------------------------


def test_newlines_in_calling_ae_title_and_uid_are_logged_escaped(start_node, shared_data: Path, tmp_path: Path) -> None:
    node = start_node()
    forged_uid = "1.2.3\n2026-01-01 00:00:00,000 INFO dicom_node: FORGED"
    ds = _chest(shared_data)
    path = _part10(tmp_path / "forged.dcm", _dataset_bytes(ds, ExplicitVRLittleEndian), forged_uid)
    validators = dict(_config.VALIDATORS)
    _config.VALIDATORS["AE"] = lambda value: (True, "")  # send what a broken peer would send
    _config.VALIDATORS["UI"] = lambda value: (True, "")
    try:
        ae = AE(ae_title="EVIL\nFORGED LINE")
        ae.add_requested_context(CR, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", node.port, ae_title="CXR_AI")
        assert not assoc.is_established  # pynetdicom refuses the title, and logs it
        status = _send(node.port, path)  # a valid title, a newline in the request's UID
    finally:
        _config.VALIDATORS.update(validators)
    assert status.get("Status") != dimse_status.SUCCESS
    node.terminate()
    lines = node.log().splitlines()
    assert not [line for line in lines if line.startswith(("FORGED", "2026-01-01"))], lines
    # escaped by the formatter (\x0a) or, in the edge server's connection summary, by ascii() (\n)
    assert any("EVIL\\x0aFORGED LINE" in line or "EVIL\\nFORGED LINE" in line for line in lines), lines
    assert any("1.2.3\\x0a2026-01-01" in line for line in lines), lines


# -- defect 4: Success only for data that reads back ---------------------------------------------


def test_an_unknown_vr_is_refused_with_c000_and_a_reason(start_node, shared_data: Path, tmp_path: Path) -> None:
    node = start_node()
    ds = _chest(shared_data)
    data = bytearray(_dataset_bytes(ds, ExplicitVRLittleEndian))
    offset = _element_offset(bytes(data), 0x00080022)  # Acquisition Date, DA
    data[offset + 4 : offset + 6] = b"NM"
    status = _send(node.port, _part10(tmp_path / "nm.dcm", bytes(data), ds.SOPInstanceUID))
    assert status.Status == dimse_status.CANNOT_UNDERSTAND
    assert "cannot be decoded" in status.ErrorComment or "runs past" in status.ErrorComment
    assert not (node.spool / "instances" / f"{ds.SOPInstanceUID}.dcm").exists()


def test_a_uid_flipped_to_um_is_refused_without_a_traceback(start_node, shared_data: Path, tmp_path: Path) -> None:
    node = start_node()
    ds = _chest(shared_data)
    data = bytearray(_dataset_bytes(ds, ExplicitVRLittleEndian))
    offset = _element_offset(bytes(data), 0x00080018)
    data[offset + 4 : offset + 6] = b"UM"
    status = _send(node.port, _part10(tmp_path / "um.dcm", bytes(data), ds.SOPInstanceUID))
    assert status.Status in (dimse_status.CANNOT_UNDERSTAND, dimse_status.CANNOT_UNDERSTAND_MISSING_UIDS)
    assert status.ErrorComment == "element (0008,0018) cannot be decoded (NotImplementedError)"
    assert "Traceback" not in node.log()
    assert "0x0110" not in node.log()


def test_a_trailing_element_cut_short_is_refused(start_node, shared_data: Path, tmp_path: Path) -> None:
    node = start_node()
    ds = _chest(shared_data)
    ds.add_new(0x7FE10010, "LO", "PRIVATE")
    ds.add_new(0x7FE11001, "LT", "x" * 400)  # after Pixel Data: pydicom would read it cut short
    data = _dataset_bytes(ds, ExplicitVRLittleEndian)[:-100]
    status = _send(node.port, _part10(tmp_path / "cut.dcm", data, ds.SOPInstanceUID))
    assert status.Status == dimse_status.CANNOT_UNDERSTAND
    assert status.ErrorComment == "element (7FE1,1001) runs past the end of the data set"


# -- defect 8: the 0xC001 comment ------------------------------------------------------------


def test_c001_says_missing_or_invalid(start_node, shared_data: Path, tmp_path: Path) -> None:
    node = start_node()
    comments = {}
    for case in ("missing", "invalid"):
        ds = _chest(shared_data)
        uid = ds.SOPInstanceUID
        if case == "missing":
            del ds.SOPInstanceUID
            ds.SOPInstanceUID = uid  # needed to encode the meta; removed from the data set below
            data = _dataset_bytes(ds, ExplicitVRLittleEndian)
            offset = _element_offset(data, 0x00080018)
            length = struct.unpack_from("<H", data, offset + 6)[0]
            data = data[:offset] + data[offset + 8 + length :]
        else:
            data = _dataset_bytes(ds, ExplicitVRLittleEndian)
            offset = _element_offset(data, 0x00080018)
            length = struct.unpack_from("<H", data, offset + 6)[0]
            bad = b"1.2.abc".ljust(length, b"\x00")
            data = data[: offset + 8] + bad + data[offset + 8 + length :]
        status = _send(node.port, _part10(tmp_path / f"{case}.dcm", data, uid))
        assert status.Status == dimse_status.CANNOT_UNDERSTAND_MISSING_UIDS
        comments[case] = str(status.ErrorComment)
    assert comments == {
        "missing": "data set lacks a SOP Instance UID",
        "invalid": "data set SOP Instance UID is not a valid UID",
    }


# -- defect 5: streaming, bounded memory, a size limit ------------------------------------------


def _huge_claim(tmp_path: Path, shared_data: Path, sent_bytes: int, claimed: int) -> tuple[Path, str]:
    """A file whose Pixel Data claims ``claimed`` bytes and holds ``sent_bytes`` (sparse on disk)."""
    ds = _chest(shared_data)
    header = _dataset_bytes(ds, ExplicitVRLittleEndian)
    pixel = _element_offset(header, 0x7FE00010)
    head = header[:pixel] + struct.pack("<HH", 0x7FE0, 0x0010) + b"OW\x00\x00" + struct.pack("<L", claimed)
    path = _part10(tmp_path / "huge.dcm", head, ds.SOPInstanceUID)
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size + sent_bytes)  # zeros, never in memory here
    return path, ds.SOPInstanceUID


def test_a_stream_past_max_instance_bytes_is_refused_and_memory_stays_flat(
    start_node, shared_data: Path, tmp_path: Path
) -> None:
    config = tmp_path / "node.toml"
    config.write_text("[node]\nmax_instance_bytes = 67108864\n")  # 64 MiB
    node = start_node(None, "--config", str(config))
    assert node.process is not None
    path, uid = _huge_claim(tmp_path, shared_data, 300 * 1024**2, 2**31)
    before = _rss_kib(node.process.pid, "VmHWM")
    seen: list[int] = []
    stop = threading.Event()

    def watch_disk() -> None:  # the temp file never holds more than the limit
        while not stop.is_set():
            seen.extend(p.stat().st_size for p in (node.spool / "instances").glob(".tmp-*") if p.exists())
            time.sleep(0.05)

    watcher = threading.Thread(target=watch_disk, daemon=True)
    watcher.start()
    try:
        status = _send(node.port, path)
    finally:
        stop.set()
        watcher.join()
    growth_mib = (_rss_kib(node.process.pid, "VmHWM") - before) / 1024
    print(f"node peak RSS grew by {growth_mib:.1f} MiB receiving 300 MiB")
    assert status.Status == dimse_status.OUT_OF_RESOURCES_TOO_LARGE
    assert status.ErrorComment == "instance larger than 67108864 bytes"
    assert growth_mib < 40, f"peak RSS grew by {growth_mib:.0f} MiB while receiving 300 MiB"
    assert max(seen, default=0) <= 64 * 1024**2
    assert not list((node.spool / "instances").glob(".tmp-*")) and not list((node.spool / "instances").glob("*.dcm"))
    assert f"status=0x{dimse_status.OUT_OF_RESOURCES_TOO_LARGE:04X}" in node.log()
    assert uid not in {p.stem for p in (node.spool / "instances").iterdir()}


def test_a_transfer_cut_mid_way_leaves_no_temp_file(start_node, shared_data: Path, tmp_path: Path) -> None:
    node = start_node()
    path, _ = _huge_claim(tmp_path, shared_data, 200 * 1024**2, 200 * 1024**2)
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CR, ExplicitVRLittleEndian)
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        assoc = ae.associate("127.0.0.1", node.port, ae_title="CXR_AI")
        assert assoc.is_established
        sender = threading.Thread(target=assoc.send_c_store, args=(path,), daemon=True)
        sender.start()
        instances = node.spool / "instances"
        deadline = time.monotonic() + 10
        while not list(instances.glob(".tmp-*")) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert list(instances.glob(".tmp-*")), "the data set should stream to a temp file in the spool"
        assoc.abort()
        sender.join(timeout=20)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False
    deadline = time.monotonic() + 10
    while list(instances.glob(".tmp-*")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not list(instances.glob(".tmp-*")), "an aborted transfer left its temp file"
    assert os.path.isdir(instances)

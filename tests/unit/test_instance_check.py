"""The receive-time check of a data set, in process: complete, truncated, and under concurrent warnings."""

from __future__ import annotations

import threading
import warnings
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.filereader import _read_file_meta_info

from dicom_node.errors import UnreadableDatasetError
from dicom_node.receive.instance_check import read_instance_identity

ENCAPSULATED = "pydicom-data/RG1_J2KI.dcm"  # JPEG 2000: Pixel Data in fragments with a delimiter


def _dataset_bytes(path: Path) -> tuple[bytes, pydicom.uid.UID]:
    with open(path, "rb") as f:
        f.seek(132)
        meta = _read_file_meta_info(f)
        return f.read(), meta.TransferSyntaxUID


def test_encapsulated_pixel_data_is_complete_only_with_its_delimiter(shared_data: Path) -> None:
    data, syntax = _dataset_bytes(shared_data / "dicom" / ENCAPSULATED)
    assert data[-8:] == b"\xfe\xff\xdd\xe0\x00\x00\x00\x00", "the file must end with the sequence delimiter"
    identity = read_instance_identity(BytesIO(data), syntax)
    assert identity.sop_instance_uid == str(pydicom.dcmread(shared_data / "dicom" / ENCAPSULATED).SOPInstanceUID)
    for cut in (8, 100, len(data) // 3):
        with pytest.raises(UnreadableDatasetError, match="truncated"):
            read_instance_identity(BytesIO(data[:-cut]), syntax)


def test_warnings_raised_in_other_threads_do_not_change_the_verdict(shared_data: Path) -> None:
    data, syntax = _dataset_bytes(shared_data / "dicom" / ENCAPSULATED)
    stop = threading.Event()

    def warn_like_pydicom() -> None:  # what another thread (the worker) may emit meanwhile
        while not stop.is_set():
            warnings.warn("End of file reached before delimiter (FFFE, E0DD) found", UserWarning, stacklevel=1)

    noise = threading.Thread(target=warn_like_pydicom, daemon=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        noise.start()
        try:
            for _ in range(200):
                read_instance_identity(BytesIO(data), syntax)
        finally:
            stop.set()
            noise.join()


def test_a_sequence_item_without_the_item_tag_is_refused() -> None:
    from pydicom.dataset import Dataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    ds.SOPInstanceUID = generate_uid()
    item = Dataset()
    item.CodeValue = "T-D3000"
    ds.AnatomicRegionSequence = Sequence([item])
    ds.BitsAllocated, ds.Rows, ds.Columns, ds.SamplesPerPixel = 8, 1, 2, 1
    ds.PixelData = b"\x00\x00"
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, ds)
    data = buffer.getvalue()
    assert read_instance_identity(BytesIO(data), ExplicitVRLittleEndian).sop_instance_uid == ds.SOPInstanceUID
    at = data.index(b"\xfe\xff\x00\xe0")
    flipped = data[:at] + b"\xfe\xff\x02\xe0" + data[at + 4:]  # what DCMTK refuses and pydicom reads
    with pytest.raises(UnreadableDatasetError, match="Item tag"):
        read_instance_identity(BytesIO(flipped), ExplicitVRLittleEndian)


def test_nested_sequences_of_real_files_pass(shared_dicom_files: list[Path]) -> None:
    checked = 0
    for path in shared_dicom_files:
        try:
            data, syntax = _dataset_bytes(path)
            pydicom.dcmread(path)
        except Exception:
            continue  # not a Part 10 file with meta, or a broken one: other tests cover those
        if data[:2] == b"\x08\x00" and any(e.VR == "SQ" for e in pydicom.dcmread(path, stop_before_pixels=True)):
            try:
                read_instance_identity(BytesIO(data), syntax)
                checked += 1
            except UnreadableDatasetError as exc:
                assert "Item tag" not in str(exc), f"{path.name}: {exc}"
    assert checked >= 3

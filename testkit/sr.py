"""Sample AI reports (TID 1500 SR) built from real shared DICOM headers, and jobs waiting in the outbox."""

from __future__ import annotations

import io
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path

import highdicom as hd
import pydicom
from pydicom import config as pydicom_config
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from dicom_node.report.sr import AlgorithmInfo, Finding, KnownLabel, SimilarStudy, build_report
from dicom_node.spool import Job, Spool
from testkit.orthanc import OrthancServer
from testkit.shared_data import shared_data_dir

DICOM_DIR = shared_data_dir() / "dicom"
CANON_DX = "pylibjpeg-data/DX_chest_Canon_966_fixed.dcm"  # hashed birth date and accession number
PHILIPS_CR = "pydicom-data/RG1_J2KI.dcm"  # valid patient and study attributes
FODICOM_CR = "fo-dicom/CR-MONO1-10-chest.dcm"  # no PatientID, StudyDate, StudyID, ...
SIIM_SC = "torchxrayvision/SIIM-ACR_1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"
ALL_SOURCES = (CANON_DX, PHILIPS_CR, FODICOM_CR, SIIM_SC)

WEIGHTS_A = "0123456789abcdef" * 4
WEIGHTS_B = "fedcba9876543210" * 4
ALGORITHM = AlgorithmInfo(
    name="cxr_covid_classifier", version="0.3.1", weights_sha256=WEIGHTS_A, manufacturer="CXR AI node project"
)
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
SIMILAR = (
    SimilarStudy("1.2.826.0.1.3680043.10.1.1", "1.2.826.0.1.3680043.10.1.1.1", "1.2.826.0.1.3680043.10.1.1.1.1",
                 SECONDARY_CAPTURE, 0.1234, "covid"),
    SimilarStudy("1.2.826.0.1.3680043.10.1.2", "1.2.826.0.1.3680043.10.1.2.1", "1.2.826.0.1.3680043.10.1.2.1.1",
                 SECONDARY_CAPTURE, 0.3125, KnownLabel.NON_COVID),
)


@contextmanager
def strict_writing_validation() -> Iterator[None]:
    """Any invalid value highdicom or the builder sets raises (pydicom's writing validation)."""
    previous = pydicom_config.settings.writing_validation_mode
    pydicom_config.settings.writing_validation_mode = pydicom_config.RAISE
    try:
        yield
    finally:
        pydicom_config.settings.writing_validation_mode = previous


def read_source(relative: str) -> Dataset:
    """The header of a shared DICOM file (path relative to ``<shared>/dicom``); fails the test if missing."""
    path = DICOM_DIR / relative
    if not path.is_file():
        import pytest

        pytest.fail(f"shared DICOM file missing: {path} (set CXR_SHARED_DATA)")
    return pydicom.dcmread(path, stop_before_pixels=True, force=True)


def write(dataset: Dataset, path: Path) -> Path:
    dataset.save_as(path, enforce_file_format=True)
    return path


def encode(dataset: Dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def build(source: Dataset, probability: float = 0.73, **kwargs) -> hd.sr.Comprehensive3DSR:
    """The report on ``source`` with :data:`SIMILAR` and :data:`ALGORITHM`."""
    return build_report(source, Finding(probability), SIMILAR, ALGORITHM, **kwargs)


# --- Jobs in the outbox ----------------------------------------------------------------------


def report_bytes(source_name: str = "RG1_J2KI.dcm") -> tuple[bytes, str]:
    """An encoded report on a shared pydicom-data file, and its SOP Instance UID."""
    source = pydicom.dcmread(shared_data_dir() / "dicom" / "pydicom-data" / source_name, stop_before_pixels=True)
    report = build_report(
        source, Finding(0.8),
        [SimilarStudy("1.2.826.0.1.3680043.10.9.1", "1.2.826.0.1.3680043.10.9.1.1",
                      "1.2.826.0.1.3680043.10.9.1.1.1", "1.2.840.10008.5.1.4.1.1.7", 0.25, "covid")],
        AlgorithmInfo("cxr_covid_classifier", "0.0.1", "cd" * 32, "CXR AI node project"),
    )
    buffer = BytesIO()
    report.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue(), str(report.SOPInstanceUID)


def job_in_outbox(spool: Spool, destinations: list[str], uid: str = "1.2.826.0.1.3680043.10.9.7") -> Job:
    """A received instance whose report waits in the outbox for ``destinations``."""
    job, _ = spool.store_instance(
        [b"instance"], sop_instance_uid=uid, sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
        transfer_syntax_uid=ExplicitVRLittleEndian, calling_ae_title="DX1",
    )
    report, _ = report_bytes()
    return spool.put_result(job, report, destinations)


def content_items(ds: Dataset) -> Iterator[Dataset]:
    """Every content item of an SR, depth first."""
    for item in ds.get("ContentSequence", []):
        yield item
        yield from content_items(item)


def referenced_images(ds: Dataset) -> set[str]:
    """SOP Instance UIDs of the IMAGE content items of an SR."""
    return {
        str(ref.ReferencedSOPInstanceUID)
        for item in content_items(ds) if item.get("ValueType") == "IMAGE"
        for ref in item.ReferencedSOPSequence
    }


def reports_in_orthanc(orthanc: OrthancServer, sources: set[str]) -> dict[str, list[Dataset]]:
    """The SRs stored in Orthanc, by the source image (one of ``sources``) each reports on."""
    found: dict[str, list[Dataset]] = {}
    for orthanc_id in orthanc.post("/tools/find", {"Level": "Instance", "Query": {"Modality": "SR"}}):
        url = f"http://127.0.0.1:{orthanc.http_port}/instances/{orthanc_id}/file"
        with urllib.request.urlopen(url, timeout=10) as response:
            ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(response.read()))
        for source in referenced_images(ds) & sources:
            found.setdefault(source, []).append(ds)
    return found

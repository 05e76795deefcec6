"""Delivery over the network: C-STORE to a real Orthanc, and peers that are closed or never answer."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from dicom_node.report.sr import AlgorithmInfo, Finding, SimilarStudy, build_report
from dicom_node.send.delivery import DeliveryResult, PacsDestination, send_file, send_files
from testkit.orthanc import ORTHANC_AE_TITLE, OrthancServer, running_orthanc
from testkit.peers import free_port
from testkit.shared_data import shared_data_dir

CALLING_AE = "CXR_AI"


# --- C-STORE to a real Orthanc -----------------------------------------------------------------


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    with running_orthanc(tmp_path_factory.mktemp("orthanc"), (CALLING_AE,)) as server:
        yield server


@pytest.fixture(scope="module")
def report_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = pydicom.dcmread(shared_data_dir() / "dicom" / "pydicom-data" / "RG1_J2KI.dcm", stop_before_pixels=True)
    report = build_report(
        source,
        Finding(0.81),
        [SimilarStudy("1.2.826.0.1.3680043.10.2.1", "1.2.826.0.1.3680043.10.2.1.1",
                      "1.2.826.0.1.3680043.10.2.1.1.1", "1.2.840.10008.5.1.4.1.1.7", 0.2, "covid")],
        AlgorithmInfo("cxr_covid_classifier", "0.3.1", "ab" * 32, "CXR AI node project"),
    )
    path = tmp_path_factory.mktemp("outbox") / "report.dcm"
    report.save_as(path, enforce_file_format=True)
    return path


def pacs(orthanc: OrthancServer, ae_title: str = ORTHANC_AE_TITLE) -> PacsDestination:
    return PacsDestination("orthanc", ae_title, "127.0.0.1", orthanc.dicom_port)


def test_report_sent_to_orthanc_is_delivered_and_stored(orthanc: OrthancServer, report_file: Path) -> None:
    sop_instance_uid = pydicom.dcmread(report_file).SOPInstanceUID

    result = send_file(report_file, pacs(orthanc), calling_ae_title=CALLING_AE)

    assert result == DeliveryResult(delivered=True, status=0x0000)
    [stored] = orthanc.find_instances(sop_instance_uid)
    tags = orthanc.get(f"/instances/{stored}/simplified-tags")
    assert tags["Modality"] == "SR" and tags["SOPInstanceUID"] == sop_instance_uid


def test_sending_the_same_report_twice_stores_it_once(orthanc: OrthancServer, report_file: Path) -> None:
    sop_instance_uid = pydicom.dcmread(report_file).SOPInstanceUID

    first = send_file(report_file, pacs(orthanc), calling_ae_title=CALLING_AE)
    second = send_file(report_file, pacs(orthanc), calling_ae_title=CALLING_AE)

    assert first.delivered and second.delivered
    assert len(orthanc.find_instances(sop_instance_uid)) == 1
    assert len(orthanc.get("/instances")) == 1


def test_a_result_of_several_files_goes_on_one_association_in_order(orthanc: OrthancServer, report_file: Path) -> None:
    # A compressed radiograph and the report: two SOP classes, two transfer syntaxes.
    image = shared_data_dir() / "dicom" / "pydicom-data" / "RG1_J2KI.dcm"
    uids = [str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID) for path in (image, report_file)]

    result = send_files([image, report_file], pacs(orthanc), calling_ae_title=CALLING_AE)

    assert result == DeliveryResult(delivered=True, status=0x0000)
    assert all(len(orthanc.find_instances(uid)) == 1 for uid in uids)


def test_a_result_with_an_unreadable_file_is_not_delivered(orthanc: OrthancServer, report_file: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(b"not DICOM")

    result = send_files([report_file, broken], pacs(orthanc), calling_ae_title=CALLING_AE)

    assert not result.delivered and result.error == "cannot read broken.dcm: InvalidDicomError"


def test_unknown_calling_ae_is_rejected_and_not_delivered(orthanc: OrthancServer, report_file: Path) -> None:
    result = send_file(report_file, pacs(orthanc), calling_ae_title="STRANGER")

    assert not result.delivered
    assert result.status is None and result.error == "association rejected"


def test_wrong_called_ae_is_rejected_and_not_delivered(orthanc: OrthancServer, report_file: Path) -> None:
    result = send_file(report_file, pacs(orthanc, ae_title="NOT_ORTHANC"), calling_ae_title=CALLING_AE)

    assert not result.delivered and result.error == "association rejected"


def test_closed_port_is_not_delivered_and_does_not_raise(report_file: Path) -> None:
    closed = PacsDestination("closed", "PACS", "127.0.0.1", free_port())
    started = time.monotonic()

    result = send_file(report_file, closed, calling_ae_title=CALLING_AE, network_timeout=5)

    assert not result.delivered and result.status is None and result.error
    assert time.monotonic() - started < 5


def test_peer_that_never_answers_is_not_delivered(report_file: Path) -> None:
    # A socket that accepts TCP but never speaks DICOM: the association times out.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        silent = PacsDestination("silent", "PACS", "127.0.0.1", listener.getsockname()[1])

        result = send_file(report_file, silent, calling_ae_title=CALLING_AE, acse_timeout=1, network_timeout=1)

    assert not result.delivered and result.status is None and result.error

"""Which images get a finding: every shared DICOM file through the worker with the shipped bundle."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ImplicitVRLittleEndian, generate_uid

from dicom_node.analyse.worker import InferenceWorker, encode
from dicom_node.app import build_worker
from dicom_node.config import NodeConfig
from dicom_node.spool import Job, JobState, Spool
from scripts.measure_applicability import CHEST_DICOM, NON_CHEST_DICOM

UNDECODABLE = {"pylibjpeg-data/DX_chest_Canon_966.dcm", "dicom-test-files/RG2_JPLY.dcm"}
NOT_A_CHEST_BY_HEADER = {  # the header is checked before decoding
    "dicom-test-files/RG2_JPLL.dcm", "dicom-test-files/RG2_JPLY.dcm", "pylibjpeg-data/RG2_JPLY_fixed.dcm",
    "dicom-test-files/RG3_RLE.dcm",
}


def _part10(ds: pydicom.Dataset) -> bytes:
    if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):  # a file without meta, as the receiver completes it
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return encode(ds)


def _store(spool: Spool, path: Path, **changes: object) -> Job:
    """Spool ``path`` as a new instance with attributes ``changes``d (``None`` removes one).

    Always a new SOP Instance UID: the shared twins (RG1, RG2 in several encodings) share
    theirs, and the spool keeps one job per instance. The pixel data stay as encoded.
    """
    ds = pydicom.dcmread(path, force=True)
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.SOPInstanceUID = generate_uid()
    job, _ = spool.store_instance(
        [_part10(ds)], sop_instance_uid=str(ds.SOPInstanceUID),
        sop_class_uid=str(ds.SOPClassUID), transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID), calling_ae_title="TEST",
    )
    return job


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> InferenceWorker:
    spool = Spool(tmp_path_factory.mktemp("spool"), fsync=False)
    # Reports done when run_once returns (the node overlaps them with the next batch).
    return build_worker(NodeConfig(spool=spool.root, device="cpu", batch_size=16, similar_k=0, overlap_reports=False), spool)


def _run(worker: InferenceWorker, jobs: dict[str, Job]) -> dict[str, Job]:
    while worker.run_once():
        pass
    done = {name: worker.spool.find_job(job.job_id) for name, job in jobs.items()}
    return {name: job for name, job in done.items() if job is not None}


def test_every_shared_file_is_labelled(shared_dicom_files: list[Path], shared_data: Path) -> None:
    names = {str(p.relative_to(shared_data / "dicom")) for p in shared_dicom_files}
    assert names == set(CHEST_DICOM) | set(NON_CHEST_DICOM)
    assert not set(CHEST_DICOM) & set(NON_CHEST_DICOM)


def test_chest_files_get_a_report_and_no_other_file_gets_a_finding(worker: InferenceWorker, shared_data: Path) -> None:
    dicom = shared_data / "dicom"
    jobs = {name: _store(worker.spool, dicom / name) for name in [*CHEST_DICOM, *NON_CHEST_DICOM]}
    done = _run(worker, jobs)
    assert set(done) == set(jobs)
    for name in CHEST_DICOM:
        if name in UNDECODABLE:
            assert done[name].state is JobState.NOT_ANALYSED and done[name].detail.startswith("undecodable")
        else:
            assert done[name].state is JobState.OUTBOX, f"{name}: {done[name].detail}"
    for name in NON_CHEST_DICOM:
        job = done[name]
        assert job.state is JobState.NOT_ANALYSED, f"{name} ({NON_CHEST_DICOM[name]}) got a finding"
        expected = "not a chest image" if name in NOT_A_CHEST_BY_HEADER else "not a frontal chest radiograph"
        assert job.detail.startswith(expected), (name, job.detail)
    teeth = done["fo-dicom/CR-ModalitySequenceLUT.dcm"].detail
    assert "(lung fields: " in teeth and "appearance residual" in teeth, teeth


def test_non_chest_images_are_refused_by_the_picture_when_the_header_says_nothing(
    worker: InferenceWorker, shared_data: Path
) -> None:
    dicom = shared_data / "dicom"
    jobs = {name: _store(worker.spool, dicom / name, BodyPartExamined=None, ViewPosition=None)
            for name in ["dicom-test-files/RG2_JPLL.dcm", "dicom-test-files/RG3_RLE.dcm"]}
    for name, job in _run(worker, jobs).items():
        assert job.state is JobState.NOT_ANALYSED and job.detail.startswith("not a frontal chest radiograph"), (name, job.detail)


def test_secondary_capture_is_analysed_only_as_a_radiograph(worker: InferenceWorker, shared_data: Path) -> None:
    siim = shared_data / "dicom" / next(n for n in CHEST_DICOM if n.startswith("torchxrayvision/"))
    assert str(pydicom.dcmread(siim, stop_before_pixels=True).SOPClassUID) == "1.2.840.10008.5.1.4.1.1.7"
    jobs = {"DX": _store(worker.spool, siim, Modality="DX"), "OT": _store(worker.spool, siim, Modality="OT")}
    done = _run(worker, jobs)
    assert done["DX"].state is JobState.OUTBOX, done["DX"].detail
    report = pydicom.dcmread(worker.spool.result_path(done["DX"]))
    assert report.Modality == "SR"
    assert done["OT"].state is JobState.NOT_ANALYSED
    assert done["OT"].detail == "not a radiograph: Secondary Capture of modality OT"

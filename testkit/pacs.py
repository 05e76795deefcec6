"""A PACS with a known content for the PACS-import tests and benchmark: DX studies made from real shared images.

:func:`pacs_studies` chooses real frontal chest radiographs of the shared data (COVID-19 from
ieee8023, negatives from NIH, by their manifest labels) and :func:`make_study` wraps each one,
downscaled, in a DX For Presentation instance with its own Study/Series/SOP Instance UIDs,
patient, accession number and study date. Three more studies must be skipped by an import: a
lateral view, a knee, and a frontal chest outside the queried date range. :func:`load_orthanc`
uploads them all to a running :class:`testkit.orthanc.OrthancServer` through its REST API.
"""

from __future__ import annotations

import csv
import datetime
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import UID, generate_uid

from testkit.dicom_factory import make_dx
from testkit.orthanc import OrthancServer

DATE_FROM, DATE_TO = "20200301", "20200630"
"""The date range an import queries; every study but the "out of range" one lies in it."""
SIZE = 256
"""Rows and columns of the test instances (the models resize anyway; small files load fast)."""


@dataclass(frozen=True)
class PacsStudy:
    """One study loaded into the test PACS, and what an import must make of it."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    accession_number: str
    patient_id: str
    study_date: str
    label: str  # the shared manifest's label of the image (covid / non_covid)
    kind: str  # "frontal", "lateral", "knee" or "out_of_range"
    image_path: str  # the shared image it was made from

    @property
    def wanted(self) -> bool:
        """Whether an import of ``DATE_FROM``..``DATE_TO`` must take it (a frontal chest in range)."""
        return self.kind == "frontal"


def _uid(*parts: str) -> str:
    return str(generate_uid(prefix="1.2.826.0.1.3680043.8.498.", entropy_srcs=["testkit.pacs", *parts]))


def pacs_studies(shared: Path, n_covid: int = 14, n_negative: int = 14) -> list[PacsStudy]:
    """The studies of the test PACS, chosen deterministically from the shared manifest's train split.

    Patients keep their shared ``patient_id`` (public, de-identified), so a patient with several
    images has several studies. The last three are the lateral, the knee and the one out of range.
    """
    with (shared / "manifest.csv").open(newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["split"] == "train"]
    covid = [r for r in rows if r["source"] == "ieee8023" and r["label"] == "covid" and r["view"] == "PA"][:n_covid]
    negative = [r for r in rows if r["source"] == "nih_cxr14" and r["label"] == "non_covid"][: n_negative + 3]
    chosen = [(r, "frontal") for r in covid + negative[:n_negative]]
    chosen += list(zip(negative[n_negative:], ("lateral", "knee", "out_of_range")))
    start = datetime.date(2020, 3, 1)
    studies = []
    for number, (row, kind) in enumerate(chosen):
        date = datetime.date(2019, 6, 1) if kind == "out_of_range" else start + datetime.timedelta(days=(3 * number) % 120)
        key = row["image_path"]
        studies.append(
            PacsStudy(
                study_instance_uid=_uid("study", key), series_instance_uid=_uid("series", key),
                sop_instance_uid=_uid("instance", key), accession_number=f"ACC{number:05d}",
                patient_id=row["patient_id"], study_date=date.strftime("%Y%m%d"), label=row["label"],
                kind=kind, image_path=key,
            )
        )
    return studies


def make_study(shared: Path, study: PacsStudy, size: int = SIZE) -> Dataset:
    """The DX instance of ``study``: its shared image at ``size`` x ``size``, 8-bit, with its identifiers."""
    picture = Image.open(shared / study.image_path).convert("L").resize((size, size), Image.Resampling.LANCZOS)
    ds = make_dx(np.asarray(picture), 8)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = UID(study.sop_instance_uid)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study.study_instance_uid, study.series_instance_uid
    digest = hashlib.sha256(study.patient_id.encode()).hexdigest()[:8]
    ds.PatientName, ds.PatientID = f"Test^{digest}", study.patient_id
    ds.PatientBirthDate = "19600101"
    ds.AccessionNumber = study.accession_number
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = study.study_date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "101500"
    ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "1", 1, 1
    ds.ReferringPhysicianName = ""
    ds.BodyPartExamined = "KNEE" if study.kind == "knee" else "CHEST"
    ds.ViewPosition = "LL" if study.kind == "lateral" else "PA"
    ds.SeriesDescription = {"lateral": "Chest lateral", "knee": "Knee AP"}.get(study.kind, "Chest PA")
    ds.ImageLaterality = "U"
    ds.PresentationIntentType = "FOR PRESENTATION"
    return ds


def encode(ds: Dataset) -> bytes:
    """``ds`` as a Part 10 file in memory."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def load_orthanc(orthanc: OrthancServer, shared: Path, studies: list[PacsStudy]) -> None:
    """Upload every study to ``orthanc`` (REST ``POST /instances``) and check it holds them all."""
    for study in studies:
        orthanc.upload(encode(make_study(shared, study)))
    stored = orthanc.get("/statistics")["CountInstances"]
    if stored != len(studies):
        raise RuntimeError(f"Orthanc holds {stored} instances, {len(studies)} were uploaded")


def write_labels(path: Path, studies: list[PacsStudy], unlabelled_every: int = 7) -> dict[str, str]:
    """A labels CSV keyed by accession number (every ``unlabelled_every``-th study left out: unknown).

    Returns the accession number -> label of the rows written.
    """
    labels = {s.accession_number: s.label for i, s in enumerate(studies) if i % unlabelled_every != unlabelled_every - 1}
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["accession_number", "label"])
        writer.writerows(sorted(labels.items()))
    return labels


CALLING_AE = "CXR_AI"
"""The node's AE title, known to the test PACS (C-FIND, C-GET and C-MOVE allowed)."""
MOVE_AE = "CXR_AI_QR"
"""The C-MOVE destination the test PACS knows (the import's temporary Storage SCP)."""


@dataclass
class LoadedPacs:
    """A running Orthanc holding :func:`pacs_studies`, and the labels CSV of its studies."""

    orthanc: OrthancServer
    studies: list[PacsStudy]
    labels_csv: Path
    labels: dict[str, str]  # accession number -> label, as the CSV has them
    move_port: int

    @property
    def address(self) -> str:
        """``AE@HOST:PORT`` of the PACS, as ``--pacs`` takes it."""
        return f"ORTHANC@127.0.0.1:{self.orthanc.dicom_port}"

    @property
    def wanted(self) -> list[PacsStudy]:
        return [s for s in self.studies if s.wanted]

    def expected_label(self, study: PacsStudy) -> str:
        return self.labels.get(study.accession_number, "unknown")


def start_loaded_pacs(workdir: Path, shared: Path) -> LoadedPacs:
    """Start Orthanc (the node's AE may query and retrieve; :data:`MOVE_AE` is a move destination) and load it."""
    from testkit.peers import free_port

    move_port = free_port()
    orthanc = OrthancServer(workdir / "orthanc", (CALLING_AE,), move_destinations={MOVE_AE: move_port}).start()
    try:
        studies = pacs_studies(shared)
        load_orthanc(orthanc, shared, studies)
        labels_csv = workdir / "labels.csv"
        labels = write_labels(labels_csv, studies)
    except BaseException:
        orthanc.stop()
        raise
    return LoadedPacs(orthanc, studies, labels_csv, labels, move_port)

"""The Key Object Selection of the similar images: in the source's study, nearest first, deterministic.

Validity under dicom3tools' ``dciodvfy`` and ``dsrdump`` is checked in
``tests/integration/test_derived_validators.py``.
"""

from __future__ import annotations

import io

import highdicom as hd
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, KeyObjectSelectionDocumentStorage

from dicom_node.report import codes
from dicom_node.report.key_images import (
    DEFAULT_SERIES_DESCRIPTION,
    DEFAULT_SERIES_NUMBER,
    build_similar_images_selection,
    key_images_series_instance_uid,
    key_images_sop_instance_uid,
)
from dicom_node.report.segmentation import segmentation_series_instance_uid
from dicom_node.report.sr import AlgorithmInfo, SimilarStudy, report_series_instance_uid
from dicom_node.report.summary_image import summary_series_instance_uid
from testkit.sr import (
    ALGORITHM,
    ALL_SOURCES,
    CANON_DX,
    PHILIPS_CR,
    SECONDARY_CAPTURE,
    SIMILAR,
    WEIGHTS_B,
    encode,
    read_source,
)

pytestmark = pytest.mark.usefixtures("strict_writing")  # any invalid value set fails the test

DX = "1.2.840.10008.5.1.4.1.1.1.1"
# Nearest first; the first two share a study and a series, the third is in another study.
NEIGHBOURS = (
    SimilarStudy("1.2.826.0.1.3680043.10.2.1", "1.2.826.0.1.3680043.10.2.1.1", "1.2.826.0.1.3680043.10.2.1.1.2",
                 DX, 0.05, "covid"),
    SimilarStudy("1.2.826.0.1.3680043.10.2.2", "1.2.826.0.1.3680043.10.2.2.1", "1.2.826.0.1.3680043.10.2.2.1.1",
                 SECONDARY_CAPTURE, 0.10, "non_covid"),
    SimilarStudy("1.2.826.0.1.3680043.10.2.1", "1.2.826.0.1.3680043.10.2.1.1", "1.2.826.0.1.3680043.10.2.1.1.1",
                 DX, 0.20, "covid"),
)


def build(source: Dataset, similar=NEIGHBOURS, algorithm: AlgorithmInfo = ALGORITHM, **kwargs):
    """The document as built, read back by highdicom (which refuses a dataset that is not a KOS)."""
    return hd.ko.KeyObjectSelectionDocument.from_dataset(
        build_similar_images_selection(source, similar, algorithm, **kwargs))


def selected(document: Dataset) -> list[tuple[str, str]]:
    """(SOP Class, SOP Instance) of each IMAGE item of the content, in order."""
    return [
        (str(item.ReferencedSOPSequence[0].ReferencedSOPClassUID), str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID))
        for item in document.ContentSequence if item.ValueType == "IMAGE"
    ]


def evidence(document: Dataset) -> dict[str, dict[str, list[str]]]:
    """Current Requested Procedure Evidence as {study: {series: [SOP Instance UIDs]}}."""
    return {
        str(study.StudyInstanceUID): {
            str(series.SeriesInstanceUID): [str(i.ReferencedSOPInstanceUID) for i in series.ReferencedSOPSequence]
            for series in study.ReferencedSeriesSequence
        }
        for study in document.CurrentRequestedProcedureEvidenceSequence
    }


@pytest.mark.parametrize("source_file", ALL_SOURCES)
def test_the_selection_is_a_kos_in_the_source_study_in_a_series_of_its_own(source_file: str) -> None:
    source = read_source(source_file)

    document = build(source)

    assert isinstance(build_similar_images_selection(source, NEIGHBOURS, ALGORITHM), hd.SOPClass)
    assert document.SOPClassUID == KeyObjectSelectionDocumentStorage and document.Modality == "KO"
    assert document.StudyInstanceUID == source.StudyInstanceUID
    assert document.SeriesNumber == DEFAULT_SERIES_NUMBER == 9003
    assert document.SeriesDescription == DEFAULT_SERIES_DESCRIPTION
    other_series = {
        source.SeriesInstanceUID, report_series_instance_uid(source, ALGORITHM),
        summary_series_instance_uid(source, ALGORITHM), segmentation_series_instance_uid(source, ALGORITHM),
    }
    assert document.SeriesInstanceUID not in other_series
    assert document.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian


def test_the_similar_images_are_selected_nearest_first_as_image_items() -> None:
    document = build(read_source(CANON_DX))

    assert selected(document) == [(case.sop_class_uid, case.sop_instance_uid) for case in NEIGHBOURS]
    items = [item for item in document.ContentSequence if item.ValueType == "IMAGE"]
    assert all(item.RelationshipType == "CONTAINS" for item in items)
    assert {item.ConceptNameCodeSequence[0].CodeValue for item in items} == {codes.SELECTED_OBJECT.value}


def test_the_evidence_lists_exactly_the_selected_images_grouped_by_study_and_series() -> None:
    source = read_source(CANON_DX)

    document = build(source)

    first, second, third = NEIGHBOURS
    assert evidence(document) == {
        first.study_instance_uid: {first.series_instance_uid: [first.sop_instance_uid, third.sop_instance_uid]},
        second.study_instance_uid: {second.series_instance_uid: [second.sop_instance_uid]},
    }
    assert source.StudyInstanceUID not in evidence(document), "the source itself is not selected"
    for case in NEIGHBOURS:
        assert document.resolve_reference(case.sop_instance_uid) == (
            case.study_instance_uid, case.series_instance_uid, case.sop_instance_uid)


def test_title_description_observer_and_equipment_name_the_algorithm() -> None:
    document = build(read_source(CANON_DX))

    title = document.ConceptNameCodeSequence[0]
    assert (title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning) == ("113000", "DCM", "Of Interest")
    assert document.ContentTemplateSequence[0].TemplateIdentifier == "2010"
    [description] = [i for i in document.ContentSequence if i.ValueType == "TEXT"
                     and i.ConceptNameCodeSequence[0].CodeValue == codes.KEY_OBJECT_DESCRIPTION.value]
    assert description.TextValue == (
        "Similar prior images found by cxr_covid_classifier 0.3.1 "
        "(unverified AI research result, not for diagnostic use); nearest first"
    )
    [observer] = document.content.get_observer_contexts(codes.DEVICE_OBSERVER)
    assert observer.observer_identifying_attributes.uid == ALGORITHM.device_uid
    [equipment] = document.ContributingEquipmentSequence
    assert equipment.PurposeOfReferenceCodeSequence[0].CodeValue == codes.PROCESSING_ALGORITHM.value
    assert equipment.DeviceUID == ALGORITHM.device_uid
    assert [s.CodingSchemeDesignator for s in document.CodingSchemeIdentificationSequence] == [codes.IHE_INTERIM_SCHEME]
    assert (document.Manufacturer, document.SoftwareVersions) == (ALGORITHM.manufacturer, ALGORITHM.version)


@pytest.mark.parametrize("source_file", ALL_SOURCES)
def test_patient_and_study_attributes_come_from_the_source_and_nothing_else(source_file: str) -> None:
    source = read_source(source_file)

    document = pydicom.dcmread(io.BytesIO(encode(build(source))))

    patient_keywords = {e.keyword for e in document if "Patient" in e.keyword or e.keyword == "IssuerOfPatientID"}
    assert patient_keywords == {"PatientName", "PatientID", "PatientBirthDate", "PatientSex"}
    for keyword in (*patient_keywords, "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID", "AccessionNumber",
                    "ReferringPhysicianName"):
        # Values invalid for their VR (hashed birth dates, long accession numbers) are copied empty.
        assert document.get(keyword) in (source.get(keyword), "", None), keyword
        if source.get(keyword) and document.get(keyword):
            assert str(document.get(keyword)) == str(source.get(keyword))


def test_rebuilt_selection_has_the_same_uids_and_other_inputs_give_other_ones() -> None:
    source = read_source(CANON_DX)

    first, again = build(source), build(source)
    reordered = build(source, similar=NEIGHBOURS[::-1])
    shorter = build(source, similar=NEIGHBOURS[:2])
    new_weights = build(source, algorithm=AlgorithmInfo(ALGORITHM.name, ALGORITHM.version, WEIGHTS_B, ALGORITHM.manufacturer))

    assert (first.SOPInstanceUID, first.SeriesInstanceUID) == (again.SOPInstanceUID, again.SeriesInstanceUID)
    assert first.SOPInstanceUID == key_images_sop_instance_uid(source, NEIGHBOURS, ALGORITHM)
    assert first.SeriesInstanceUID == key_images_series_instance_uid(source, ALGORITHM)
    assert len({d.SOPInstanceUID for d in (first, reordered, shorter, new_weights)}) == 4
    assert shorter.SeriesInstanceUID == first.SeriesInstanceUID != new_weights.SeriesInstanceUID
    other_source = read_source(PHILIPS_CR)
    assert build(other_source).SOPInstanceUID != first.SOPInstanceUID


def test_the_selection_survives_a_round_trip_through_a_file() -> None:
    document = build(read_source(CANON_DX), similar=SIMILAR)

    again = hd.ko.KeyObjectSelectionDocument.from_dataset(pydicom.dcmread(io.BytesIO(encode(document))))

    assert [item.referenced_sop_instance_uid for item in again.content.get_references()] == [
        case.sop_instance_uid for case in SIMILAR]


def test_wrong_arguments_are_refused() -> None:
    source = read_source(CANON_DX)
    itself = SimilarStudy(source.StudyInstanceUID, source.SeriesInstanceUID, source.SOPInstanceUID,
                          source.SOPClassUID, 0.0, "covid")

    with pytest.raises(ValueError, match="at least one"):
        build(source, similar=[])
    with pytest.raises(ValueError, match="distinct images other than the source"):
        build(source, similar=[NEIGHBOURS[0], NEIGHBOURS[0]])
    with pytest.raises(ValueError, match="distinct images other than the source"):
        build(source, similar=[itself])
    with pytest.raises(TypeError, match="similar"):
        build(source, similar=[NEIGHBOURS[0].as_evidence()])
    with pytest.raises(TypeError, match="algorithm"):
        build(source, algorithm="cxr")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="series_description"):
        build(source, series_description="")

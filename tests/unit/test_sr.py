"""The AI report: a TID 1500 Comprehensive 3D SR built with highdicom from real CR/DX images.

Each report is round-tripped through ``dcmread`` and read back with highdicom's TID 1500
parser for the content checks. Its validity under dicom3tools' ``dciodvfy`` and DCMTK's
``dsrdump`` is checked in ``tests/integration/test_sr_validators.py``.
"""

from __future__ import annotations

import io
import logging

import highdicom as hd
import pydicom
import pytest
from highdicom.sr.utils import find_content_items
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as pydicom_codes
from pydicom.sr.coding import Code

from dicom_node.report import codes
from dicom_node.report.sr import (
    DEFAULT_SERIES_DESCRIPTION,
    AlgorithmInfo,
    Finding,
    ImageRegion,
    SimilarStudy,
    build_report,
)
from dicom_node.report.uids import derived_uid
from monai_app.calibration import OperatingPoint
from testkit.sr import (
    ALGORITHM,
    CANON_DX,
    DICOM_DIR,
    FODICOM_CR,
    PHILIPS_CR,
    SECONDARY_CAPTURE,
    SIMILAR,
    WEIGHTS_A,
    WEIGHTS_B,
    build,
    encode,
    read_source,
)

pytestmark = pytest.mark.usefixtures("strict_writing")  # any invalid value set fails the test


def element_tree(dataset: Dataset) -> list[tuple]:
    """(tag, VR, value) of every element, recursively, values as text.

    Text because highdicom sets dates as DA/TM/DT objects and copies the source's as
    strings, an empty value is ``None`` before writing and ``""`` after reading, and
    pydicom compares data sets of one class only.
    """
    return [
        (element.tag, element.VR, [element_tree(item) for item in element.value])
        if element.VR == "SQ" else (element.tag, element.VR, "" if element.value is None else str(element.value))
        for element in dataset
    ]


def parsed(report: Dataset) -> hd.sr.Comprehensive3DSR:
    """The report as a PACS would see it: encoded, read back and parsed as TID 1500."""
    return hd.sr.Comprehensive3DSR.from_dataset(pydicom.dcmread(io.BytesIO(encode(report))))


def measurement_report(report: hd.sr.Comprehensive3DSR) -> hd.sr.MeasurementReport:
    """The parsed TID 1500 content (highdicom types ``content`` as a plain ContentSequence)."""
    content = report.content
    assert isinstance(content, hd.sr.MeasurementReport)
    return content


def text_values(group: hd.sr.MeasurementsAndQualitativeEvaluations, name: Code) -> list[str]:
    return [item.TextValue for item in find_content_items(group[0], name=name)]


# --- Round trip ----------------------------------------------------------------------------


@pytest.mark.parametrize("source_file", [CANON_DX, PHILIPS_CR])
def test_round_trip_through_dcmread_is_identical(source_file: str) -> None:
    report = build(read_source(source_file))
    encoded = encode(report)

    read_back = pydicom.dcmread(io.BytesIO(encoded))

    assert element_tree(read_back) == element_tree(report)
    # File Meta Information Group Length is recomputed on every write.
    assert element_tree(read_back.file_meta)[1:] == element_tree(report.file_meta)[1:]
    assert encode(read_back) == encoded


# --- Content -------------------------------------------------------------------------------


def test_finding_group_carries_probability_threshold_evaluation_and_source_image() -> None:
    source = read_source(PHILIPS_CR)
    report = parsed(build_report(source, Finding(0.73, threshold=0.6), SIMILAR, ALGORITHM))

    [group] = measurement_report(report).get_image_measurement_groups(finding_type=codes.COVID_19)

    assert group.tracking_identifier == "COVID-19 classification"
    assert [site.value for site in group.finding_sites] == [codes.LUNG]
    [probability] = group.get_measurements(name=codes.PROBABILITY)
    assert probability.value == pytest.approx(73.0)
    assert probability.unit == codes.PERCENT
    [threshold] = group.get_measurements(name=codes.THRESHOLD_VALUE)
    assert threshold.value == pytest.approx(60.0)
    [evaluation] = group.get_qualitative_evaluations(name=codes.COVID_19)
    assert evaluation.value == codes.PRESENT
    [image] = group.source_images
    assert image.referenced_sop_instance_uid == source.SOPInstanceUID
    assert image.referenced_sop_class_uid == source.SOPClassUID


@pytest.mark.parametrize(
    ("probability", "threshold", "expected"),
    [(0.49, 0.5, codes.ABSENT), (0.5, 0.5, codes.PRESENT), (0.2, 0.1, codes.PRESENT), (0.0, 0.5, codes.ABSENT)],
)
def test_finding_is_present_from_the_threshold_up(probability: float, threshold: float, expected) -> None:
    report = parsed(build_report(read_source(PHILIPS_CR), Finding(probability, threshold), [], ALGORITHM))

    [group] = measurement_report(report).get_image_measurement_groups(finding_type=codes.COVID_19)

    [evaluation] = group.get_qualitative_evaluations(name=codes.COVID_19)
    assert evaluation.value == expected


def test_algorithm_identification_names_algorithm_version_and_threshold() -> None:
    report = parsed(build_report(read_source(PHILIPS_CR), Finding(0.2, 0.35), SIMILAR, ALGORITHM))

    for group in measurement_report(report).get_image_measurement_groups():
        assert text_values(group, pydicom_codes.DCM.AlgorithmName) == ["cxr_covid_classifier"]
        assert text_values(group, pydicom_codes.DCM.AlgorithmVersion) == ["0.3.1"]
    [finding_group] = measurement_report(report).get_image_measurement_groups(finding_type=codes.COVID_19)
    assert text_values(finding_group, pydicom_codes.DCM.AlgorithmParameters) == ["threshold=0.35", "calibration=uncalibrated"]


def test_report_says_the_threshold_its_validation_operating_point_and_the_calibration() -> None:
    finding = Finding(
        0.71, 0.5153, OperatingPoint(0.8816, 0.7778, 94, "within_source"), "logistic (Platt) scaling, T = 1.32, b = +1.50"
    )
    report = parsed(build_report(read_source(PHILIPS_CR), finding, SIMILAR, ALGORITHM))

    [line] = [item for item in qualitative_items(report) if item.ConceptNameCodeSequence[0].CodeValue == "OPPOINT"]
    assert line.ValueType == "TEXT" and line.RelationshipType == "CONTAINS"
    assert line.TextValue == (
        "Operating point: threshold 51.5 % (validation sensitivity 0.88, specificity 0.78, 94 images of the "
        "sources with both labels); probability calibrated by logistic (Platt) scaling, T = 1.32, b = +1.50"
    )
    [finding_group] = measurement_report(report).get_image_measurement_groups(finding_type=codes.COVID_19)
    assert text_values(finding_group, pydicom_codes.DCM.AlgorithmParameters) == [
        "threshold=0.5153", "calibration=logistic (Platt) scaling, T = 1.32, b = +1.50",
    ]


def test_report_without_an_operating_point_says_none_was_measured() -> None:
    report = parsed(build_report(read_source(PHILIPS_CR), Finding(0.2, 0.35), [], ALGORITHM))

    [line] = [item for item in qualitative_items(report) if item.ConceptNameCodeSequence[0].CodeValue == "OPPOINT"]
    assert "no validation sensitivity or specificity recorded for this threshold" in line.TextValue
    assert line.TextValue.endswith("probability not calibrated")


def qualitative_items(report: hd.sr.Comprehensive3DSR) -> list[Dataset]:
    """The items of the report's Qualitative Evaluations container."""
    [container] = find_content_items(report, name=codes.QUALITATIVE_EVALUATIONS, recursive=True)
    return list(container.ContentSequence)


def test_probability_is_rounded_to_a_tenth_of_a_percent_with_its_unit() -> None:
    report = parsed(build_report(read_source(PHILIPS_CR), Finding(0.06457494199276, 0.13), [], ALGORITHM))

    [group] = measurement_report(report).get_image_measurement_groups(finding_type=codes.COVID_19)

    [probability] = group.get_measurements(name=codes.PROBABILITY)
    assert probability.value == 6.5 and probability.unit == codes.PERCENT
    assert text_values(group, codes.COMMENT) == ["COVID-19 not suggested: 6.5 % (threshold 13 %)"]


def test_summary_says_finding_probability_threshold_status_and_model() -> None:
    report = parsed(build_report(read_source(PHILIPS_CR), Finding(0.712, 0.13), [], ALGORITHM))

    [summary] = [item for item in qualitative_items(report) if item.ConceptNameCodeSequence[0].CodeValue == "121111"]

    assert summary.TextValue == (
        "The AI model suggests COVID-19: probability 71.2 % >= operating threshold 13 %. "
        "Unverified AI research result, not for diagnostic use. Model: cxr_covid_classifier 0.3.1."
    )


def test_each_similar_case_is_a_line_with_label_similarity_date_and_its_image() -> None:
    cases = [
        SimilarStudy(*uids, distance=0.31, label="covid", similarity=0.952, study_date="20200312")
        for uids in [(c.study_instance_uid, c.series_instance_uid, c.sop_instance_uid, c.sop_class_uid) for c in SIMILAR[:1]]
    ] + [SimilarStudy(**{**SIMILAR[1].__dict__, "similarity": None})]
    cases.append(SimilarStudy("1.2.826.0.1.3680043.10.1.3", "1.2.826.0.1.3680043.10.1.3.1", "1.2.826.0.1.3680043.10.1.3.1.1",
                              SECONDARY_CAPTURE, 0.5, "unknown", similarity=0.81, study_date="20210105"))
    report = parsed(build_report(read_source(CANON_DX), Finding(0.3), cases, ALGORITHM))

    lines = [item for item in qualitative_items(report) if item.ConceptNameCodeSequence[0].CodeValue == "SIMCASE"]

    assert [line.TextValue for line in lines] == [
        "1. Known label: COVID-19; similarity 0.95; embedding distance 0.31; study date 2020-03-12",
        f"2. Known label: no COVID-19; embedding distance {SIMILAR[1].distance:.2f}",
        "3. Similar prior, no known label; similarity 0.81; embedding distance 0.50; study date 2021-01-05",
    ]
    for line, case in zip(lines, cases):
        [image] = line.ContentSequence
        assert image.RelationshipType == "INFERRED FROM" and image.ValueType == "IMAGE"
        assert image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == case.sop_instance_uid
    assert measurement_report(report).get_image_measurement_groups(finding_type=codes.SIMILAR_CASE) == []


def test_region_is_a_closed_polyline_the_probability_is_inferred_from() -> None:
    source = read_source(CANON_DX)
    region = ImageRegion(((100.5, 200.0), (100.5, 900.0), (1500.0, 900.0), (1500.0, 200.0)), "region of highest relevance")
    report = parsed(build_report(source, Finding(0.3), SIMILAR, ALGORITHM, region=region))

    [group] = measurement_report(report).get_image_measurement_groups(finding_type=codes.COVID_19)
    [probability] = find_content_items(group[0], name=codes.PROBABILITY)
    [scoord] = probability.ContentSequence

    assert (scoord.RelationshipType, scoord.ValueType, scoord.GraphicType) == ("INFERRED FROM", "SCOORD", "POLYLINE")
    points = [tuple(scoord.GraphicData[i : i + 2]) for i in range(0, len(scoord.GraphicData), 2)]
    assert points == [(200.0, 100.5), (900.0, 100.5), (900.0, 1500.0), (200.0, 1500.0), (200.0, 100.5)]  # (column, row), closed
    [image] = scoord.ContentSequence
    assert image.RelationshipType == "SELECTED FROM"
    assert image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert "Outlined on the image: region of highest relevance." in qualitative_items(report)[0].TextValue


def test_region_off_the_image_or_degenerate_is_refused() -> None:
    source = read_source(CANON_DX)
    outside = ImageRegion(((0.0, 0.0), (0.0, 10.0), (float(source.Rows) + 1, 10.0)), "too low")
    with pytest.raises(ValueError, match='"region" must lie on the source image'):
        build_report(source, Finding(0.3), [], ALGORITHM, region=outside)
    with pytest.raises(ValueError, match="at least three vertices"):
        ImageRegion(((0.0, 0.0), (1.0, 1.0)), "a line")


def test_every_container_is_separate_so_viewers_show_concept_names() -> None:
    report = pydicom.dcmread(io.BytesIO(encode(build(read_source(CANON_DX)))))

    def containers(item: Dataset) -> list[Dataset]:
        found = [item] if item.get("ValueType") == "CONTAINER" else []
        for child in item.get("ContentSequence", []):
            found += containers(child)
        return found

    found = containers(report)
    assert len(found) >= 4  # report, Imaging Measurements, the group, Qualitative Evaluations
    assert {c.ContinuityOfContent for c in found} == {"SEPARATE"}


def test_companions_are_listed_as_evidence_of_the_current_study() -> None:
    source = read_source(CANON_DX)
    companion = Dataset()
    companion.StudyInstanceUID, companion.SeriesInstanceUID = source.StudyInstanceUID, "1.2.826.0.1.3680043.10.9.77"
    companion.SOPInstanceUID, companion.SOPClassUID = "1.2.826.0.1.3680043.10.9.77.1", SECONDARY_CAPTURE
    report = parsed(build(source, companions=[companion]))

    current = report.get_evidence(current_procedure_only=True)

    assert (companion.StudyInstanceUID, companion.SeriesInstanceUID, companion.SOPInstanceUID, SECONDARY_CAPTURE) in current
    other_study = Dataset()
    other_study.StudyInstanceUID = "1.2.3"
    with pytest.raises(ValueError, match="companions"):
        build(source, companions=[other_study])


def test_evidence_lists_source_in_study_and_similar_images_with_their_study_and_series() -> None:
    source = read_source(CANON_DX)
    report = parsed(build(source))

    current = report.get_evidence(current_procedure_only=True)
    everything = report.get_evidence()

    assert current == [(source.StudyInstanceUID, source.SeriesInstanceUID, source.SOPInstanceUID, source.SOPClassUID)]
    for case in SIMILAR:
        assert (case.study_instance_uid, case.series_instance_uid, case.sop_instance_uid, case.sop_class_uid) in everything
    assert len(report.PertinentOtherEvidenceSequence) == len(SIMILAR)


def test_report_without_similar_cases_has_only_the_finding_group() -> None:
    report = parsed(build_report(read_source(PHILIPS_CR), Finding(0.1), [], ALGORITHM))

    assert len(measurement_report(report).get_image_measurement_groups()) == 1
    assert "PertinentOtherEvidenceSequence" not in report


def test_every_non_standard_coding_scheme_is_declared() -> None:
    report = parsed(build(read_source(PHILIPS_CR)))
    used: set[str] = set()

    def collect(dataset: Dataset) -> None:
        for element in dataset:
            if element.keyword == "CodingSchemeDesignator":
                used.add(element.value)
            elif element.VR == "SQ" and element.keyword != "CodingSchemeIdentificationSequence":
                for item in element.value:
                    collect(item)

    collect(report)
    declared = {item.CodingSchemeDesignator for item in report.CodingSchemeIdentificationSequence}

    assert {"99CXRAI", "99IHE"} <= used
    assert {d for d in used if d.startswith("99")} <= declared
    assert declared == set(codes.NON_STANDARD_SCHEME_DESIGNATORS)


def test_contributing_equipment_describes_the_algorithm_as_ihe_air_requires() -> None:
    report = parsed(build(read_source(PHILIPS_CR)))

    items = [
        item for item in report.ContributingEquipmentSequence
        if item.PurposeOfReferenceCodeSequence[0].CodeValue == "Newcode1"
    ]

    assert len(items) == 1
    [item] = items
    purpose = item.PurposeOfReferenceCodeSequence[0]
    assert (purpose.CodingSchemeDesignator, purpose.CodeMeaning) == ("99IHE", "Processing Algorithm")
    assert item.Manufacturer == "CXR AI node project"
    assert item.ManufacturerModelName == "cxr_covid_classifier"
    assert item.SoftwareVersions == "0.3.1"
    assert item.DeviceUID == ALGORITHM.device_uid


def test_observer_is_the_algorithm_as_a_device() -> None:
    report = parsed(build(read_source(PHILIPS_CR)))

    [observer] = measurement_report(report).get_observer_contexts(observer_type=codes.DEVICE_OBSERVER)

    attributes = observer.observer_identifying_attributes
    assert isinstance(attributes, hd.sr.DeviceObserverIdentifyingAttributes)
    assert attributes.uid == ALGORITHM.device_uid
    assert attributes.name == "cxr_covid_classifier"


def test_report_is_unverified_complete_and_in_a_new_series_of_the_source_study() -> None:
    source = read_source(PHILIPS_CR)
    report = parsed(build(source))

    assert report.VerificationFlag == "UNVERIFIED"
    assert report.CompletionFlag == "COMPLETE"
    assert report.PreliminaryFlag == "PRELIMINARY"
    assert report.Modality == "SR"
    assert report.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert report.SeriesDescription == DEFAULT_SERIES_DESCRIPTION
    assert report.StudyInstanceUID == source.StudyInstanceUID
    assert report.SeriesInstanceUID != source.SeriesInstanceUID
    assert report.SOPInstanceUID != source.SOPInstanceUID
    assert report.InstanceNumber == source.InstanceNumber
    assert report.Manufacturer == "CXR AI node project"


PATIENT_AND_STUDY = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
    "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName", "StudyDescription",
)


def test_patient_and_study_attributes_equal_the_sources() -> None:
    source = read_source(PHILIPS_CR)
    report = parsed(build(source))

    for keyword in PATIENT_AND_STUDY:
        assert report[keyword].value == source[keyword].value, keyword


def test_invalid_source_values_are_copied_empty_and_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    source = read_source(CANON_DX)
    birth_date, accession = source.PatientBirthDate, source.AccessionNumber
    caplog.set_level(logging.WARNING, logger="dicom_node.report.sr")

    report = parsed(build(source))

    assert report.PatientBirthDate == "" and report.AccessionNumber == ""
    assert report.PatientID == source.PatientID and report.PatientName == source.PatientName
    assert source.PatientBirthDate == birth_date and source.AccessionNumber == accession  # untouched
    assert "PatientBirthDate" in caplog.text and "AccessionNumber" in caplog.text
    assert birth_date not in caplog.text and accession not in caplog.text


def test_missing_type2_source_attributes_are_written_empty() -> None:
    source = read_source(FODICOM_CR)
    assert "PatientID" not in source and "StudyDate" not in source

    report = parsed(build(source))

    assert report.PatientID == "" and report.StudyDate == "" and report.StudyID == ""
    assert "PatientID" not in source


# --- UIDs ------------------------------------------------------------------------------------


def test_device_uid_changes_when_weights_change_and_only_then() -> None:
    same_weights = AlgorithmInfo("other", "9.9", WEIGHTS_A, "Someone else")
    new_weights = AlgorithmInfo(ALGORITHM.name, ALGORITHM.version, WEIGHTS_B, ALGORITHM.manufacturer)

    assert ALGORITHM.device_uid == same_weights.device_uid
    assert ALGORITHM.device_uid != new_weights.device_uid
    assert ALGORITHM.device_uid.is_valid and new_weights.device_uid.is_valid


def test_rebuilt_report_keeps_its_uids_so_the_pacs_stores_it_once() -> None:
    source = read_source(PHILIPS_CR)

    first, second = build(source), build(source, probability=0.1)

    assert (first.SOPInstanceUID, first.SeriesInstanceUID) == (second.SOPInstanceUID, second.SeriesInstanceUID)


@pytest.mark.parametrize(
    ("finding", "algorithm"),
    [
        (Finding(0.73, threshold=0.6), ALGORITHM),
        (Finding(0.73), AlgorithmInfo(ALGORITHM.name, "0.3.2", WEIGHTS_A, ALGORITHM.manufacturer)),
        (Finding(0.73), AlgorithmInfo(ALGORITHM.name, ALGORITHM.version, WEIGHTS_B, ALGORITHM.manufacturer)),
    ],
    ids=["threshold", "version", "weights"],
)
def test_new_threshold_version_or_weights_give_a_new_report_uid(finding: Finding, algorithm: AlgorithmInfo) -> None:
    source = read_source(PHILIPS_CR)

    reference = build(source)
    changed = build_report(source, finding, SIMILAR, algorithm)

    assert changed.SOPInstanceUID != reference.SOPInstanceUID


def test_explicit_uids_numbers_and_description_are_used() -> None:
    report = build(
        read_source(PHILIPS_CR), series_instance_uid="1.2.3.4", sop_instance_uid="1.2.3.4.5",
        series_number=42, instance_number=7, series_description="AI triage",
    )

    assert (report.SeriesInstanceUID, report.SOPInstanceUID) == ("1.2.3.4", "1.2.3.4.5")
    assert (report.SeriesNumber, report.InstanceNumber, report.SeriesDescription) == (42, 7, "AI triage")


def test_derived_uid_separates_its_parts() -> None:
    assert derived_uid("ab", "c") != derived_uid("a", "bc")
    assert len(derived_uid("x" * 1000)) <= 64


# --- Input validation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: Finding(1.5), ValueError, 'Argument "probability" must be in \\[0, 1\\]'),
        (lambda: Finding(-0.01), ValueError, 'Argument "probability" must be in \\[0, 1\\]'),
        (lambda: Finding(float("nan")), ValueError, 'Argument "probability" must be in \\[0, 1\\]'),
        (lambda: Finding(True), TypeError, 'Argument "probability" must be a number'),
        (lambda: Finding("0.5"), TypeError, 'Argument "probability" must be a number'),  # type: ignore[arg-type]  # wrong type on purpose
        (lambda: Finding(0.5, threshold=1.01), ValueError, 'Argument "threshold" must be in \\[0, 1\\]'),
        (lambda: AlgorithmInfo("n", "1", "ABC", "m"), ValueError, 'Argument "weights_sha256"'),
        (lambda: AlgorithmInfo("n", "1", WEIGHTS_A.upper(), "m"), ValueError, 'Argument "weights_sha256"'),
        (lambda: AlgorithmInfo("", "1", WEIGHTS_A, "m"), ValueError, 'Argument "name"'),
        (lambda: AlgorithmInfo("n", "x" * 65, WEIGHTS_A, "m"), ValueError, 'Argument "version"'),
        (lambda: AlgorithmInfo("n", "1", WEIGHTS_A, "a\\b"), ValueError, 'Argument "manufacturer"'),
        (lambda: AlgorithmInfo("n", 1, WEIGHTS_A, "m"), TypeError, 'Argument "version"'),  # type: ignore[arg-type]  # wrong type on purpose
        (lambda: SimilarStudy("1.2", "1.2.3", "not a uid", SECONDARY_CAPTURE, 0.1, "covid"), ValueError,
         'Argument "sop_instance_uid" must be a valid UID'),
        (lambda: SimilarStudy("1.2", "1.2.3", "1.2.3.4", SECONDARY_CAPTURE, -0.1, "covid"), ValueError,
         'Argument "distance" must be finite and >= 0'),
        (lambda: SimilarStudy("1.2", "1.2.3", "1.2.3.4", SECONDARY_CAPTURE, float("inf"), "covid"), ValueError,
         'Argument "distance" must be finite and >= 0'),
        (lambda: SimilarStudy("1.2", "1.2.3", "1.2.3.4", SECONDARY_CAPTURE, 0.1, "pneumonia"), ValueError,
         'Argument "label" must be one of "covid", "non_covid", "unknown"'),
    ],
)
def test_invalid_inputs_are_refused_naming_the_argument(make, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        make()


def test_source_without_uids_is_refused() -> None:
    source = read_source(PHILIPS_CR)
    del source.SOPInstanceUID

    with pytest.raises(ValueError, match='Argument "source" lacks SOPInstanceUID'):
        build(source)


def test_source_must_be_a_dataset() -> None:
    with pytest.raises(TypeError, match='Argument "source"'):
        build_report(str(DICOM_DIR / PHILIPS_CR), Finding(0.5), [], ALGORITHM)  # type: ignore[arg-type]


def test_similar_cases_must_be_distinct_images_other_than_the_source() -> None:
    source = read_source(PHILIPS_CR)
    itself = SimilarStudy(source.StudyInstanceUID, source.SeriesInstanceUID, source.SOPInstanceUID,
                          source.SOPClassUID, 0.0, "covid")

    with pytest.raises(ValueError, match='Argument "similar" must list distinct images'):
        build_report(source, Finding(0.5), [SIMILAR[0], SIMILAR[0]], ALGORITHM)
    with pytest.raises(ValueError, match='Argument "similar" must list distinct images'):
        build_report(source, Finding(0.5), [itself], ALGORITHM)


def test_report_series_must_differ_from_the_source_series() -> None:
    source = read_source(PHILIPS_CR)

    with pytest.raises(ValueError, match='Argument "series_instance_uid" must differ'):
        build(source, series_instance_uid=source.SeriesInstanceUID)


@pytest.mark.parametrize("numbers", [{"series_number": 0}, {"instance_number": -1}])
def test_series_and_instance_numbers_must_be_positive(numbers: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="should be a positive integer"):
        build(read_source(PHILIPS_CR), **numbers)

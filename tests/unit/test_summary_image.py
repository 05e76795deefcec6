"""The summary Secondary Capture: the summary picture of a real radiograph, in the source's study.

Validity under dicom3tools' ``dciodvfy`` is checked in
``tests/integration/test_derived_validators.py``.
"""

from __future__ import annotations

import io
import logging

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

from dicom_node.report import codes
from dicom_node.report.segmentation import segmentation_series_instance_uid, segmentation_sop_instance_uid
from dicom_node.report.sr import AlgorithmInfo, Finding, report_series_instance_uid, report_sop_instance_uid
from dicom_node.report.summary_image import (
    DEFAULT_SERIES_DESCRIPTION,
    DEFAULT_SERIES_NUMBER,
    build_summary_image,
    summary_series_instance_uid,
    summary_sop_instance_uid,
)
from dicom_node.report.summary_picture import banner_lines, render_summary
from testkit.derived import display_pixels, lung_probability, relevance_blob
from testkit.sr import ALGORITHM, CANON_DX, FODICOM_CR, PHILIPS_CR, WEIGHTS_B, encode, read_source

pytestmark = pytest.mark.usefixtures("strict_writing")  # any invalid value set fails the test

FINDING = Finding(0.71, threshold=0.5)


def picture(source_file: str = CANON_DX, finding: Finding = FINDING) -> np.ndarray:
    """The summary picture of a real radiograph with synthetic maps, at 512 px for speed."""
    film = display_pixels(source_file)
    rows, cols = film.shape
    return render_summary(
        film, relevance_blob(rows, cols), lung_probability(rows, cols), banner_lines(finding, ALGORITHM), max_size=512
    )


def build(source: Dataset, finding: Finding = FINDING, algorithm: AlgorithmInfo = ALGORITHM, **kwargs):
    return build_summary_image(source, picture(), finding, algorithm, **kwargs)


def read_back(dataset: Dataset) -> Dataset:
    return pydicom.dcmread(io.BytesIO(encode(dataset)))


# --- Pixels ----------------------------------------------------------------------------------


def test_pixels_round_trip_through_a_dicom_file() -> None:
    pixels = picture()

    image = read_back(build_summary_image(read_source(CANON_DX), pixels, FINDING, ALGORITHM))

    assert image.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert (image.PhotometricInterpretation, image.SamplesPerPixel, image.BitsAllocated) == ("RGB", 3, 8)
    assert (image.Rows, image.Columns) == pixels.shape[:2]
    np.testing.assert_array_equal(image.pixel_array, pixels)


# --- Study, series, references ---------------------------------------------------------------


def test_summary_is_in_the_source_study_with_its_patient_in_a_series_of_its_own() -> None:
    source = read_source(PHILIPS_CR)

    image = read_back(build(source))

    assert image.SOPClassUID == SecondaryCaptureImageStorage
    assert image.StudyInstanceUID == source.StudyInstanceUID
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyID", "AccessionNumber", "StudyDate"):
        assert image[keyword].value == source[keyword].value, keyword
    assert image.SeriesInstanceUID not in (source.SeriesInstanceUID, report_series_instance_uid(source, ALGORITHM))
    assert (image.SeriesNumber, image.SeriesDescription) == (DEFAULT_SERIES_NUMBER, DEFAULT_SERIES_DESCRIPTION)
    assert image.Modality == "OT"


def test_source_image_sequence_references_the_source() -> None:
    source = read_source(CANON_DX)

    [item] = read_back(build(source)).SourceImageSequence

    assert (item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID) == (source.SOPClassUID, source.SOPInstanceUID)
    [purpose] = item.PurposeOfReferenceCodeSequence
    assert (purpose.CodeValue, purpose.CodingSchemeDesignator) == (
        codes.SOURCE_IMAGE_FOR_PROCESSING.value, codes.SOURCE_IMAGE_FOR_PROCESSING.scheme_designator,
    )


def test_image_says_it_is_derived_with_burned_in_text() -> None:
    image = read_back(build(read_source(CANON_DX)))

    assert image.ImageType == ["DERIVED", "SECONDARY"]
    assert image.ConversionType == "WSD"
    assert image.BurnedInAnnotation == "YES"
    assert image.RecognizableVisualFeatures == "YES"
    assert "heatmap" in image.DerivationDescription
    assert image.ContentDate and image.ContentTime


def test_patient_orientation_is_the_source_s_or_empty() -> None:
    canon = read_source(CANON_DX)
    assert list(read_back(build(canon)).PatientOrientation) == list(canon.PatientOrientation)

    oblique = read_source(CANON_DX)
    oblique.PatientOrientation = ["LP", "FA"]
    assert list(read_back(build(oblique)).PatientOrientation) == ["LP", "FA"]

    unknown = read_source(FODICOM_CR)
    assert "PatientOrientation" not in unknown
    assert read_back(build(unknown)).PatientOrientation in ("", None)


def test_equipment_is_the_algorithm_with_its_device_uid() -> None:
    image = read_back(build(read_source(CANON_DX), institution_name="Test Hospital"))

    assert (image.Manufacturer, image.ManufacturerModelName, image.SoftwareVersions) == (
        ALGORITHM.manufacturer, ALGORITHM.manufacturer_model_name, ALGORITHM.version,
    )
    assert image.InstitutionName == "Test Hospital"
    [algorithm_item] = [
        item for item in image.ContributingEquipmentSequence
        if item.PurposeOfReferenceCodeSequence[0].CodeValue == codes.PROCESSING_ALGORITHM.value
    ]
    assert algorithm_item.DeviceUID == ALGORITHM.device_uid
    assert algorithm_item.SoftwareVersions == ALGORITHM.version


def test_instance_number_is_the_source_s() -> None:
    source = read_source(PHILIPS_CR)
    source.InstanceNumber = 7
    assert build(source).InstanceNumber == 7
    del source.InstanceNumber
    assert build(source).InstanceNumber == 1


# --- UIDs ------------------------------------------------------------------------------------


def test_uids_are_deterministic() -> None:
    source = read_source(CANON_DX)

    first, second = build(source), build(source)

    assert first.SOPInstanceUID == second.SOPInstanceUID == summary_sop_instance_uid(source, FINDING, ALGORITHM)
    assert first.SeriesInstanceUID == second.SeriesInstanceUID == summary_series_instance_uid(source, ALGORITHM)


@pytest.mark.parametrize(
    ("finding", "algorithm"),
    [
        (Finding(0.71, threshold=0.4), ALGORITHM),
        (FINDING, AlgorithmInfo(ALGORITHM.name, "9.9.9", ALGORITHM.weights_sha256, ALGORITHM.manufacturer)),
        (FINDING, AlgorithmInfo(ALGORITHM.name, ALGORITHM.version, WEIGHTS_B, ALGORITHM.manufacturer)),
    ],
)
def test_other_threshold_version_or_weights_give_another_sop_instance_uid(finding: Finding, algorithm: AlgorithmInfo) -> None:
    source = read_source(CANON_DX)

    assert summary_sop_instance_uid(source, finding, algorithm) != summary_sop_instance_uid(source, FINDING, ALGORITHM)


def test_probability_alone_does_not_change_the_uid() -> None:
    # A rebuild of the same result on the same weights replaces the picture in the PACS.
    source = read_source(CANON_DX)

    assert summary_sop_instance_uid(source, Finding(0.1, 0.5), ALGORITHM) == summary_sop_instance_uid(source, FINDING, ALGORITHM)


def test_report_summary_and_segmentation_of_one_source_have_distinct_uids() -> None:
    source = read_source(CANON_DX)

    series = {
        report_series_instance_uid(source, ALGORITHM),
        summary_series_instance_uid(source, ALGORITHM),
        segmentation_series_instance_uid(source, ALGORITHM),
        source.SeriesInstanceUID,
    }
    instances = {
        report_sop_instance_uid(source, FINDING, ALGORITHM),
        summary_sop_instance_uid(source, FINDING, ALGORITHM),
        segmentation_sop_instance_uid(source, ALGORITHM),
        source.SOPInstanceUID,
    }

    assert len(series) == 4 and len(instances) == 4


# --- Tolerant decoding of the source ----------------------------------------------------------


@pytest.mark.parametrize("source_file", [CANON_DX, FODICOM_CR])
def test_source_with_missing_or_invalid_patient_attributes_gives_them_empty(
    source_file: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Canon: hashed birth date, 56-character accession number; fo-dicom: no PatientID, StudyDate, ...
    with caplog.at_level(logging.WARNING, logger="dicom_node.report.source"):
        image = read_back(build(read_source(source_file)))

    assert "copied empty" in caplog.text
    for keyword in ("PatientID", "PatientBirthDate", "StudyDate", "StudyID", "AccessionNumber"):
        assert keyword in image
    if source_file == CANON_DX:
        assert image.PatientBirthDate == "" and image.AccessionNumber == ""


def test_source_is_left_untouched() -> None:
    source = read_source(CANON_DX)
    before = source.to_json_dict()

    build(source)

    assert source.to_json_dict() == before


# --- Arguments -------------------------------------------------------------------------------


def test_bad_arguments_are_refused() -> None:
    source = read_source(CANON_DX)
    with pytest.raises(TypeError, match='"pixels"'):
        build_summary_image(source, picture().astype(np.uint16), FINDING, ALGORITHM)
    with pytest.raises(ValueError, match='"pixels"'):
        build_summary_image(source, picture()[:, :, 0], FINDING, ALGORITHM)
    with pytest.raises(TypeError, match='"finding"'):
        build_summary_image(source, picture(), 0.7, ALGORITHM)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match='"series_description"'):
        build(source, series_description="")
    del source.SOPInstanceUID
    with pytest.raises(ValueError, match="SOPInstanceUID"):
        build(source)

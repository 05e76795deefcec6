"""The lung Segmentation: one BINARY segment on a real radiograph's grid, without a Frame of Reference.

Validity under dicom3tools' ``dciodvfy`` is checked in
``tests/integration/test_derived_validators.py``.
"""

from __future__ import annotations

import io
import logging

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as pydicom_codes
from pydicom.uid import ExplicitVRLittleEndian, SegmentationStorage

from dicom_node.report import codes
from dicom_node.report.segmentation import (
    CONTENT_LABEL,
    DEFAULT_SERIES_DESCRIPTION,
    DEFAULT_SERIES_NUMBER,
    build_lung_segmentation,
    segmentation_series_instance_uid,
    segmentation_sop_instance_uid,
)
from dicom_node.report.sr import AlgorithmInfo
from testkit.derived import ellipses
from testkit.sr import ALGORITHM, CANON_DX, FODICOM_CR, PHILIPS_CR, WEIGHTS_B, encode, read_source

pytestmark = pytest.mark.usefixtures("strict_writing")  # any invalid value set fails the test


def lungs(source: Dataset) -> np.ndarray:
    return ellipses(source.Rows, source.Columns)


def build(source: Dataset, algorithm: AlgorithmInfo = ALGORITHM, **kwargs) -> hd.seg.Segmentation:
    return build_lung_segmentation(source, lungs(source), algorithm, **kwargs)


def encoded(segmentation: Dataset) -> io.BytesIO:
    return io.BytesIO(encode(segmentation))


# --- Pixels ----------------------------------------------------------------------------------


@pytest.mark.parametrize("source_file", [CANON_DX, PHILIPS_CR])
def test_mask_round_trips_through_a_dicom_file(source_file: str) -> None:
    source = read_source(source_file)
    mask = lungs(source)

    data = encoded(build_lung_segmentation(source, mask, ALGORITHM))

    read_back = pydicom.dcmread(data)
    assert read_back.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert (read_back.NumberOfFrames, read_back.BitsAllocated) == (1, 1)
    np.testing.assert_array_equal(read_back.pixel_array.astype(bool), mask)


def test_empty_mask_keeps_its_one_empty_frame() -> None:
    source = read_source(PHILIPS_CR)
    empty = np.zeros((source.Rows, source.Columns), bool)

    read_back = pydicom.dcmread(encoded(build_lung_segmentation(source, empty, ALGORITHM)))

    assert read_back.NumberOfFrames == 1
    assert not read_back.pixel_array.any()


# --- Projection radiograph: no Frame of Reference ----------------------------------------------


def test_segmentation_of_a_radiograph_has_no_frame_of_reference_or_plane_position() -> None:
    source = read_source(CANON_DX)
    assert "FrameOfReferenceUID" not in source

    segmentation = pydicom.dcmread(encoded(build(source)))

    assert "FrameOfReferenceUID" not in segmentation
    [frame] = segmentation.PerFrameFunctionalGroupsSequence
    assert "PlanePositionSequence" not in frame
    shared = segmentation.SharedFunctionalGroupsSequence[0]
    assert "PlaneOrientationSequence" not in shared
    # The source's spacing (OHIF v3 needs Pixel Measures), and no Slice Thickness: a radiograph has none.
    [measures] = shared.PixelMeasuresSequence
    source_spacing = source.get("PixelSpacing") or source.ImagerPixelSpacing
    assert [float(v) for v in measures.PixelSpacing] == [float(v) for v in source_spacing]
    assert "SliceThickness" not in measures
    assert list(segmentation.PatientOrientation) == list(source.PatientOrientation)


def test_the_frame_is_derived_from_the_source_with_locations_preserved() -> None:
    source = read_source(CANON_DX)

    [frame] = pydicom.dcmread(encoded(build(source))).PerFrameFunctionalGroupsSequence

    [derivation] = frame.DerivationImageSequence
    [item] = derivation.SourceImageSequence
    assert (item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID) == (source.SOPClassUID, source.SOPInstanceUID)
    assert item.SpatialLocationsPreserved == "YES"


# --- Segment and equipment ------------------------------------------------------------------


def test_one_automatic_lung_segment_identified_by_the_algorithm() -> None:
    # Read with pydicom: highdicom 0.28.2's segread wants a Slice Thickness, which a radiograph has not.
    segmentation = pydicom.dcmread(encoded(build(read_source(CANON_DX))))

    assert segmentation.SegmentationType == "BINARY"
    [segment] = segmentation.SegmentSequence
    assert segment.SegmentLabel == "Lung"
    category = segment.SegmentedPropertyCategoryCodeSequence[0]
    assert (category.CodeValue, category.CodingSchemeDesignator) == (codes.ANATOMICAL_STRUCTURE.value, "SCT")
    kind = segment.SegmentedPropertyTypeCodeSequence[0]
    assert (kind.CodeValue, kind.CodingSchemeDesignator) == (codes.LUNG.value, "SCT")
    assert segment.SegmentAlgorithmType == "AUTOMATIC"
    [algorithm] = segment.SegmentationAlgorithmIdentificationSequence
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == (ALGORITHM.name, ALGORITHM.version)
    assert algorithm.AlgorithmFamilyCodeSequence[0].CodeValue == pydicom_codes.DCM.ArtificialIntelligence.value


def test_series_content_and_equipment() -> None:
    source = read_source(PHILIPS_CR)

    segmentation = pydicom.dcmread(encoded(build(source, institution_name="Test Hospital")))

    assert segmentation.SOPClassUID == SegmentationStorage
    assert segmentation.StudyInstanceUID == source.StudyInstanceUID
    assert segmentation.PatientID == source.PatientID
    assert (segmentation.SeriesNumber, segmentation.SeriesDescription) == (DEFAULT_SERIES_NUMBER, DEFAULT_SERIES_DESCRIPTION)
    assert segmentation.ContentLabel == CONTENT_LABEL
    assert segmentation.ContentDescription
    assert (segmentation.Manufacturer, segmentation.ManufacturerModelName, segmentation.SoftwareVersions) == (
        ALGORITHM.manufacturer, ALGORITHM.manufacturer_model_name, ALGORITHM.version,
    )
    assert segmentation.DeviceSerialNumber == ALGORITHM.weights_sha256
    assert segmentation.InstitutionName == "Test Hospital"
    [algorithm_item] = [
        item for item in segmentation.ContributingEquipmentSequence
        if item.PurposeOfReferenceCodeSequence[0].CodeValue == codes.PROCESSING_ALGORITHM.value
    ]
    assert algorithm_item.DeviceUID == ALGORITHM.device_uid


# --- UIDs ------------------------------------------------------------------------------------


def test_uids_are_deterministic_and_follow_version_and_weights() -> None:
    source = read_source(CANON_DX)
    first, second = build(source), build(source)
    assert first.SOPInstanceUID == second.SOPInstanceUID == segmentation_sop_instance_uid(source, ALGORITHM)
    assert first.SeriesInstanceUID == second.SeriesInstanceUID == segmentation_series_instance_uid(source, ALGORITHM)

    for other in (
        AlgorithmInfo(ALGORITHM.name, "9.9.9", ALGORITHM.weights_sha256, ALGORITHM.manufacturer),
        AlgorithmInfo(ALGORITHM.name, ALGORITHM.version, WEIGHTS_B, ALGORITHM.manufacturer),
    ):
        assert segmentation_sop_instance_uid(source, other) != first.SOPInstanceUID
    assert first.SeriesInstanceUID != source.SeriesInstanceUID


# --- Tolerant decoding of the source ----------------------------------------------------------


@pytest.mark.parametrize("source_file", [CANON_DX, FODICOM_CR])
def test_source_with_missing_or_invalid_patient_attributes_still_builds(
    source_file: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="dicom_node.report.source"):
        segmentation = pydicom.dcmread(encoded(build(read_source(source_file))))

    assert "copied empty" in caplog.text
    for keyword in ("PatientID", "PatientBirthDate", "StudyDate", "StudyID", "AccessionNumber"):
        assert keyword in segmentation


def test_zero_pixel_spacing_of_a_real_cr_is_not_copied() -> None:
    source = read_source(PHILIPS_CR)
    assert [float(v) for v in source.PixelSpacing] == [0.0, 0.0]  # as stored in the file

    segmentation = pydicom.dcmread(encoded(build(source)))

    shared = segmentation.SharedFunctionalGroupsSequence[0]
    spacings = [[float(v) for v in m.PixelSpacing] for m in shared.get("PixelMeasuresSequence", [])]
    assert [0.0, 0.0] not in spacings
    imager = [float(v) for v in source.get("ImagerPixelSpacing") or ()]
    assert spacings == ([imager] if imager and min(imager) > 0 else [])
    assert "PixelSpacing" in source  # the caller's data set is left untouched


# --- Arguments -------------------------------------------------------------------------------


def test_bad_arguments_are_refused() -> None:
    source = read_source(CANON_DX)
    with pytest.raises(TypeError, match='"lung_mask"'):
        build_lung_segmentation(source, lungs(source).astype(np.uint8), ALGORITHM)
    with pytest.raises(ValueError, match='"lung_mask"'):
        build_lung_segmentation(source, lungs(source)[:-1], ALGORITHM)
    with pytest.raises(TypeError, match='"algorithm"'):
        build_lung_segmentation(source, lungs(source), "unet")  # type: ignore[arg-type]
    multi = read_source(CANON_DX)
    multi.NumberOfFrames = 2
    with pytest.raises(ValueError, match="single-frame"):
        build(multi)

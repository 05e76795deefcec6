"""One analysed image's objects: the region the report outlines, and the report with its companions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from pydicom.dataset import Dataset

from dicom_node.analyse.image_evidence import LUNG_FIELDS_REGION, RELEVANCE_REGION, image_evidence, lung_box
from dicom_node.report.result import ImageEvidence, build_result
from dicom_node.report.sr import Finding, ImageRegion
from monai_app.transforms.geometry import model_grid
from monai_app.transforms.normalisation import Box
from testkit.derived import display_pixels, lung_probability, relevance_blob
from testkit.sr import ALGORITHM, CANON_DX, SIMILAR, read_source

SC, SEG, KO = "1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.88.59"


@dataclass(frozen=True)
class Prepared:
    """What the worker reads of a prepared image (the bundle's PreparedImage has the same fields)."""

    source_image: np.ndarray | None
    lung_probability: np.ndarray
    grid: object | None


def _prepared(rows: int = 400, columns: int = 300) -> Prepared:
    grid = model_grid((rows, columns), Box(20, rows - 20, 10, columns - 10), (224, 224))
    return Prepared(np.zeros((rows, columns), np.uint8), lung_probability(224, 224).astype(np.float32), grid)


def test_lung_box_is_the_bounding_box_of_the_lung_pixels() -> None:
    lung = np.zeros((10, 10))
    lung[2:6, 3:8] = 0.9
    box = lung_box(lung)
    assert box is not None and box.tolist() == [[2, 3], [2, 8], [6, 8], [6, 3]]
    assert lung_box(np.zeros((10, 10))) is None


def test_region_is_where_the_classifier_looked_mapped_onto_the_source() -> None:
    prepared = _prepared()
    relevance = relevance_blob(224, 224, centre=(0.5, 0.25), radius=0.1).astype(np.float32)

    evidence = image_evidence(prepared, relevance)  # type: ignore[arg-type]

    assert evidence is not None and evidence.region is not None
    assert evidence.region.description == RELEVANCE_REGION
    points = np.array(evidence.region.points)
    # The blob's centre, (112, 56) on the model grid, is (row 200, column 60) on the 400 x 300 source:
    # content 360 x 280 padded to a square of 360 (40 columns each side), scale 360 / 224.
    assert points[:, 0].mean() == pytest.approx(20 + 112.0 * 360 / 224, abs=3)
    assert points[:, 1].mean() == pytest.approx(10 - 40 + 56.0 * 360 / 224, abs=3)
    assert evidence.relevance is not None and evidence.relevance.shape == (400, 300)
    assert evidence.lung is not None and evidence.lung.shape == (400, 300)


def test_without_relevance_the_region_is_the_lung_fields_box_inside_the_image() -> None:
    evidence = image_evidence(_prepared(), None)  # type: ignore[arg-type]

    assert evidence is not None and evidence.region is not None and evidence.relevance is None
    assert evidence.region.description == LUNG_FIELDS_REGION
    assert evidence.region.fits(400, 300)


def test_an_analyser_without_source_image_gives_no_evidence() -> None:
    prepared = Prepared(None, np.zeros((224, 224), np.float32), None)
    assert image_evidence(prepared, None) is None  # type: ignore[arg-type]


def _evidence(source: Dataset) -> ImageEvidence:
    pixels = display_pixels(CANON_DX)
    rows, columns = pixels.shape
    region = ImageRegion(((100.0, 100.0), (100.0, 600.0), (900.0, 600.0), (900.0, 100.0)), RELEVANCE_REGION)
    return ImageEvidence(pixels, relevance_blob(rows, columns), lung_probability(rows, columns), region)


def test_result_is_report_plus_summary_image_segmentation_and_key_images_in_sending_order() -> None:
    source = read_source(CANON_DX)

    result = build_result(source, Finding(0.3, 0.13), SIMILAR, ALGORITHM, _evidence(source), lung_segmentation=True)

    assert [kind for kind, _ in result.companions] == ["sc", "seg", "ko"]
    assert [d.SOPClassUID for _, d in result.companions] == [SC, SEG, KO]
    uids = {result.report.SOPInstanceUID, *(d.SOPInstanceUID for _, d in result.companions)}
    assert len(uids) == 4
    evidence = {str(i.ReferencedSOPInstanceUID) for s in result.report.CurrentRequestedProcedureEvidenceSequence
                for r in s.ReferencedSeriesSequence for i in r.ReferencedSOPSequence}
    # The report lists the images it was made with, not the key-image selection of its similar cases.
    assert {d.SOPInstanceUID for kind, d in result.companions if kind != "ko"} <= evidence
    assert result.companions[2][1].SOPInstanceUID not in evidence
    summary = result.companions[0][1]
    assert max(summary.Rows, summary.Columns) <= 1024 and summary.BurnedInAnnotation == "YES"


def test_switches_leave_out_the_summary_image_and_the_segmentation() -> None:
    source = read_source(CANON_DX)

    result = build_result(
        source, Finding(0.3), SIMILAR, ALGORITHM, _evidence(source), summary_image=False, key_images=False
    )
    assert result.companions == ()
    bare = build_result(source, Finding(0.3), SIMILAR, ALGORITHM, None, lung_segmentation=True)
    assert [kind for kind, _ in bare.companions] == ["ko"], "the key images need no image evidence"
    assert "SCOORD" not in str(bare.report)
    assert build_result(source, Finding(0.3), [], ALGORITHM, None).companions == (), "no similar images, no KOS"


def test_rebuilt_result_has_the_same_uids() -> None:
    source = read_source(CANON_DX)

    first, second = (build_result(source, Finding(0.3), SIMILAR, ALGORITHM, _evidence(source), lung_segmentation=True)
                     for _ in range(2))

    assert first.report.SOPInstanceUID == second.report.SOPInstanceUID
    assert [d.SOPInstanceUID for _, d in first.companions] == [d.SOPInstanceUID for _, d in second.companions]

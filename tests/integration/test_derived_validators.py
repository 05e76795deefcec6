"""The summary Secondary Capture, the lung Segmentation and the similar-image KOS pass ``dciodvfy``.

Each object is built from a real CR/DX header (the summary from a real radiograph's
pixels), written, and checked: no errors, and every warning one of the justified ones
below. The content checks are in ``tests/unit/test_summary_image.py``,
``tests/unit/test_segmentation.py`` and ``tests/unit/test_key_images.py``.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from dicom_node.report.key_images import build_similar_images_selection
from dicom_node.report.segmentation import build_lung_segmentation
from dicom_node.report.sr import Finding
from dicom_node.report.summary_image import build_summary_image
from dicom_node.report.summary_picture import banner_lines, render_summary
from testkit.dciodvfy import JUSTIFIED_FOR_EVERY_OBJECT, dciodvfy_messages, unexplained
from testkit.derived import display_pixels, ellipses, lung_probability, relevance_blob
from testkit.sr import ALGORITHM, ALL_SOURCES, CANON_DX, SIMILAR, read_source, write

pytestmark = pytest.mark.usefixtures("strict_writing")  # any invalid value set fails the test

# dciodvfy warnings that are acceptable, and why: those of every object the node makes.
JUSTIFIED_WARNINGS = JUSTIFIED_FOR_EVERY_OBJECT


def summary(source_file: str, max_size: int = 512):
    film = display_pixels(source_file)
    rows, cols = film.shape
    finding = Finding(0.71)
    pixels = render_summary(
        film, relevance_blob(rows, cols), lung_probability(rows, cols), banner_lines(finding, ALGORITHM),
        max_size=max_size,
    )
    return build_summary_image(read_source(source_file), pixels, finding, ALGORITHM)


@pytest.mark.parametrize("source_file", ALL_SOURCES)
def test_summary_image_has_no_dciodvfy_errors_and_only_justified_warnings(source_file: str, tmp_path: Path) -> None:
    errors, warnings = dciodvfy_messages(write(summary(source_file), tmp_path / "sc.dcm"))

    assert errors == []
    assert unexplained(warnings, JUSTIFIED_WARNINGS) == []


def test_full_size_summary_image_has_no_dciodvfy_errors(tmp_path: Path) -> None:
    errors, warnings = dciodvfy_messages(write(summary(CANON_DX, max_size=2048), tmp_path / "sc.dcm"))

    assert errors == []
    assert unexplained(warnings, JUSTIFIED_WARNINGS) == []


def test_summary_image_of_a_source_without_body_part_gives_laterality_empty(tmp_path: Path) -> None:
    # Laterality is Type 2C for a paired body part; with none known it is written empty,
    # which dciodvfy accepts with this one warning.
    source = read_source(CANON_DX)
    del source.BodyPartExamined
    image = build_summary_image(source, summary(CANON_DX).pixel_array, Finding(0.2), ALGORITHM)

    errors, warnings = dciodvfy_messages(write(image, tmp_path / "sc.dcm"))

    assert errors == []
    assert unexplained(warnings, JUSTIFIED_WARNINGS) == [
        "Warning - is only permitted to be empty when actually unknown; should be absent (not empty) if an "
        "unpaired body part, and have a value if a paired body part - attribute <Laterality>"
    ]


@pytest.mark.parametrize("source_file", ALL_SOURCES)
def test_lung_segmentation_has_no_dciodvfy_errors_and_only_justified_warnings(source_file: str, tmp_path: Path) -> None:
    source = read_source(source_file)
    segmentation = build_lung_segmentation(source, ellipses(source.Rows, source.Columns), ALGORITHM)

    errors, warnings = dciodvfy_messages(write(segmentation, tmp_path / "seg.dcm"))

    assert errors == []
    assert unexplained(warnings, JUSTIFIED_WARNINGS) == []


@pytest.mark.parametrize("source_file", ALL_SOURCES)
def test_key_image_selection_has_no_dciodvfy_errors_and_only_justified_warnings(source_file: str, tmp_path: Path) -> None:
    # dciodvfy does not test the Identical Documents Sequence condition (a KOS referencing
    # several studies); the node leaves it out on purpose (dicom_node/report/key_images.py).
    document = build_similar_images_selection(read_source(source_file), SIMILAR, ALGORITHM)

    errors, warnings = dciodvfy_messages(write(document, tmp_path / "ko.dcm"))

    assert errors == []
    assert unexplained(warnings, JUSTIFIED_WARNINGS) == []


def test_key_image_selection_reads_in_dsrdump(tmp_path: Path) -> None:
    path = write(build_similar_images_selection(read_source(CANON_DX), SIMILAR, ALGORITHM), tmp_path / "ko.dcm")

    result = subprocess.run(["dsrdump", "+Pl", str(path)], capture_output=True, text=True, timeout=60)

    assert result.returncode == 0, result.stderr
    assert "Key Object Selection Document" in result.stdout and '"Of Interest"' in result.stdout
    assert result.stdout.count("contains IMAGE") == len(SIMILAR)
    assert "Similar prior images found by cxr_covid_classifier 0.3.1" in result.stdout


def test_dciodvfy_reports_errors_on_broken_objects(tmp_path: Path) -> None:
    # The checks above can fail: dciodvfy flags a missing Conversion Type and a missing
    # Patient Orientation (Type 2C without a Frame of Reference).
    image = summary(CANON_DX)
    del image.ConversionType
    errors, _ = dciodvfy_messages(write(image, tmp_path / "sc.dcm"))
    assert any("<ConversionType>" in e for e in errors)

    source = read_source(CANON_DX)
    segmentation = build_lung_segmentation(source, ellipses(source.Rows, source.Columns), ALGORITHM)
    del segmentation.PatientOrientation
    errors, _ = dciodvfy_messages(write(segmentation, tmp_path / "seg.dcm"))
    assert any("<PatientOrientation>" in e for e in errors)

"""The AI report passes the standard's validators: dicom3tools' ``dciodvfy`` and DCMTK's ``dsrdump``.

Each report is built from a real CR/DX header, written, and checked with ``dciodvfy`` (no
errors; every warning must be one of the justified ones below) and ``dsrdump``. The content
checks are in ``tests/unit/test_sr.py``.
"""

from __future__ import annotations

import html
import re
import subprocess
from pathlib import Path

import pytest

from dicom_node.report.sr import Finding, ImageRegion, build_report
from testkit.dciodvfy import JUSTIFIED_FOR_EVERY_OBJECT, dciodvfy_messages, unexplained
from testkit.sr import ALGORITHM, ALL_SOURCES, CANON_DX, PHILIPS_CR, SIMILAR, build, read_source, write

pytestmark = pytest.mark.usefixtures("strict_writing")  # any invalid value set fails the test

# dciodvfy warnings that are acceptable, and why: those of every object the node makes, and
JUSTIFIED_WARNINGS = (
    *JUSTIFIED_FOR_EVERY_OBJECT,
    # our private scheme, declared in the Coding Scheme Identification Sequence; dciodvfy
    # only knows the designators of PS3.16 Table 8-1.
    r"Unrecognized defined term <99CXRAI> for value 1 of attribute <Coding Scheme Designator>",
)


@pytest.mark.parametrize("source_file", ALL_SOURCES)
def test_report_has_no_dciodvfy_errors_and_only_justified_warnings(source_file: str, tmp_path: Path) -> None:
    path = write(build(read_source(source_file)), tmp_path / "sr.dcm")

    errors, warnings = dciodvfy_messages(path)

    assert errors == []
    assert unexplained(warnings, JUSTIFIED_WARNINGS) == []


def test_dciodvfy_reports_errors_on_a_broken_report(tmp_path: Path) -> None:
    # The check above can fail: dciodvfy does flag a report without Verification Flag.
    report = build(read_source(PHILIPS_CR))
    del report.VerificationFlag
    errors, _ = dciodvfy_messages(write(report, tmp_path / "broken.dcm"))
    assert any("<VerificationFlag>" in e for e in errors)


REGION = ImageRegion(((100.0, 200.0), (100.0, 900.0), (1500.0, 900.0), (1500.0, 200.0)), "region of highest relevance")


def test_report_with_a_region_has_no_dciodvfy_errors(tmp_path: Path) -> None:
    path = write(build(read_source(CANON_DX), region=REGION), tmp_path / "sr.dcm")

    errors, warnings = dciodvfy_messages(path)

    assert errors == []
    assert unexplained(warnings, JUSTIFIED_WARNINGS) == []


def test_dsrdump_renders_the_tree_with_finding_region_and_similar_cases(tmp_path: Path) -> None:
    path = write(build(read_source(CANON_DX), region=REGION), tmp_path / "sr.dcm")

    result = subprocess.run(["/usr/bin/dsrdump", "+Pu", "+Pt", str(path)], capture_output=True, text=True, timeout=60)

    assert result.returncode == 0, result.stderr
    tree = result.stdout
    assert "Imaging Measurement Report" in tree
    assert "Verification Flag   : UNVERIFIED" in tree
    assert '(840539006,SCT,"COVID-19")' in tree
    assert re.search(r'NUM:\(,,"Probability"\)="73(\.0)?" \(%,UCUM,"Percent"\)', tree)
    assert re.search(r'<inferred from SCOORD:\(,,"Source"\)=\(POLYLINE,200/100,', tree)
    assert '<contains CODE:(,,"COVID-19")=(52101004,SCT,"Present")>' in tree
    for rank, case in enumerate(SIMILAR, start=1):
        assert f'"{rank}. Known label: ' in tree
        assert case.sop_instance_uid in tree
    assert "TID 1500 (DCMR)" in tree


def html_text(path: Path) -> str:
    """``dsr2html``'s page as the reader sees it: tags removed, white space collapsed."""
    result = subprocess.run(["/usr/bin/dsr2html", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", result.stdout)))


def test_dsr2html_shows_each_concept_name_beside_its_value(tmp_path: Path) -> None:
    report = build_report(read_source(CANON_DX), Finding(0.06457494199276, 0.13), SIMILAR, ALGORITHM, region=REGION)
    text = html_text(write(report, tmp_path / "sr.dcm"))

    assert "Probability: 6.5 %" in text
    assert re.search(r"Threshold Value: 13(\.0)? %", text)
    assert "COVID-19: Absent" in text
    assert "Comment: COVID-19 not suggested: 6.5 % (threshold 13 %)" in text
    assert "Summary: The AI model does not suggest COVID-19: probability 6.5 % < operating threshold 13 %." in text
    assert "not for diagnostic use" in text
    assert "Similar case: 1. Known label: " in text
    assert "0.06457494199276" not in text

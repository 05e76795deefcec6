"""What a radiologist sees: the node's results in the OHIF v3 viewer, in headless Chromium.

DCMTK sends a real chest radiograph to the node (shipped bundle, CPU); the node sends its
report, summary image and lung segmentation to Orthanc (with its DICOMweb plugin); OHIF v3
(the pinned ``@ohif/app`` dist, ``viewer/install.sh``) opens each series through a same-origin
proxy to Orthanc, as a user would, and the test asserts on what is drawn and written on the
page. Screenshots go to the test's folder, and to ``$CXR_VIEWER_SCREENSHOTS`` when set (the
docs' pictures come from there). See docs/viewer_testing.md.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from testkit.orthanc import ORTHANC_AE_TITLE, OrthancServer
from testkit.peers import NodeProcess, dcmtk, dcmtk_env
from testkit.viewer import ViewerServer, check_in_ohif, ohif_available, ohif_pacs

NODE_AE = "CXR_AI"
MODALITY_AE = "PORTABLE_DX1"
RADIOGRAPH = "pylibjpeg-data/DX_chest_Canon_966_fixed.dcm"  # a real DX chest radiograph, 2128 x 2000
RESULT_TIMEOUT = 240  # seconds: one CPU analysis with Grad-CAM on a loaded 2-core CI machine
SR, SC, SEG = "1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.66.4"


@pytest.fixture(scope="module")
def results_in_pacs(
    shared_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[OrthancServer, ViewerServer, pydicom.Dataset, dict[str, dict[str, str]], Path]]:
    """Orthanc + viewer, the node's results for one radiograph in Orthanc, and the screenshot folder."""
    if not ohif_available():
        pytest.fail("the OHIF harness is missing: run scripts/setup.sh")
    work = tmp_path_factory.mktemp("viewer")
    with ohif_pacs(work / "pacs", calling_ae_titles=(NODE_AE, MODALITY_AE)) as (orthanc, viewer):
        config = work / "node.toml"
        config.write_text(
            '[inference]\ndevice = "cpu"\n[results]\nlung_segmentation = true\n'
            f'[[destinations]]\nname = "pacs"\nae_title = "{ORTHANC_AE_TITLE}"\n'
            f'host = "127.0.0.1"\nport = {orthanc.dicom_port}\n'
        )
        node = NodeProcess(work / "spool", work / "node.log", ("--analysis", "--config", str(config))).start()
        try:
            source_path = shared_data / "dicom" / RADIOGRAPH
            # The modality sends the radiograph to the PACS and to the node, as a routing rule would.
            for called_ae, port in ((ORTHANC_AE_TITLE, orthanc.dicom_port), (NODE_AE, node.port)):
                sent = subprocess.run(
                    [dcmtk("dcmsend"), "-aet", MODALITY_AE, "-aec", called_ae, "127.0.0.1", str(port), str(source_path)],
                    capture_output=True, text=True, env=dcmtk_env(), timeout=120,
                )
                assert sent.returncode == 0, sent.stderr
            source = pydicom.dcmread(source_path, stop_before_pixels=True)
            series = _wait_for_series(orthanc, source.StudyInstanceUID, {SR, SC, SEG}, node.log)
        finally:
            node.kill()
        yield orthanc, viewer, source, series, work


def _wait_for_series(orthanc: OrthancServer, study_uid: str, classes: set[str], log) -> dict[str, dict[str, str]]:
    """SOP Class UID -> the main DICOM tags of its one instance in the study, once all ``classes`` are there."""
    deadline = time.monotonic() + RESULT_TIMEOUT
    while time.monotonic() < deadline:
        found: dict[str, dict[str, str]] = {}
        for orthanc_id in orthanc.post("/tools/find", {"Level": "Instance", "Query": {"StudyInstanceUID": study_uid}}):
            tags = orthanc.get(f"/instances/{orthanc_id}/simplified-tags")
            found[tags["SOPClassUID"]] = tags
        if classes <= set(found):
            return found
        time.sleep(1)
    pytest.fail(f"timed out waiting for {sorted(classes)} in Orthanc\n{log()[-6000:]}")


def _keep(screenshot: Path) -> None:
    target = os.environ.get("CXR_VIEWER_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(screenshot, Path(target) / screenshot.name)


def test_ohif_draws_the_finding_region_and_label_on_the_radiograph(results_in_pacs) -> None:
    _, viewer, source, series, work = results_in_pacs
    report = series[SR]

    seen = check_in_ohif(viewer, source.StudyInstanceUID, report["SeriesInstanceUID"], work / "ohif_sr.png", min_annotations=1)
    _keep(work / "ohif_sr.png")

    assert seen["ok"], seen
    assert seen["pageErrors"] == [] and seen["errorBoundary"] == []
    assert seen["annotationShapes"] >= 1, "the image region is not drawn"
    labels = " ".join(seen["svgText"])
    assert re.search(r"COVID-19 (not )?suggested: \d+(\.\d)? % \(threshold \d+(\.\d)? %\)", labels), labels
    assert "Probability" in seen["text"] and "%" in seen["text"]


def test_ohif_shows_the_summary_image(results_in_pacs) -> None:
    _, viewer, source, series, work = results_in_pacs
    summary = series[SC]
    assert summary["BurnedInAnnotation"] == "YES"

    seen = check_in_ohif(viewer, source.StudyInstanceUID, summary["SeriesInstanceUID"], work / "ohif_sc.png")
    _keep(work / "ohif_sc.png")

    assert seen["ok"], seen
    assert seen["pageErrors"] == [] and seen["errorBoundary"] == []


@pytest.mark.xfail(
    strict=True,
    reason="OHIF 3.13.2 overlays a SEG only with a Plane Orientation equal to the image's, and takes a "
    "radiograph without one as axial; a chest radiograph's SEG has no patient geometry to give (it would "
    "be false), so OHIF reports 'Error loading displaySet ... ImageOrientationPatient'. Passes once OHIF "
    "supports segmentations of projection images; then drop this mark.",
)
def test_ohif_overlays_the_lung_segmentation(results_in_pacs) -> None:
    _, viewer, source, series, work = results_in_pacs

    seen = check_in_ohif(viewer, source.StudyInstanceUID, series[SEG]["SeriesInstanceUID"], work / "ohif_seg.png")
    _keep(work / "ohif_seg.png")

    assert seen["ok"], seen
    assert seen["pageErrors"] == [] and seen["errorBoundary"] == []
    assert "Error loading displaySet" not in seen["text"], seen["text"]
    # What OHIF shows once a SEG has loaded on its image (checked with a SEG that loads).
    assert "Do you want to open this Segmentation" in seen["text"] or "Lung" in seen["text"], seen["text"]

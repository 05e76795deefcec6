"""Measure the frontal-chest checks over every shared DICOM file and the shared test-split images.

Runs the shipped bundle's preprocessing (as the node does) over every file in
``<shared>/dicom`` and over the manifest's test-split images (PNG/JPEG, all frontal chest
radiographs; each also as a DX file, as a modality would send it), and prints per file the measurements and the verdict of each candidate check:

* ``fields``: the lung-field rules alone (:mod:`monai_app.transforms.lung_fields`);
* ``appearance``: the chest appearance model alone (:mod:`monai_app.transforms.chest_appearance`);
* ``node``: what the worker decides (header, lung share, both checks above).

It ends with the three figures that matter: every non-chest DICOM file refused, every chest
DICOM file analysed, and the false-refusal rate over the test-split chest images. Exit status 1
when one of them fails. Run from the repository root::

    python -m scripts.measure_applicability [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import csv
import logging
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image

from dicom_node.analyse.applicability import check_frontal_chest, check_header, check_lung_fraction
from monai_app.errors import UndecodableImageError, find_cause
from monai_app.inference import BundleAnalyser, PreparedImage
from testkit.dicom_factory import make_dx, save
from testkit.shared_data import REPO_ROOT, shared_data_dir

CHEST_DICOM: dict[str, str] = {
    # Labelled by looking at each picture (and its header); the reason says what it shows.
    "pydicom-data/RG1_J2KI.dcm": "frontal PA chest CR (Philips), both lungs, Body Part CHEST",
    "dicom-test-files/RG1_JLSN.dcm": "the same PA chest as RG1_J2KI, JPEG-LS near-lossless",
    "fo-dicom/CR-MONO1-10-chest.dcm": "frontal PA chest CR (Fuji FCR 9000), 440 px, Body Part CHEST",
    "pylibjpeg-data/DX_chest_Canon_966.dcm": "frontal PA chest DX (Canon); broken JPEG 2000 stream, undecodable",
    "pylibjpeg-data/DX_chest_Canon_966_fixed.dcm": "the same Canon PA chest DX, repaired stream",
    "torchxrayvision/SIIM-ACR_1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm":
        "frontal PA chest (SIIM-ACR), Secondary Capture with Modality CR",
}
"""The shared DICOM files that are frontal chest radiographs."""
NON_CHEST_DICOM: dict[str, str] = {
    "dicom-test-files/RG2_JPLL.dcm": "AP pelvis and hip CR, Body Part HIP",
    "dicom-test-files/RG2_JPLY.dcm": "the same hip CR, malformed JPEG scan header (undecodable)",
    "pylibjpeg-data/RG2_JPLY_fixed.dcm": "the same hip CR, repaired stream",
    "dicom-test-files/RG3_RLE.dcm": "lower leg and knee CR, Body Part EXTREMITY",
    "fo-dicom/CR-ModalitySequenceLUT.dcm": "panoramic dental film (teeth), empty Body Part Examined",
}
"""The shared DICOM files that are not chest radiographs: each must end not analysed."""


def verdicts(analyser: BundleAnalyser, path: Path) -> tuple[str, str, str, str]:
    """Measurements and the verdict of each check for one file: (measurements, fields, appearance, node)."""
    if path.suffix.lower() == ".dcm":
        header = check_header(pydicom.dcmread(path, stop_before_pixels=True, force=True))
    else:
        header = check_header(pydicom.Dataset())
    try:
        image = analyser.prepare(path)
    except Exception as exc:
        if find_cause(exc, (UndecodableImageError,)) is None:
            raise
        return "-", "-", "-", "refused (undecodable)"
    assert isinstance(image, PreparedImage) and image.lung_fields is not None
    fields = image.lung_fields.problem or "pass"
    over = image.appearance_residual > image.appearance_limit
    appearance = f"{'refuse' if over else 'pass'} {image.appearance_residual:.1f}"
    node = "analysed"
    for verdict in (header, check_lung_fraction(image.lung_fraction), check_frontal_chest(image)):
        if not verdict.applicable:
            node = f"refused ({verdict.category})"
            break
    return image.lung_fields_summary, fields, appearance, node


def test_split_images(data: Path) -> list[Path]:
    """The manifest's test-split images (every one a frontal chest radiograph)."""
    with (data / "manifest.csv").open(newline="") as handle:
        return [data / row["image_path"] for row in csv.DictReader(handle) if row["split"] == "test"]


def as_dicom(path: Path, folder: Path) -> Path:
    """A chest image as a DX For Presentation file (8 bit, MONOCHROME2, no body part: the header decides nothing)."""
    pixels = np.asarray(Image.open(path).convert("L"))
    return save(make_dx(pixels, bits_stored=8), folder / f"{path.stem}.dcm")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="shared data folder")
    parser.add_argument("--quiet", action="store_true", help="print only the refused test-split images")
    args = parser.parse_args(argv)
    data = args.data or shared_data_dir()
    logging.disable(logging.WARNING)  # the loader's notes on files without file meta
    warnings.simplefilter("ignore")
    analyser = BundleAnalyser(REPO_ROOT / "bundle", "cpu", load_index=False)
    print(f"appearance limit {analyser.appearance.limit if analyser.appearance else float('nan'):.1f}")
    dicom = sorted((data / "dicom").rglob("*.dcm"))
    unlabelled = [p for p in dicom if str(p.relative_to(data / "dicom")) not in CHEST_DICOM | NON_CHEST_DICOM]
    print(f"{'file':46s} {'chest':5s} {'lung fields':52s} {'fields':30s} {'appearance':14s} node")
    node_by_file = {}
    for path in dicom:
        name = str(path.relative_to(data / "dicom"))
        measured, fields, appearance, node = verdicts(analyser, path)
        node_by_file[name] = node
        label = "yes" if name in CHEST_DICOM else "no" if name in NON_CHEST_DICOM else "?"
        print(f"{name[:46]:46s} {label:5s} {measured:52s} {fields[:30]:30s} {appearance:14s} {node}")
    wrongly_analysed = [n for n in NON_CHEST_DICOM if node_by_file.get(n) == "analysed"]
    # An undecodable chest file cannot be analysed; it is refused as undecodable, not as "not a chest".
    wrongly_refused = [n for n in CHEST_DICOM if node_by_file.get(n, "").startswith("refused") and "undecodable" not in node_by_file[n]]
    tests = test_split_images(data)
    refused = {"fields": 0, "appearance": 0, "node": 0, "node, sent as DICOM": 0}
    folder = Path(tempfile.mkdtemp(prefix="measure_applicability_"))
    for path in tests:
        measured, fields, appearance, node = verdicts(analyser, path)
        as_dx = verdicts(analyser, as_dicom(path, folder))[3]
        hits = {"fields": fields != "pass", "appearance": appearance.startswith("refuse"), "node": node != "analysed",
                "node, sent as DICOM": as_dx != "analysed"}
        for key, hit in hits.items():
            refused[key] += hit
        if any(hits.values()) or not args.quiet:
            print(f"{str(path.relative_to(data))[:46]:46s} {'yes':5s} {measured:52s} {fields[:30]:30s} {appearance:14s} {node}; as DX: {as_dx}")
    shutil.rmtree(folder)
    print()
    print(f"non-chest DICOM files refused: {len(NON_CHEST_DICOM) - len(wrongly_analysed)}/{len(NON_CHEST_DICOM)}"
          + (f"; ANALYSED: {wrongly_analysed}" if wrongly_analysed else ""))
    print(f"chest DICOM files analysed (undecodable aside): {len(CHEST_DICOM) - len(wrongly_refused)}/{len(CHEST_DICOM)}"
          + (f"; REFUSED: {wrongly_refused}" if wrongly_refused else ""))
    for key, count in refused.items():
        print(f"false refusals over {len(tests)} test-split chest images, {key} check: {count} ({count / len(tests):.1%})")
    if unlabelled:
        print(f"unlabelled DICOM files (label them in this script): {[str(p) for p in unlabelled]}")
    return int(bool(wrongly_analysed or wrongly_refused or refused["node"] or refused["node, sent as DICOM"] or unlabelled))


if __name__ == "__main__":
    raise SystemExit(main())

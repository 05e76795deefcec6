"""The distribution: a non-editable ``pip install`` serves with the bundle it ships."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pydicom

from testkit.peers import dcmtk, dcmtk_env, free_port
from testkit.shared_data import REPO_ROOT

SOURCES = ("pyproject.toml", "README.md", "dicom_node", "monai_app", "bundle")


def test_every_package_of_the_source_tree_is_in_the_distribution() -> None:
    listed = set(tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {
        ".".join(init.parent.relative_to(REPO_ROOT).parts)
        for top in ("dicom_node", "monai_app") for init in (REPO_ROOT / top).rglob("__init__.py")
    }
    assert found <= listed and listed - found == {"cxr_bundle"}


def test_a_non_editable_install_serves_with_its_shipped_bundle(tmp_path: Path, shared_data: Path) -> None:
    source, target = tmp_path / "source", tmp_path / "installed"
    source.mkdir()
    for name in SOURCES:  # a copy, so the build leaves nothing in the repository
        (shutil.copytree if (REPO_ROOT / name).is_dir() else shutil.copy)(REPO_ROOT / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--target",
         str(target), str(source)], check=True, capture_output=True, timeout=300,
    )
    shutil.rmtree(source)  # nothing may be read from a source tree
    assert (target / "cxr_bundle" / "models" / "classifier.int8.xz").is_file()

    port, spool, log = free_port(), tmp_path / "spool", tmp_path / "node.log"
    with open(log, "wb") as out:
        node = subprocess.Popen(
            [str(target / "bin" / "cxr-node"), "serve", "--bind", "127.0.0.1", "--port", str(port),
             "--spool", str(spool), "--device", "cpu"],
            cwd=tmp_path, env={**dcmtk_env(), "PYTHONPATH": str(target)}, stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 120
        while "listening:" not in log.read_text(errors="replace"):
            assert node.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.2)
        chest = shared_data / "dicom" / "pydicom-data" / "RG1_J2KI.dcm"
        subprocess.run([dcmtk("dcmsend"), "-aec", "CXR_AI", "127.0.0.1", str(port), str(chest)],
                       env=dcmtk_env(), check=True, capture_output=True, timeout=60)
        # The job enters the outbox once all its objects are on disk (summary image, then report).
        while not list((spool / "jobs" / "outbox").glob("*.json")):
            assert node.poll() is None and time.monotonic() < deadline + 60, log.read_text(errors="replace")
            time.sleep(0.2)
    finally:
        node.send_signal(signal.SIGTERM)
        node.wait(timeout=60)
    text = log.read_text(errors="replace")
    assert f"bundle={target / 'cxr_bundle'} " in text, text
    source_uid = pydicom.dcmread(chest, stop_before_pixels=True).SOPInstanceUID
    report = pydicom.dcmread(spool / "results" / f"{source_uid}.dcm")
    assert pydicom.dcmread(spool / "results" / f"{source_uid}.sc.dcm").Modality == "OT"  # the summary image
    assert report.Modality == "SR" and report.StudyInstanceUID == pydicom.dcmread(chest).StudyInstanceUID

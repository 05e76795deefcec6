"""Configuration at the command line: ``python -m dicom_node`` refuses bad values at start-up and prints the example."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from dicom_node.config import default_config_text


def test_serve_with_bad_config_stops_with_a_message_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[network]\ndimse_timeout = -5\n")
    result = subprocess.run(
        [sys.executable, "-m", "dicom_node", "serve", "--config", str(path), "--spool", str(tmp_path / "s")],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert '"network.dimse_timeout" must be an integer in 1..3600' in result.stderr


def test_bad_port_flag_is_refused(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dicom_node", "serve", "--port", "0", "--spool", str(tmp_path / "s")],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert '"node.port" must be an integer in 1..65535' in result.stderr


def test_config_example_prints_the_commented_defaults() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dicom_node", "config-example"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    assert result.stdout == default_config_text()
    assert "# Application Entity title" in result.stdout

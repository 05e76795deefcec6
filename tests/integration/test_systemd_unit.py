"""The shipped systemd unit passes ``systemd-analyze verify`` with the installation's paths."""

from __future__ import annotations

import subprocess
from pathlib import Path

from testkit.shared_data import REPO_ROOT

UNIT = REPO_ROOT / "deploy" / "systemd" / "cxr-node.service"
SHIPPED_BINARY = "/opt/cxr-node/.venv/bin/cxr-node"


def _verify(text: str, folder: Path) -> subprocess.CompletedProcess[str]:
    path = folder / "cxr-node.service"
    path.write_text(text)
    return subprocess.run(["/usr/bin/systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60)


def _installed() -> str:
    # The unit as installed here: the same file with this checkout's console script.
    text = UNIT.read_text()
    assert SHIPPED_BINARY in text
    return text.replace(SHIPPED_BINARY, str(REPO_ROOT / ".venv" / "bin" / "cxr-node"))


def test_the_unit_verifies_without_a_warning(tmp_path: Path) -> None:
    result = _verify(_installed(), tmp_path)

    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stdout + result.stderr


def test_the_unit_runs_unprivileged_with_only_the_port_capability_and_no_restart_loop_on_bad_config() -> None:
    settings = dict(line.split("=", 1) for line in UNIT.read_text().splitlines() if "=" in line and not line.startswith("#"))

    assert settings["User"] == "cxr-node" and settings["NoNewPrivileges"] == "yes"
    assert settings["AmbientCapabilities"] == settings["CapabilityBoundingSet"] == "CAP_NET_BIND_SERVICE"
    assert settings["Restart"] == "on-failure" and settings["RestartPreventExitStatus"] == "2"


def test_verify_does_complain_about_a_broken_unit(tmp_path: Path) -> None:
    broken = _installed().replace("Restart=on-failure", "Restart=sometimes")

    result = _verify(broken, tmp_path)

    assert "sometimes" in result.stdout + result.stderr

"""What each command loads: a serving node never maps evaluation or plotting, ``status`` never torch."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from dicom_node.serving_process import EVALUATION_ONLY_PACKAGES
from testkit.peers import free_port

# Runs the real `cxr-node serve` entry point, then reports what the process had loaded.
RUN_AND_REPORT = """
import json, sys
from dicom_node.cli import main
rc = main(sys.argv[1:])
print("LOADED " + json.dumps(sorted({m.split(".")[0] for m, v in sys.modules.items() if v is not None})))
sys.exit(rc)
"""


def _loaded(output: str) -> set[str]:
    line = next(line for line in output.splitlines() if line.startswith("LOADED "))
    return set(json.loads(line.removeprefix("LOADED ")))


def test_a_serving_node_with_its_models_loads_no_evaluation_or_plotting_package(tmp_path: Path) -> None:
    log = tmp_path / "node.log"
    args = ["serve", "--bind", "127.0.0.1", "--port", str(free_port()), "--spool", str(tmp_path / "spool"),
            "--device", "cpu", "--analysis"]
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-c", RUN_AND_REPORT, *args], stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while "ready:" not in log.read_text(errors="replace"):
            assert process.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        process.kill()
    loaded = _loaded(log.read_text(errors="replace"))
    # The models live in the analysis process (dicom_node.analyse.process): the receiver maps none of them.
    assert not loaded & {"torch", "monai", "annoy", *EVALUATION_ONLY_PACKAGES}, sorted(loaded)


# The analysis process's own code, in a fresh interpreter as `spawn` starts it, told to stop once ready.
RUN_CHILD_AND_REPORT = """
import json, sys
from multiprocessing import Pipe
from pathlib import Path
from dicom_node.analyse.process import run_child
from dicom_node.config import NodeConfig
from_node, to_child = Pipe(duplex=False)
from_child, to_node = Pipe(duplex=False)
to_child.send("stop")
run_child(NodeConfig(spool=Path(sys.argv[1]), device="cpu"), from_node, to_node)
assert from_child.recv()[0] == "ready"
print("LOADED " + json.dumps(sorted({m.split(".")[0] for m, v in sys.modules.items() if v is not None})))
"""


def test_the_analysis_process_with_its_models_loads_no_evaluation_or_plotting_package(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", RUN_CHILD_AND_REPORT, str(tmp_path / "spool")], capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = _loaded(done.stdout)
    assert {"torch", "monai", "annoy"} <= loaded, "the models and the index must really be loaded"
    assert not loaded & set(EVALUATION_ONLY_PACKAGES), sorted(loaded & set(EVALUATION_ONLY_PACKAGES))
    assert "ray" not in loaded, "the local backend never imports Ray (the ray backend talks HTTP to Serve)"


def test_status_loads_neither_torch_nor_monai(tmp_path: Path) -> None:
    (tmp_path / "spool").mkdir()
    result = subprocess.run(
        [sys.executable, "-c", RUN_AND_REPORT, "status", "--json", "--spool", str(tmp_path / "spool")],
        capture_output=True, text=True, timeout=120, check=True,
    )
    loaded = _loaded(result.stdout)
    assert "dicom_node" in loaded
    assert not loaded & {"torch", "monai", "pynetdicom", "matplotlib", "sklearn"}

"""A tiny run of scripts/bench_ingest.py, and its bare pynetdicom peer against DCMTK storescu."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pydicom
from pydicom.filereader import _read_file_meta_info

from scripts import dicom_corpus
from testkit.peers import dcmtk, dcmtk_env, echo_ok, free_port, stop_process, wait_for
from testkit.shared_data import REPO_ROOT


def test_bench_ingest_times_the_node_and_both_peers_with_every_instance_on_disk(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "scripts.bench_ingest", "--n", "3", "--rounds", "1", "--sizes", "small",
         "--analysis", "off", "--no-fsync", "--work", str(tmp_path / "work"), "--out", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    small = json.loads((out / "bench_ingest.json").read_text())["results"]["small"]
    assert set(small["summary"]) == {"node-analysis-off", "pynetdicom-bare", "storescp", "disk-floor"}
    assert all(r["files_stored"] == 3 for r in small["rounds"])  # the script fails a round that lost one
    for ratio in ("node-analysis-off/storescp", "node-analysis-off/pynetdicom-bare", "pynetdicom-bare/storescp"):
        assert small["ratios"][ratio] > 0


def test_the_bare_scp_keeps_each_data_set_exactly_as_sent(tmp_path: Path) -> None:
    [sent] = dicom_corpus.build_small_corpus(tmp_path / "corpus", 1)
    store, port = tmp_path / "store", free_port()
    scp = subprocess.Popen(
        [sys.executable, "-m", "scripts.bare_pynetdicom_scp", "--port", str(port), "--store", str(store)],
        cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_for(lambda: echo_ok(port), 30)
        subprocess.run([dcmtk("storescu"), "-aec", "CXR_AI", "127.0.0.1", str(port), str(sent)],
                       env=dcmtk_env(), check=True, capture_output=True, timeout=30)
    finally:
        stop_process(scp)
    [received] = list(store.iterdir())
    with open(sent, "rb") as f:
        f.seek(128 + 4)
        _read_file_meta_info(f)
        data_set = f.read()  # sent in its own transfer syntax: the bytes on the wire
    assert received.name == pydicom.dcmread(sent, stop_before_pixels=True).SOPInstanceUID
    assert received.read_bytes() == data_set

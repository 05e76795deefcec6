"""A tiny run of scripts/bench_e2e.py with pynetdicom peers: the mode the GPU machine runs (no DCMTK, no Orthanc)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pydicom

from testkit.shared_data import REPO_ROOT

STUDIES = 3


def test_bench_e2e_with_pynetdicom_peers_gets_every_report_to_the_pacs_and_times_each_study(
    tmp_path: Path, shared_data: Path
) -> None:
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "scripts.bench_e2e", "--n", str(STUDIES), "--batch-sizes", "2", "--results", "off",
         "--size", "small", "--device", "cpu", "--peers", "pynetdicom", "--senders", "2", "--no-floor",
         "--keep-files", "--timeout", "120", "--out", str(out), "--work", str(tmp_path)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    report = json.loads((out / "bench_e2e.json").read_text())
    [run] = report["results"]
    assert (report["peers"], run["peers"], run["batch_size"]) == ("pynetdicom", "pynetdicom", 2)
    assert [p["mode"] for p in run["passes"]] == ["sequential", "burst"]
    assert run["passes"][1]["senders"] == 2
    for timed in run["passes"]:
        assert [s["index"] for s in timed["studies"]] == list(range(STUDIES))
        for study in timed["studies"]:
            assert 0 < study["latency_s"] <= timed["latency_max_s"]
            # The job record's states, from its receipt: queued, analysed, delivered, in that order.
            stages = study["stages_s"]
            assert 0 <= stages["processing"] <= stages["outbox"] <= stages["sent"], stages
        # The node spent CPU on every study, and the machine at least as much (the peers too).
        assert 0 < timed["node_cpu_s_per_study"] <= timed["machine_cpu_s_per_study"] + 0.05, timed
    assert run["warmup"]["latency_s"] > 0

    # Independently of the script's own count: the PACS holds one SR for every image sent.
    [run_dir] = (tmp_path.glob("bench_e2e_*/b2_off_pynetdicom_*"))
    sent = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
            for folder in ("warmup", "sequential", "burst") for p in (run_dir / folder).glob("*.dcm")}
    assert len(sent) == 2 * STUDIES + 1
    reported: list[str] = []
    for path in (run_dir / "pacs").glob("*.dcm"):
        ds = pydicom.dcmread(path)
        if ds.Modality == "SR":  # the KOS is "KO", the summary image "OT"
            reported.extend(sent.intersection(
                str(e.value) for e in ds.iterall() if e.keyword == "ReferencedSOPInstanceUID"))
    assert sorted(reported) == sorted(sent)

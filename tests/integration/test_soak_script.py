"""A tiny run of scripts/soak.py: a dozen studies, one PACS outage, retention emptying the spool."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from testkit.shared_data import REPO_ROOT


def test_a_tiny_soak_delivers_every_report_once_through_an_outage_and_empties_the_spool(
    tmp_path: Path, shared_data: Path, require_dcmtk: None
) -> None:
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "scripts.soak", "--studies", "12", "--rate", "4", "--outages", "1",
         "--outage-seconds", "5", "--records-days", "0.0002", "--purge-minutes", "0.05", "--warmup", "4",
         "--sample-seconds", "1", "--max-minutes", "3", "--out", str(out), "--work", str(tmp_path)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=240,
    )
    assert (out / "soak.json").exists(), result.stdout + result.stderr[-3000:]
    text = (out / "soak.json").read_text()
    report = json.loads(text)
    verdict, delivery = report["verdict"], report["delivery"]
    for check in ("every_study_sent", "every_c_store_success", "every_report_arrived", "no_study_lost",
                  "spool_emptied", "node_exit_code_zero", "no_node_errors_in_log"):
        assert verdict[check], (check, delivery, report["node_log"])
    assert delivery["studies_with_every_result"] == 12
    assert delivery["arrivals_by_kind"] == {"sr": 12 + delivery["duplicate_arrivals"]}
    assert report["c_store_statuses"] == {"Success": 12}
    # The outage happened while reports were due: they waited in the outbox, then went out.
    [outage] = report["outage_behaviour"]
    assert outage["seconds_down"] >= 5
    assert outage["outbox_peak"] > 0 and outage["oldest_undelivered_peak_s"] > 0
    assert outage["outbox_empty_after_up_s"] is not None
    assert report["end_sample"]["files"].get("instances", 0) == 0 and sum(report["end_sample"]["jobs"].values()) == 0
    for figure in ("rss_mib", "fds", "threads"):
        assert {"start", "end", "growth", "no_growth"} <= set(report["resources"][figure])
    assert (out / "soak.png").stat().st_size > 10_000
    # Counts and times only: no UID and no (synthetic) patient identifier in the output.
    assert not re.search(r"\b\d+(\.\d+){5,}\b", text) and "CORPUS-" not in text

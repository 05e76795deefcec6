"""scripts.bench_decode: both display chains are timed on every kind of file and agree."""

from __future__ import annotations

import json
from pathlib import Path

from scripts.bench_decode import main


def test_one_round_times_both_chains_on_every_kind_of_file(tmp_path: Path) -> None:
    assert main(["--n", "1", "--rounds", "1", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "bench_decode.json").read_text())["results"]
    assert set(results) == {"detector-size, window", "detector-size, percentile window", "real CR/DX (shared)"}
    for figures in results.values():
        assert figures["files"] >= 1 and all(figures["ms"][k] > 0 for k in ("decode", "per pixel", "table"))

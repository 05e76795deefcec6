"""scripts.bench_index: the metric/tree sweep measures what it says, on synthetic embeddings."""

from __future__ import annotations

import numpy as np

from scripts.bench_index import sweep


def test_sweep_reports_every_metric_and_tree_count_with_exact_recall_at_many_trees() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(2, 16))
    labels = np.repeat([0, 1], 40)
    reference = (centres[labels] + 0.1 * rng.normal(size=(80, 16))).astype(np.float32)
    queries = (centres[[0, 1] * 5] + 0.1 * rng.normal(size=(10, 16))).astype(np.float32)
    data = {"reference": reference, "reference_labels": labels, "queries": queries,
            "query_labels": np.asarray([0, 1] * 5)}
    rows = sweep(data, ["angular", "euclidean"], [1, 50], k=4)
    assert [(r["metric"], r["trees"]) for r in rows] == [("angular", 1), ("angular", 50), ("euclidean", 1), ("euclidean", 50)]
    assert all(r["vote_accuracy"] == 1.0 for r in rows), "two well separated clusters"
    assert rows[1]["recall_at_k"] == rows[3]["recall_at_k"] == 1.0, "50 trees over 80 items find the exact neighbours"
    assert rows[0]["size_bytes"] < rows[1]["size_bytes"]
    assert all(r["exact_query_ms_median"] > 0 and r["query_ms_p95"] >= 0 for r in rows)

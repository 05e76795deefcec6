"""Choose the similar-study index's Annoy metric and tree count by measurement.

Embeds the reference set (the manifest's ``train`` rows, as ``build_index`` does) and the
queries (``test`` rows) once with the bundle's classifier and preprocessing, then builds an
index for every metric and tree count and reports, per index: recall@k against exact search,
the k-neighbour vote's accuracy, build time, file size, and the median and p95 query time.
Exact brute-force search (numpy) over the same vectors, the peer, is timed in the same run.

Usage::

    python -m scripts.bench_index --dataset-dir ../shared/data --out bench-out/index \
        --metrics angular,euclidean --trees 1,5,10,20,50,100

The embeddings are cached in ``<out>/embeddings.npz`` (delete it after new weights).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
from monai.bundle import ConfigParser

from monai_app.evaluation.retrieval import retrieval_metrics
from monai_app.labels import CLASS_NAMES
from monai_app.networks.classifier import load_classifier_weights
from monai_app.retrieval.index import ReferenceItem, SimilarityIndex, exact_neighbours
from monai_app.retrieval.reference_set import compute_embeddings

REPO = Path(__file__).resolve().parent.parent
CONFIGS = [  # the evaluation stacking of bundle/docs/README.md
    str(REPO / "bundle" / "configs" / f"{name}.yaml")
    for name in ("common", "train_segmentation", "train_classifier", "build_index", "evaluate")
]


def embed_splits(dataset_dir: Path, model_file: Path, device: str, cache: Path) -> dict[str, np.ndarray]:
    """Reference and query embeddings and labels (cached in ``cache``)."""
    if cache.is_file():
        return dict(np.load(cache))
    parser = ConfigParser()
    parser.read_config(CONFIGS)
    parser.read_meta(str(REPO / "bundle" / "configs" / "metadata.json"))
    parser.update({"bundle_root": str(REPO / "bundle"), "dataset_dir": str(dataset_dir),
                   "device": f"$torch.device('{device}')"})
    network = load_classifier_weights(parser.get_parsed_content("cls_network"), model_file)
    transform = parser.get_parsed_content("cls_preprocessing")
    reference = parser.get_parsed_content("cls_index_datalist")
    queries = parser.get_parsed_content("cls_validate#dataset#data")  # the test split
    result = {
        "reference": compute_embeddings(network, reference, transform, device=device),
        "reference_labels": np.asarray([int(d["label"]) for d in reference]),
        "queries": compute_embeddings(network, queries, transform, device=device),
        "query_labels": np.asarray([int(d["label"]) for d in queries]),
    }
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, reference=result["reference"], reference_labels=result["reference_labels"],
             queries=result["queries"], query_labels=result["query_labels"])
    return result


def exact_search_ms(reference: np.ndarray, queries: np.ndarray, k: int, metric: str) -> list[float]:
    """Per-query time of brute-force search (the peer)."""
    times = []
    for query in queries:
        start = time.perf_counter()
        exact_neighbours(reference, query, k, metric)
        times.append((time.perf_counter() - start) * 1000.0)
    return times


class SweepRow(TypedDict):
    """One (metric, trees) row of :func:`sweep`."""

    metric: str
    trees: int
    recall_at_k: float
    vote_accuracy: float
    build_s: float
    size_bytes: int
    query_ms_mean: float
    query_ms_p95: float
    exact_query_ms_median: float


def sweep(data: dict[str, np.ndarray], metrics: Sequence[str], trees: Sequence[int], k: int) -> list[SweepRow]:
    """One row per (metric, trees): quality, build time, size, query time; plus the exact-search peer."""
    blank = {f.name: "" for f in fields(ReferenceItem)}  # only the label matters to the vote
    items = [ReferenceItem(**{**blank, "label": CLASS_NAMES[int(label)]}) for label in data["reference_labels"]]
    rows: list[SweepRow] = []
    for metric in metrics:
        peer = exact_search_ms(data["reference"], data["queries"], k, metric)
        for n_trees in trees:
            start = time.perf_counter()
            index = SimilarityIndex.build(data["reference"], items, metric=metric, n_trees=n_trees)
            build_s = time.perf_counter() - start
            with tempfile.TemporaryDirectory() as folder:
                index.save(Path(folder))
                size = (Path(folder) / "index.ann").stat().st_size
            measured: dict[str, Any] = retrieval_metrics(index, data["queries"], data["query_labels"].tolist(), k, data["reference"])
            rows.append({
                "metric": metric, "trees": n_trees, "recall_at_k": measured["recall_at_k"],
                "vote_accuracy": measured["vote_accuracy"], "build_s": build_s, "size_bytes": size,
                "query_ms_mean": measured["query_ms_mean"], "query_ms_p95": measured["query_ms_p95"],
                "exact_query_ms_median": float(np.median(peer)),
            })
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--model-file", type=Path, default=REPO / "bundle" / "models" / "classifier.int8.xz")
    parser.add_argument("--out", type=Path, default=Path("bench-out/index"))
    parser.add_argument("--metrics", default="angular,euclidean")
    parser.add_argument("--trees", default="1,5,10,20,50,100")
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    data = embed_splits(args.dataset_dir.resolve(), args.model_file, args.device, args.out / "embeddings.npz")
    rows = sweep(data, args.metrics.split(","), [int(t) for t in args.trees.split(",")], args.k)
    (args.out / "bench_index.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(f"{len(data['reference'])} reference vectors, {len(data['queries'])} queries, k={args.k}")
    print("| metric | trees | recall@k | vote accuracy | build s | size KiB | query ms mean | p95 | exact search ms median |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['metric']} | {r['trees']} | {r['recall_at_k']:.3f} | {r['vote_accuracy']:.3f} | {r['build_s']:.3f} "
              f"| {r['size_bytes'] / 1024:.0f} | {r['query_ms_mean']:.3f} | {r['query_ms_p95']:.3f} "
              f"| {r['exact_query_ms_median']:.3f} |")


if __name__ == "__main__":
    main()

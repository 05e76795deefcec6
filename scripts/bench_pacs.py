"""Index from a PACS: retrieval and embedding throughput against the PACS's own retrieval rate; index size scaling.

Part 1 loads a real Orthanc with DX studies made from shared images (``testkit.pacs``) and
times, in the same run:

- the peer: DCMTK ``movescu`` (C-MOVE to its own Storage SCP) fetching every study, i.e. the
  rate Orthanc itself delivers by C-MOVE on this machine;
- ours: query + retrieval (``pacs-export``'s path) by C-GET and by C-MOVE, and query +
  retrieval + embedding exactly as the node does (``pacs-index``'s path).

Part 2 builds the similar-study index (Annoy, the bundle's metric and trees, one build job)
over simulated 128-d embeddings (a noisy 16-d subspace, unit length) of 10^3 ... 10^6 items and
times build and query (k = 4) against exact search (numpy, normalised once), with Annoy's
recall@k at its default search effort (what the node uses) and at ``--wide-search-k``.

Usage::

    python -m scripts.bench_pacs --out bench-out/pacs --studies 120 --sizes 1000,10000,100000,1000000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from dicom_node.pacs.commands import PacsSource, build_index_from_pacs, export_training_set
from dicom_node.pacs.peer import PacsPeer
from dicom_node.pacs.query import StudyQuery
from monai_app.retrieval.index import ReferenceItem, SimilarityIndex
from testkit.pacs import CALLING_AE, DATE_FROM, DATE_TO, MOVE_AE, LoadedPacs, load_orthanc, pacs_studies, write_labels
from testkit.peers import dcmtk_env, free_port
from testkit.shared_data import REPO_ROOT, shared_data_dir


def _query_files(pacs: LoadedPacs, folder: Path) -> list[str]:
    """One DCMTK query file per wanted study (STUDY level), for getscu/movescu."""
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for n, study in enumerate(pacs.wanted):
        ds = Dataset()
        ds.QueryRetrieveLevel, ds.StudyInstanceUID = "STUDY", study.study_instance_uid
        ds.save_as(folder / f"q{n}.dcm", implicit_vr=False, little_endian=True)
        files.append(str(folder / f"q{n}.dcm"))
    return files


def dcmtk_rates(pacs: LoadedPacs, work: Path) -> dict[str, float]:
    """Studies/s of DCMTK movescu (C-MOVE to its own Storage SCP) fetching every wanted study from Orthanc, one association.

    (DCMTK 3.6.7's getscu crashed (SIGSEGV) on a list of query files here, so C-GET has no DCMTK peer.)
    """
    queries = _query_files(pacs, work / "queries")
    port = str(pacs.orthanc.dicom_port)
    rates = {}
    for name, command in (
        ("dcmtk_movescu", ["/usr/bin/movescu", "-S", "-aet", CALLING_AE, "-aec", "ORTHANC", "-aem", MOVE_AE,
                           "--port", str(pacs.move_port), "-od"]),
    ):
        out = work / name
        out.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        subprocess.run([*command, str(out), "127.0.0.1", port, *queries], env=dcmtk_env(), check=True,
                       capture_output=True, timeout=600)
        elapsed = time.perf_counter() - start
        got = len([p for p in out.iterdir() if p.is_file()])
        if got != len(queries):
            raise RuntimeError(f"{name} stored {got} of {len(queries)} instances")
        rates[name] = len(queries) / elapsed
    return rates


def our_rates(pacs: LoadedPacs, work: Path, device: str) -> dict[str, Any]:
    """Studies/s of our query + retrieval (C-GET, C-MOVE) and of query + retrieval + embedding (C-GET)."""
    peer = PacsPeer("ORTHANC", "127.0.0.1", pacs.orthanc.dicom_port)
    query = StudyQuery(DATE_FROM, DATE_TO)
    n = len(pacs.wanted)
    result: dict[str, Any] = {}
    for method in ("get", "move"):
        source = PacsSource(peer, CALLING_AE, query, method, MOVE_AE, pacs.move_port)
        start = time.perf_counter()
        summary = export_training_set(source, work / f"export_{method}", labels_csv=pacs.labels_csv, salt="bench",
                                      progress=False)
        result[f"retrieve_{method}"] = n / (time.perf_counter() - start)
        assert summary["retrieved"] == n
    source = PacsSource(peer, CALLING_AE, query)
    start = time.perf_counter()
    build_index_from_pacs(source, work / "index", work / "index.work", REPO_ROOT / "bundle", labels_csv=pacs.labels_csv,
                          salt="bench", device=device, progress=False)
    total = time.perf_counter() - start
    result["retrieve_embed_index"] = n / total
    result["retrieve_embed_index_s"] = total
    return result


def simulated_embeddings(n: int, dim: int, rng: np.random.Generator, latent: int = 16) -> np.ndarray:
    """Unit vectors on a noisy ``latent``-dimensional subspace (a trained embedding's intrinsic dimension is low).

    The subspace is the same for every call with a fresh generator of the same seed.
    """
    basis = np.random.default_rng(1).normal(size=(latent, dim)).astype(np.float32)
    x = rng.normal(size=(n, latent)).astype(np.float32) @ basis + 0.3 * rng.normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def scaling(
    sizes: Sequence[int], dim: int, k: int, n_queries: int, n_trees: int, wide_search_k: int
) -> list[dict[str, float]]:
    rng = np.random.default_rng(0)
    rows = []
    for n in sizes:
        x = simulated_embeddings(n, dim, rng)
        queries = simulated_embeddings(n_queries, dim, rng)
        items = [ReferenceItem("1", "1.1", str(i), "1.2", "unknown", "sim", "k") for i in range(n)]
        start = time.perf_counter()
        index = SimilarityIndex.build(x, items, n_trees=n_trees)
        build_s = time.perf_counter() - start
        annoy_ms, wide_ms, exact_ms, found, found_wide = [], [], [], 0, 0
        for q in queries:
            start = time.perf_counter()
            approx = {nb.position for nb in index.query(q, k)}
            annoy_ms.append((time.perf_counter() - start) * 1000)
            start = time.perf_counter()
            scores = x @ q  # unit vectors: the largest cosine is the nearest (angular)
            exact = np.argpartition(-scores, k)[:k]
            exact_ms.append((time.perf_counter() - start) * 1000)
            found += len(approx & set(exact.tolist()))
            start = time.perf_counter()
            wide = {nb.position for nb in index.query(q, k, search_k=wide_search_k)}
            wide_ms.append((time.perf_counter() - start) * 1000)
            found_wide += len(wide & set(exact.tolist()))
        rows.append({
            "n": n, "build_s": build_s,
            "annoy_query_ms_median": float(np.median(annoy_ms)), "annoy_query_ms_p95": float(np.percentile(annoy_ms, 95)),
            "exact_query_ms_median": float(np.median(exact_ms)), "recall_at_k": found / (k * n_queries),
            "wide_query_ms_median": float(np.median(wide_ms)), "wide_recall_at_k": found_wide / (k * n_queries),
        })
        print(json.dumps(rows[-1]), flush=True)
        del index, x
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench-out/pacs"))
    parser.add_argument("--studies", type=int, default=120, help="frontal studies in the PACS (half COVID-19, half not)")
    parser.add_argument("--sizes", default="1000,10000,100000,1000000")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--trees", type=int, default=20)
    parser.add_argument("--wide-search-k", type=int, default=20000, help="a larger Annoy search effort, for comparison")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-pacs", action="store_true", help="only the index scaling")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "machine": {"cores": os.cpu_count(), "cpu": platform.processor() or platform.machine(), "python": platform.python_version()},
        "commit": subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                 text=True).stdout.strip(),
    }
    if not args.skip_pacs:
        from testkit.orthanc import OrthancServer

        work = Path(tempfile.mkdtemp(prefix="bench_pacs_"))
        shared = shared_data_dir()
        move_port = free_port()
        orthanc = OrthancServer(work / "orthanc", (CALLING_AE,), move_destinations={MOVE_AE: move_port}).start()
        try:
            half = args.studies // 2
            studies = pacs_studies(shared, n_covid=half, n_negative=args.studies - half)
            load_orthanc(orthanc, shared, studies)
            labels = write_labels(work / "labels.csv", studies)
            pacs = LoadedPacs(orthanc, studies, work / "labels.csv", labels, move_port)
            results["pacs"] = {"studies": len(pacs.wanted), "image_size": 256, **dcmtk_rates(pacs, work),
                               **our_rates(pacs, work, args.device)}
            print(json.dumps(results["pacs"], indent=1), flush=True)
        finally:
            orthanc.stop()
            shutil.rmtree(work, ignore_errors=True)
    results["index_scaling"] = {
        "dim": 128, "k": 4, "trees": args.trees, "queries": args.queries, "wide_search_k": args.wide_search_k,
        "rows": scaling([int(s) for s in args.sizes.split(",")], 128, 4, args.queries, args.trees, args.wide_search_k),
    }
    (args.out / "bench_pacs.json").write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The models on Ray Serve against the local backend, in one run: latency, throughput, bytes per study.

On this machine (a real Ray head on loopback, ``testkit.ray_cluster``) the bundle's networks
are deployed with 1 replica, then with 2; in each half the local backend
(:class:`monai_app.inference.BundleAnalyser`, the node's default) is measured in turns with
the remote one (:class:`dicom_node.analyse.remote.RemoteBundleAnalyser`), on the same
detector-size DX files (``scripts.dicom_corpus``, ~10 MB each), so the ratio remote / local
is the remote path's overhead (or gain) under the same load. Each pass is the model floor of
``scripts/bench_models.py``: ``prepare`` + ``predict`` with Grad-CAM, no DICOM networking,
spool or report.

* ``latency``: one caller, one study at a time: median seconds per study;
* ``throughput``: two callers (two "sites", each its own analyser), batches of 4: studies/s;
* bytes per study: HTTP bodies to and from the deployment (the node's ``cxr_backend_bytes``);
* CPU seconds per study of the node (this process) and of the cluster (all its processes, from
  ``/proc``): the sum against the local figure is the remote path's CPU overhead, the figure
  other load on shared cores skews least; the node's own is what a site still spends, and
  what moving the preprocessing to the cluster too would take off it, against sending the
  original file (its bytes are recorded as ``original_bytes_per_study``).

On a 2-core machine the replicas share the cores with the callers' preprocessing, so 2
replicas cannot beat 1 by much: the figures show the overhead, not a scale-out.

Usage (from the repository root)::

    python -m scripts.bench_ray --n 8 --rounds 2 --out bench-out/ray

Writes ``<out>/bench_ray.json`` (figures, machine facts, CPU busyness before and after) and
prints a summary. No patient data (the corpus is synthetic).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from dicom_node.analyse.remote import RemoteBundleAnalyser
from dicom_node.metrics import NodeMetrics
from monai_app.inference import BundleAnalyser
from scripts import dicom_corpus
from scripts.bench_ingest import cpu_busy_fraction, machine_facts
from scripts.bench_models import floor_seconds
from testkit.ray_cluster import RayCluster

REPO = Path(__file__).resolve().parents[1]
BATCH = 4  # the node's default inference.batch_size


def latency(analyser: BundleAnalyser, files: Sequence[Path]) -> list[float]:
    """Seconds per study, one at a time (batch 1, Grad-CAM on)."""
    return [floor_seconds(analyser, [path], 1, relevance=True) for path in files]


def throughput(analysers: Sequence[BundleAnalyser], files: Sequence[Path]) -> float:
    """Studies/s with one caller per analyser, each on its share of ``files``, batches of :data:`BATCH`."""
    shares = [list(files[i::len(analysers)]) for i in range(len(analysers))]
    threads = [threading.Thread(target=floor_seconds, args=(a, share, BATCH, True)) for a, share in zip(analysers, shares)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return len(files) / (time.perf_counter() - started)


def measure(name: str, make: Callable[[], BundleAnalyser], files: Sequence[Path], cluster: RayCluster) -> dict[str, Any]:
    """One pass of a backend: latency, two-caller throughput, node and cluster CPU and bytes per study.

    CPU seconds per study (the latency pass) are the figure that other load on the machine
    skews least: wall times on shared cores depend on who else runs."""
    analysers = [make(), make()]
    floor_seconds(analysers[0], list(files[:1]), 1, relevance=True)  # warm-up: first calls compile and load
    floor_seconds(analysers[1], list(files[:1]), 1, relevance=True)
    cpu0, cluster0 = time.process_time(), cluster.cpu_seconds()
    seconds = latency(analysers[0], files)
    cpu_per_study = (time.process_time() - cpu0) / len(files)
    cluster_cpu_per_study = (cluster.cpu_seconds() - cluster0) / len(files)
    studies_per_second = throughput(analysers, files)
    out: dict[str, Any] = {
        "backend": name, "latency_median_s": round(statistics.median(seconds), 3),
        "latency_max_s": round(max(seconds), 3), "throughput_studies_per_s": round(studies_per_second, 2),
        "node_cpu_s_per_study": round(cpu_per_study, 3), "cluster_cpu_s_per_study": round(cluster_cpu_per_study, 3),
        "total_cpu_s_per_study": round(cpu_per_study + cluster_cpu_per_study, 3),
    }
    remote = [a for a in analysers if isinstance(a, RemoteBundleAnalyser)]
    if remote:
        studies = 2 + 2 * len(files)  # the two warm-ups, the latency pass, the two callers' shares
        for direction in ("sent", "received"):
            total = sum(
                a.client.metrics.registry.get_sample_value("cxr_backend_bytes_total", {"direction": direction}) or 0.0
                for a in remote if a.client.metrics is not None
            )
            out[f"bytes_{direction}_per_study"] = round(total / studies)
        for route in ("lung", "predict"):  # mean seconds of one answered call: transport + queue + compute
            registries = [a.client.metrics.registry for a in remote if a.client.metrics is not None]
            call_seconds = sum(r.get_sample_value("cxr_backend_call_seconds_sum", {"route": route}) or 0.0 for r in registries)
            calls = sum(r.get_sample_value("cxr_backend_call_seconds_count", {"route": route}) or 0.0 for r in registries)
            out[f"{route}_call_mean_s"] = round(call_seconds / max(calls, 1.0), 4)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=8, help="studies per pass (default 8)")
    parser.add_argument("--rounds", type=int, default=2, help="local / remote turns per replica count (default 2)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the local backend (default 2)")
    parser.add_argument("--out", type=Path, default=REPO / "bench-out" / "ray")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    facts = machine_facts(work)
    files = dicom_corpus.build_cxr_sized_corpus(work / "corpus", args.n, images_per_study=1, real_every=2)
    original_bytes = statistics.mean(path.stat().st_size for path in files)
    # 4 logical CPUs on 2 cores: the 2-replica deployment starts while the 1-replica one still runs.
    cluster = RayCluster(work / "ray.log", num_cpus=4).start()
    results: list[dict[str, Any]] = []
    try:
        for replicas in (1, 2):
            started = time.perf_counter()
            # Two cores in all: one replica gets both threads, two get one each.
            cluster.deploy(REPO / "bundle", replicas=replicas, num_cpus=2 / replicas,
                           extra=("--num-threads", str(2 // replicas)))
            deploy_s = time.perf_counter() - started
            for round_ in range(args.rounds):
                order = [("local", lambda: BundleAnalyser(REPO / "bundle", "cpu", runtime="auto")),
                         (f"ray_{replicas}_replica", lambda: RemoteBundleAnalyser(
                             REPO / "bundle", cluster.url, "cxr", metrics=NodeMetrics()))]
                for name, make in order if round_ % 2 == 0 else order[::-1]:
                    result = {**measure(name, make, files, cluster), "replicas": replicas, "round": round_,
                              "deploy_s": round(deploy_s, 1)}
                    print(json.dumps(result), flush=True)
                    results.append(result)
    finally:
        cluster.close()
        shutil.rmtree(work, ignore_errors=True)  # the corpus: ~9 MB a file
    summary = summarise(results)
    summary["original_bytes_per_study"] = round(original_bytes)
    out = {"machine": facts, "cpu_busy_after": round(cpu_busy_fraction(), 3), "n": args.n, "rounds": args.rounds,
           "passes": results, "summary": summary}
    (args.out / "bench_ray.json").write_text(json.dumps(out, indent=1))
    print(json.dumps(summary, indent=1))
    return out


def summarise(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians per backend and replica count, and each remote figure's ratio to the local one of its half."""
    summary: dict[str, Any] = {}
    for replicas in (1, 2):
        half = [r for r in results if r["replicas"] == replicas]
        for name in sorted({r["backend"] for r in half}):
            rows = [r for r in half if r["backend"] == name]
            summary[f"{name}@{replicas}"] = {
                key: statistics.median(r[key] for r in rows) for key in rows[0]
                if key.endswith(("_s", "_per_s", "_per_study")) and key != "deploy_s"
            }
        local, remote = summary[f"local@{replicas}"], summary[f"ray_{replicas}_replica@{replicas}"]
        summary[f"ratio_ray_{replicas}_to_local"] = {
            "latency": round(remote["latency_median_s"] / local["latency_median_s"], 2),
            "throughput": round(remote["throughput_studies_per_s"] / local["throughput_studies_per_s"], 2),
            "node_cpu": round(remote["node_cpu_s_per_study"] / local["node_cpu_s_per_study"], 2),
            "total_cpu": round(remote["total_cpu_s_per_study"] / local["total_cpu_s_per_study"], 2),
        }
    return summary


if __name__ == "__main__":
    main()

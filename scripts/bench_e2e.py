"""Benchmark end to end: storescu -> the node (analysis on) -> SR in Orthanc.

For each batch size, a fresh node (its own spool, the repository's bundle) sends its reports
to a fresh Orthanc on loopback. Two passes over the same N detector-size DX files (real
chest images from the shared data, 2500 x 2048, 12 bits, ~10 MB, from
:mod:`scripts.dicom_corpus`):

* ``sequential``: one study at a time, the next sent once the previous SR is in Orthanc:
  the latency a radiologist sees on a quiet node;
* ``burst``: all N over one association, as a modality flushing its queue: throughput, and
  the latency under load.

Each batch size runs under each ``--results`` profile, the ``[results]`` switches of the node:
``off`` (SR only, its region the lung fields), ``relevance`` (Grad-CAM for the SR's region),
``summary`` (the default: Grad-CAM, the Secondary Capture summary image and the Key Object
Selection of the similar images, two more C-STOREs),
``segmentation`` (``summary`` plus the lung DICOM Segmentation). The difference between
profiles is the added cost per study of the relevance map, the summary image and its sending.

Latency is from the C-STORE response for an image (DCMTK ``storescu -v`` log line, read as it
is printed) to its SR appearing in Orthanc (``/changes``, polled every 20 ms). The peer
measured in the same run is the *model floor*: the bundle's preprocessing and classifier on
the same files in this process, without DICOM networking, spool or report. Node peak RSS
(``VmHWM``) is reported too.

Usage (from the repo root)::

    python -m scripts.bench_e2e --n 20 --batch-sizes 1,4 --results off,summary --device auto --out bench-out

Writes ``OUT/bench_e2e.json``; output never contains patient data.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, TypedDict

import pydicom

from dicom_node.spool.store import Spool
from scripts import dicom_corpus
from scripts.bench_ingest import log_tail, machine_facts, stop, wait_ready
from scripts.bench_peers import (
    PEERS,
    OrthancPacs,
    Pacs,
    PynetdicomPacs,
    Sender,
    echo_ok,
    send_parallel,
    send_pynetdicom,
    send_storescu,
)
from testkit.peers import free_port
from testkit.process_tree import cpu_seconds, machine_busy_cpu_seconds, status_sum

REPO = Path(__file__).resolve().parents[1]
NODE_AE = "CXR_AI"
READY_LINE = "ready: analysing"  # dicom_node.app, once the models are loaded


RESULT_PROFILES: dict[str, dict[str, bool]] = {
    "off": {"relevance_map": False, "summary_image": False, "lung_segmentation": False, "key_images": False},
    "relevance": {"relevance_map": True, "summary_image": False, "lung_segmentation": False, "key_images": False},
    "summary": {"relevance_map": True, "summary_image": True, "lung_segmentation": False, "key_images": True},
    "segmentation": {"relevance_map": True, "summary_image": True, "lung_segmentation": True, "key_images": True},
}
"""``--results`` profile -> the node's ``[results]`` switches."""


@dataclass(frozen=True)
class PassResult:
    """One pass (sequential or burst) at one batch size and results profile."""

    mode: str
    results: str
    batch_size: int
    n: int
    seconds: float  # first C-STORE sent -> last SR in Orthanc
    studies_per_second: float
    latency_p50_s: float
    latency_p95_s: float
    latency_max_s: float
    senders: int  # associations at once (burst); sequential: 1
    started_unix: float  # for lining up outside samples (GPU utilisation)
    ended_unix: float
    # Per study: index in the pass, its response (s from the pass start), latency, and the seconds
    # from its receipt to each state of its job record (processing, outbox, sent).
    studies: list[dict[str, Any]] = field(default_factory=list)
    # CPU seconds per study over the pass: the node's processes, and the whole machine (the node,
    # the sender, the PACS and anything else), against the model floor's per file.
    node_cpu_s_per_study: float | None = None
    machine_cpu_s_per_study: float | None = None


def percentile(values: list[float], q: float) -> float:
    """The ``q``-quantile (0..1) by linear interpolation.

    >>> percentile([1.0, 2.0, 3.0, 4.0], 0.5)
    2.5
    """
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def wait_for_reports(pacs: Pacs, sources: set[str], found: dict[str, float], timeout_s: float) -> None:
    """Fill ``found`` (source UID -> SR arrival time) until every source has its SR."""
    deadline = time.monotonic() + timeout_s
    while not sources <= set(found):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(sources - set(found))} report(s) missing after {timeout_s:.0f} s")
        found.update(pacs.reports(sources))
        time.sleep(0.02)


def wait_for_line(log_path: Path, text: str, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Block until ``text`` is in the log at ``log_path``; raise if ``proc`` exits or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while text not in log_path.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"no {text!r} in the node's log (exit status {proc.poll()})")
        time.sleep(0.1)


def job_stages(spool: Path, uid: str) -> dict[str, float]:
    """Seconds from the job's receipt to each state it entered (its record's history), from the spool."""
    job = Spool(spool, fsync=False).find_job(uid)  # read-only: the lock is taken on the first write
    if job is None:
        return {}
    received = datetime.fromisoformat(job.received_at)
    return {state: round((datetime.fromisoformat(at) - received).total_seconds(), 3) for state, at in job.history}


def node_config(path: Path, pacs: Pacs, batch_size: int, device: str, results: str,
                runtime: str = "auto", overlap_reports: bool = True) -> Path:
    switches = "".join(f"{key} = {str(value).lower()}\n" for key, value in RESULT_PROFILES[results].items())
    path.write_text(
        # The repository's own bundle, the one the model floor loads (not an installed copy's).
        f'[inference]\nbundle = "{REPO / "bundle"}"\ndevice = "{device}"\nruntime = "{runtime}"\n'
        f'batch_size = {batch_size}\noverlap_reports = {str(overlap_reports).lower()}\n[results]\n{switches}'
        f'[[destinations]]\nname = "pacs"\nae_title = "{pacs.ae_title}"\nhost = "127.0.0.1"\n'
        f"port = {pacs.dicom_port}\n"
    )
    return path


def peak_rss_mib(pid: int) -> float:
    """Peak resident memory (VmHWM) of a running node, MiB: the sum of its processes' peaks
    (the receiver and the analysis process)."""
    return status_sum(pid, ("VmHWM",))["VmHWM"] / 1024


def run_pass(mode: str, results: str, batch_size: int, files: list[Path], uids: list[str], port: int,
             pacs: Pacs, sender: Sender, senders: int, spool: Path, timeout_s: float,
             node_pid: int | None = None) -> PassResult:
    pacs.watch()
    found: dict[str, float] = {}
    responded: dict[str, float] = {}
    node_cpu = cpu_seconds(node_pid) if node_pid is not None else None
    machine_cpu = machine_busy_cpu_seconds()
    started_unix, started = time.time(), time.monotonic()
    try:
        if mode == "sequential":
            for path, uid in zip(files, uids):
                responded[uid] = sender(port, [path])[0]
                wait_for_reports(pacs, {uid}, found, timeout_s)
        else:
            responded = dict(zip(uids, send_parallel(sender, port, files, senders)))
            wait_for_reports(pacs, set(uids), found, timeout_s)
    finally:
        pacs.unwatch()
    machine_cpu = machine_busy_cpu_seconds() - machine_cpu
    if node_pid is not None and node_cpu is not None:
        node_cpu = cpu_seconds(node_pid) - node_cpu
    seconds = max(found.values()) - started
    latencies = [found[u] - responded[u] for u in uids]
    # Per study, by its place in the pass (no UIDs in the output): for outliers.
    studies: list[dict[str, Any]] = [
        {"index": i, "response_s": round(responded[u] - started, 3), "latency_s": round(found[u] - responded[u], 3),
         "stages_s": job_stages(spool, u)} for i, u in enumerate(uids)]
    # The PACS has the SR before the node hears Success and records "sent": give the last ones a moment.
    deadline = time.monotonic() + 10
    while any("sent" not in s["stages_s"] for s in studies) and time.monotonic() < deadline:
        time.sleep(0.05)
        for study, uid in zip(studies, uids):
            if "sent" not in study["stages_s"]:
                study["stages_s"] = job_stages(spool, uid)
    return PassResult(mode, results, batch_size, len(files), round(seconds, 3), round(len(files) / seconds, 3),
                      round(percentile(latencies, 0.5), 3), round(percentile(latencies, 0.95), 3),
                      round(max(latencies), 3), senders if mode == "burst" else 1, round(started_unix, 3),
                      round(time.time(), 3), studies,
                      node_cpu_s_per_study=None if node_cpu is None else round(node_cpu / len(files), 4),
                      machine_cpu_s_per_study=round(machine_cpu / len(files), 4))


class ModelFloor(TypedDict):
    """One :func:`model_floor` measurement."""

    batch_size: int
    relevance: bool
    seconds: float
    files_per_second: float
    cpu_s_per_file: float  # this process, all its threads
    device: str
    runtime: str


def model_floor(files: list[Path], batch_size: int, device: str, relevance: bool = False,
                runtime: str = "pytorch") -> ModelFloor:
    """Files/s of the bundle's preprocessing + classifier (+ Grad-CAM) alone, in this process."""
    from monai_app.inference import BundleAnalyser

    analyser = BundleAnalyser(REPO / "bundle", device, runtime=runtime)
    analyser.predict([analyser.prepare(files[0])], relevance=relevance)  # warm-up
    started, cpu = time.monotonic(), time.process_time()
    for i in range(0, len(files), batch_size):
        analyser.predict([analyser.prepare(p) for p in files[i:i + batch_size]], relevance=relevance)
    seconds, cpu = time.monotonic() - started, time.process_time() - cpu
    return {"batch_size": batch_size, "relevance": relevance, "seconds": round(seconds, 3),
            "files_per_second": round(len(files) / seconds, 3), "cpu_s_per_file": round(cpu / len(files), 4),
            "device": str(analyser.device), "runtime": analyser.runtime}


def peers(kind: str, run_dir: Path) -> tuple[Pacs, Sender, Callable[[int], bool] | None]:
    """The PACS, the sender and the node's readiness C-ECHO (``None``: DCMTK echoscu) of ``--peers``."""
    if kind == "dcmtk":
        return OrthancPacs(run_dir, NODE_AE), partial(send_storescu, called_ae=NODE_AE), None
    return (PynetdicomPacs(run_dir), partial(send_pynetdicom, called_ae=NODE_AE, work=run_dir),
            partial(echo_ok, called_ae=NODE_AE))


def bench_batch_size(batch_size: int, results: str, peer_kind: str, args: argparse.Namespace, files: list[Path],
                     uids: list[str], work: Path) -> dict[str, Any]:
    run_dir = Path(tempfile.mkdtemp(prefix=f"b{batch_size}_{results}_{peer_kind}_", dir=work))
    pacs, sender, echo = peers(peer_kind, run_dir)
    port = free_port()
    log_path = run_dir / "node.log"
    spool = run_dir / "spool"
    config = node_config(run_dir / "node.toml", pacs, batch_size, args.device, results, args.runtime,
                         overlap_reports=args.overlap_reports == "on")
    argv = [sys.executable, "-m", "dicom_node", "serve", "--ae-title", NODE_AE, "--port", str(port),
            "--bind", "127.0.0.1", "--spool", str(spool), "--config", str(config)]
    with open(log_path, "ab") as log:
        node = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        wait_ready(port, node, timeout_s=120, echo=echo)
        # The node receives while it loads the models: a study sent before this line waits for
        # them (the unexplained 5.2 s sequential maximum of an earlier run was that study).
        wait_for_line(log_path, READY_LINE, node, timeout_s=300)
        # One study through the first inference (lazy initialisation, CUDA kernels), not counted.
        warm_files, warm_uids = relabel(files[:1], run_dir / "warmup")
        warmup = asdict(run_pass("warmup", results, batch_size, warm_files, warm_uids, port, pacs, sender, 1, spool,
                                 args.timeout))
        passes = []
        for mode in ("sequential", "burst"):
            # Each pass sends the files under new UIDs, so no report is a re-send.
            pass_files, pass_uids = relabel(files[:args.sequential or None] if mode == "sequential" else files,
                                            run_dir / mode)
            result = asdict(run_pass(mode, results, batch_size, pass_files, pass_uids, port, pacs, sender,
                                     args.senders, spool, args.timeout, node_pid=node.pid))
            passes.append(result)
            print(json.dumps({k: v for k, v in result.items() if k != "studies"}), flush=True)
        rss = peak_rss_mib(node.pid)
    except Exception as exc:
        raise RuntimeError(f"{exc}{log_tail(log_path, 20)}") from exc
    finally:
        stop(node)
        pacs.stop()
        if not args.keep_files:  # GBs at detector size: the copies sent, the spool, what the PACS stored
            for folder in ("warmup", "sequential", "burst", "spool", "pacs"):
                shutil.rmtree(run_dir / folder, ignore_errors=True)
    return {"batch_size": batch_size, "results": results, "peers": peer_kind, "passes": passes,
            "warmup": warmup["studies"][0], "node_peak_rss_mib": round(rss, 1)}


def profile_summary(results: list[dict[str, Any]], floors: list[ModelFloor]) -> dict[str, Any]:
    """Best burst throughput of one results profile, against the model floor it needs."""
    relevance = RESULT_PROFILES[results[0]["results"]]["relevance_map"]
    best = max(results, key=lambda r: r["passes"][1]["studies_per_second"])
    floor = max((f["files_per_second"] for f in floors if f["relevance"] == relevance), default=None)
    burst = best["passes"][1]["studies_per_second"]
    floor_cpu = next((f["cpu_s_per_file"] for f in floors
                      if f["relevance"] == relevance and f["files_per_second"] == floor), None)
    burst_pass = best["passes"][1]
    return {
        "best_batch_size": best["batch_size"],
        "burst_studies_per_second": burst,
        "model_floor_files_per_second": floor,
        "node_over_floor": round(burst / floor, 3) if floor else None,
        # Where the machine's CPU went per study in that burst: the models' share bounds the ratio above.
        "burst_cpu_s_per_study": {"machine": burst_pass.get("machine_cpu_s_per_study"),
                                  "node": burst_pass.get("node_cpu_s_per_study"), "model_floor": floor_cpu},
        "sequential_latency_p50_s_batch_1": next(
            (r["passes"][0]["latency_p50_s"] for r in results if r["batch_size"] == 1), None),
    }


def accelerator_facts(device: str) -> dict[str, Any]:
    """torch's version and, for ``--device cuda``/``auto``, the GPU it sees."""
    import torch

    facts: dict[str, Any] = {"torch": torch.__version__, "cuda_available": torch.cuda.is_available()}
    if device != "cpu" and torch.cuda.is_available():
        facts.update(gpu=torch.cuda.get_device_name(0), cuda=torch.version.cuda)
    return facts


def peer_ratios(results: list[dict[str, Any]], base: str, other: str) -> list[dict[str, Any]]:
    """``other`` peers against ``base`` per profile, batch size and pass: p50 latency and studies/s ratios."""
    by_key = {(r["peers"], r["results"], r["batch_size"], p["mode"]): p for r in results for p in r["passes"]}
    ratios = []
    for (peer, profile, batch, mode), mine in by_key.items():
        theirs = by_key.get((base, profile, batch, mode))
        if peer == other and theirs is not None:
            ratios.append({"results": profile, "batch_size": batch, "mode": mode,
                           "latency_p50_ratio": round(mine["latency_p50_s"] / theirs["latency_p50_s"], 3),
                           "studies_per_second_ratio": round(
                               mine["studies_per_second"] / theirs["studies_per_second"], 3)})
    return ratios


def relabel(files: list[Path], out_dir: Path) -> tuple[list[Path], list[str]]:
    """Copies of ``files`` with fresh SOP Instance UIDs (same pixels, study and series)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths, uids = [], []
    for i, path in enumerate(files):
        ds = pydicom.dcmread(path)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        target = out_dir / f"{i:04d}.dcm"
        ds.save_as(target, enforce_file_format=True)
        paths.append(target)
        uids.append(str(ds.SOPInstanceUID))
    return paths, uids


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20, help="studies per pass (default 20)")
    parser.add_argument("--batch-sizes", default="1,4", help="comma-separated node batch sizes (default 1,4)")
    parser.add_argument("--results", default="off,summary",
                        help=f"comma-separated results profiles, of {', '.join(RESULT_PROFILES)} (default off,summary)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--runtime", default="auto", choices=("auto", "pytorch", "onnxruntime", "openvino"),
                        help="the node's [inference] runtime; the model floor is measured with it and with PyTorch")
    parser.add_argument("--overlap-reports", default="on", choices=("on", "off"),
                        help="the node's [inference] overlap_reports (default on, as shipped)")
    parser.add_argument("--peers", default="dcmtk",
                        help="sender and PACS, comma-separated to compare: dcmtk (storescu and Orthanc) or "
                             "pynetdicom (scripts.bench_sender and scripts.soak_pacs); default dcmtk")
    parser.add_argument("--size", default="cxr", choices=("cxr", "small"),
                        help="cxr: 2500 x 2048 (~10 MB, default); small: 256 x 256 (~130 KB)")
    parser.add_argument("--senders", type=int, default=1, help="associations at once in the burst (default 1)")
    parser.add_argument("--sequential", type=int, default=0,
                        help="studies in the sequential pass (default --n): a large burst, a short sequential pass")
    parser.add_argument("--floor-n", type=int, default=0, help="files the model floor runs over (default --n)")
    parser.add_argument("--keep-files", action="store_true",
                        help="keep each run's sent copies, spool and PACS store (default: removed after the run)")
    parser.add_argument("--no-floor", action="store_true", help="skip the model floor (quick runs, tests)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for the reports of a pass")
    parser.add_argument("--out", type=Path, default=Path("bench-out"), help="folder for bench_e2e.json")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp dir)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench_e2e_", dir=args.work))
    build = dicom_corpus.build_cxr_sized_corpus if args.size == "cxr" else dicom_corpus.build_small_corpus
    files = build(work / "corpus", args.n, images_per_study=1)
    uids = [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files]
    facts = machine_facts(work)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    profiles = args.results.split(",")
    unknown = [p for p in profiles if p not in RESULT_PROFILES]
    if unknown:
        raise SystemExit(f"unknown --results profile(s) {unknown}; known: {', '.join(RESULT_PROFILES)}")
    peer_kinds = args.peers.split(",")
    if not set(peer_kinds) <= set(PEERS):
        raise SystemExit(f"unknown --peers {args.peers!r}; known: {', '.join(PEERS)}")
    # The peer sets alternate within each batch size, so a drift in the machine's load hits both.
    results = [bench_batch_size(b, p, k, args, files, uids, work) for p in profiles for b in batch_sizes
               for k in peer_kinds]
    runtimes = ["pytorch"] + ([args.runtime] if args.runtime != "pytorch" else [])  # PyTorch eager: the peer
    floor_files = files[:args.floor_n or None]
    floors = [] if args.no_floor else [model_floor(floor_files, b, args.device, relevance, runtime)
                                       for runtime in runtimes for relevance in (False, True) for b in batch_sizes]
    node_floors = [f for f in floors if f["runtime"] == floors[-1]["runtime"]]  # the runtime the node ran
    first = [r for r in results if r["peers"] == peer_kinds[0]]
    summary: dict[str, Any] = {"per_profile": {p: profile_summary([r for r in first if r["results"] == p], node_floors)
                                               for p in profiles}}
    if len(peer_kinds) > 1:
        summary["peer_ratios"] = peer_ratios(results, peer_kinds[0], peer_kinds[1])
    if "off" in profiles:
        off = summary["per_profile"]["off"]
        summary["added_seconds_per_study_vs_off"] = {
            p: {
                "burst": round(1 / s["burst_studies_per_second"] - 1 / off["burst_studies_per_second"], 3),
                "sequential_latency_p50": round(
                    s["sequential_latency_p50_s_batch_1"] - off["sequential_latency_p50_s_batch_1"], 3)
                if s["sequential_latency_p50_s_batch_1"] is not None
                and off["sequential_latency_p50_s_batch_1"] is not None else None,
            }
            for p, s in summary["per_profile"].items() if p != "off"
        }
    out = {"machine": facts, "accelerator": accelerator_facts(args.device), "n": args.n, "size": args.size,
           "sequential_n": args.sequential or args.n, "peers": args.peers, "senders": args.senders,
           "overlap_reports": args.overlap_reports,
           "device": args.device, "results": results,
           "model_floor": floors,
           "summary": summary}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_e2e.json").write_text(json.dumps(out, indent=1) + "\n")
    print(f"{'peers':>10} {'results':>12} {'batch':>5} {'mode':>10} {'studies/s':>10} {'p50 s':>7} {'p95 s':>7} "
          f"{'max s':>7} {'RSS MiB':>8} {'node CPU s':>10} {'machine CPU s':>13} (per study)")
    for r in results:
        for p in r["passes"]:
            print(f"{r['peers']:>10} {r['results']:>12} {r['batch_size']:>5} {p['mode']:>10} "
                  f"{p['studies_per_second']:>10.2f} "
                  f"{p['latency_p50_s']:>7.2f} {p['latency_p95_s']:>7.2f} {p['latency_max_s']:>7.2f} "
                  f"{r['node_peak_rss_mib']:>8.0f} {p['node_cpu_s_per_study'] or 0:>10.3f} "
                  f"{p['machine_cpu_s_per_study']:>13.3f}")
    for f in floors:
        print(f"model floor (batch {f['batch_size']}, relevance {f['relevance']}, {f['device']}, {f['runtime']}): "
              f"{f['files_per_second']:.2f} files/s, {f['cpu_s_per_file']:.3f} CPU s a file")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

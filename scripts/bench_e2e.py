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
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypedDict

import pydicom

from scripts import dicom_corpus
from scripts.bench_ingest import dcmtk_env, free_port, log_tail, machine_facts, stop, wait_ready
from testkit.orthanc import ORTHANC_AE_TITLE, OrthancServer
from testkit.process_tree import status_sum

REPO = Path(__file__).resolve().parents[1]
NODE_AE = "CXR_AI"
CALLING_AE = "BENCH_SCU"


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


class ArrivalWatcher(threading.Thread):
    """Records when each new instance appears in Orthanc (``/changes``, every 20 ms)."""

    def __init__(self, orthanc: OrthancServer) -> None:
        super().__init__(daemon=True)
        self.orthanc = orthanc
        self.arrivals: dict[str, float] = {}  # Orthanc instance ID -> time.monotonic()
        self._halt = threading.Event()
        self._since = int(orthanc.get("/changes?last")["Last"])

    def run(self) -> None:
        while not self._halt.is_set():
            changes = self.orthanc.get(f"/changes?since={self._since}&limit=1000")
            now = time.monotonic()
            for change in changes["Changes"]:
                if change["ChangeType"] == "NewInstance":
                    self.arrivals.setdefault(change["ID"], now)
            self._since = int(changes["Last"])
            self._halt.wait(0.02)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)


def report_source(orthanc: OrthancServer, orthanc_id: str, sources: set[str]) -> str | None:
    """The sent image an SR in Orthanc reports on (one of ``sources``), or ``None``."""
    url = f"http://127.0.0.1:{orthanc.http_port}/instances/{orthanc_id}/file"
    with urllib.request.urlopen(url, timeout=10) as response:
        ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(response.read()))
    stack = list(ds.get("ContentSequence", []))
    while stack:
        item = stack.pop()
        stack.extend(item.get("ContentSequence", []))
        for ref in item.get("ReferencedSOPSequence", []):
            if str(ref.ReferencedSOPInstanceUID) in sources:
                return str(ref.ReferencedSOPInstanceUID)
    return None


def send(port: int, files: list[Path]) -> list[float]:
    """storescu ``files`` over one association; the time of each C-STORE response, in order."""
    argv = ["/usr/bin/storescu", "-v", "-aet", CALLING_AE, "-aec", NODE_AE, "127.0.0.1", str(port),
            *map(str, files)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dcmtk_env())
    responses = []
    assert proc.stdout is not None
    for line in proc.stdout:
        if "Received Store Response" in line:
            responses.append(time.monotonic())
    if proc.wait() != 0 or len(responses) != len(files):
        raise RuntimeError(f"storescu failed ({proc.returncode}), {len(responses)} of {len(files)} responses")
    return responses


def wait_for_reports(watcher: ArrivalWatcher, orthanc: OrthancServer, sources: set[str],
                     found: dict[str, float], timeout_s: float) -> None:
    """Fill ``found`` (source UID -> SR arrival time) until every source has its SR."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout_s
    while not sources <= set(found):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(sources - set(found))} report(s) missing after {timeout_s:.0f} s")
        for orthanc_id, arrived in list(watcher.arrivals.items()):
            if orthanc_id in seen:
                continue
            seen.add(orthanc_id)
            source = report_source(orthanc, orthanc_id, sources)
            if source is not None:
                found[source] = arrived
        time.sleep(0.02)


def node_config(path: Path, orthanc: OrthancServer, batch_size: int, device: str, results: str,
                runtime: str = "auto") -> Path:
    switches = "".join(f"{key} = {str(value).lower()}\n" for key, value in RESULT_PROFILES[results].items())
    path.write_text(
        # The repository's own bundle, the one the model floor loads (not an installed copy's).
        f'[inference]\nbundle = "{REPO / "bundle"}"\ndevice = "{device}"\nruntime = "{runtime}"\n'
        f'batch_size = {batch_size}\n[results]\n{switches}'
        f'[[destinations]]\nname = "pacs"\nae_title = "{ORTHANC_AE_TITLE}"\nhost = "127.0.0.1"\n'
        f"port = {orthanc.dicom_port}\n"
    )
    return path


def peak_rss_mib(pid: int) -> float:
    """Peak resident memory (VmHWM) of a running node, MiB: the sum of its processes' peaks
    (the receiver and the analysis process)."""
    return status_sum(pid, ("VmHWM",))["VmHWM"] / 1024


def run_pass(mode: str, results: str, batch_size: int, files: list[Path], uids: list[str], port: int,
             orthanc: OrthancServer, timeout_s: float) -> PassResult:
    watcher = ArrivalWatcher(orthanc)
    watcher.start()
    found: dict[str, float] = {}
    responded: dict[str, float] = {}
    started = time.monotonic()
    try:
        if mode == "sequential":
            for path, uid in zip(files, uids):
                responded[uid] = send(port, [path])[0]
                wait_for_reports(watcher, orthanc, {uid}, found, timeout_s)
        else:
            responded = dict(zip(uids, send(port, files)))
            wait_for_reports(watcher, orthanc, set(uids), found, timeout_s)
    finally:
        watcher.stop()
    seconds = max(found.values()) - started
    latencies = [found[u] - responded[u] for u in uids]
    return PassResult(mode, results, batch_size, len(files), round(seconds, 3), round(len(files) / seconds, 3),
                      round(percentile(latencies, 0.5), 3), round(percentile(latencies, 0.95), 3),
                      round(max(latencies), 3))


class ModelFloor(TypedDict):
    """One :func:`model_floor` measurement."""

    batch_size: int
    relevance: bool
    seconds: float
    files_per_second: float
    device: str
    runtime: str


def model_floor(files: list[Path], batch_size: int, device: str, relevance: bool = False,
                runtime: str = "pytorch") -> ModelFloor:
    """Files/s of the bundle's preprocessing + classifier (+ Grad-CAM) alone, in this process."""
    from monai_app.inference import BundleAnalyser

    analyser = BundleAnalyser(REPO / "bundle", device, runtime=runtime)
    analyser.predict([analyser.prepare(files[0])], relevance=relevance)  # warm-up
    started = time.monotonic()
    for i in range(0, len(files), batch_size):
        analyser.predict([analyser.prepare(p) for p in files[i:i + batch_size]], relevance=relevance)
    seconds = time.monotonic() - started
    return {"batch_size": batch_size, "relevance": relevance, "seconds": round(seconds, 3),
            "files_per_second": round(len(files) / seconds, 3), "device": str(analyser.device),
            "runtime": analyser.runtime}


def bench_batch_size(batch_size: int, results: str, args: argparse.Namespace, files: list[Path], uids: list[str],
                     work: Path) -> dict[str, Any]:
    run_dir = Path(tempfile.mkdtemp(prefix=f"b{batch_size}_{results}_", dir=work))
    orthanc = OrthancServer(run_dir / "orthanc", calling_ae_titles=(NODE_AE,)).start()
    port = free_port()
    log_path = run_dir / "node.log"
    config = node_config(run_dir / "node.toml", orthanc, batch_size, args.device, results, args.runtime)
    argv = [sys.executable, "-m", "dicom_node", "serve", "--ae-title", NODE_AE, "--port", str(port),
            "--bind", "127.0.0.1", "--spool", str(run_dir / "spool"), "--config", str(config)]
    with open(log_path, "ab") as log:
        node = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        wait_ready(port, node, timeout_s=120)
        passes = []
        for mode in ("sequential", "burst"):
            # Each pass sends the files under new UIDs, so no report is a re-send.
            pass_files, pass_uids = relabel(files, run_dir / mode)
            passes.append(asdict(run_pass(mode, results, batch_size, pass_files, pass_uids, port, orthanc, args.timeout)))
            print(json.dumps(passes[-1]), flush=True)
        rss = peak_rss_mib(node.pid)
    except Exception as exc:
        raise RuntimeError(f"{exc}{log_tail(log_path, 20)}") from exc
    finally:
        stop(node)
        orthanc.stop()
    return {"batch_size": batch_size, "results": results, "passes": passes, "node_peak_rss_mib": round(rss, 1)}


def profile_summary(results: list[dict[str, Any]], floors: list[ModelFloor]) -> dict[str, Any]:
    """Best burst throughput of one results profile, against the model floor it needs."""
    relevance = RESULT_PROFILES[results[0]["results"]]["relevance_map"]
    best = max(results, key=lambda r: r["passes"][1]["studies_per_second"])
    floor = max((f for f in floors if f["relevance"] == relevance), key=lambda f: f["files_per_second"])
    return {
        "best_batch_size": best["batch_size"],
        "burst_studies_per_second": best["passes"][1]["studies_per_second"],
        "model_floor_files_per_second": floor["files_per_second"],
        "node_over_floor": round(best["passes"][1]["studies_per_second"] / floor["files_per_second"], 3),
        "sequential_latency_p50_s_batch_1": next(
            (r["passes"][0]["latency_p50_s"] for r in results if r["batch_size"] == 1), None),
    }


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
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for the reports of a pass")
    parser.add_argument("--out", type=Path, default=Path("bench-out"), help="folder for bench_e2e.json")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp dir)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench_e2e_", dir=args.work))
    files = dicom_corpus.build_cxr_sized_corpus(work / "corpus", args.n, images_per_study=1)
    uids = [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files]
    facts = machine_facts(work)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    profiles = args.results.split(",")
    unknown = [p for p in profiles if p not in RESULT_PROFILES]
    if unknown:
        raise SystemExit(f"unknown --results profile(s) {unknown}; known: {', '.join(RESULT_PROFILES)}")
    results = [bench_batch_size(b, p, args, files, uids, work) for p in profiles for b in batch_sizes]
    runtimes = ["pytorch"] + ([args.runtime] if args.runtime != "pytorch" else [])  # PyTorch eager: the peer
    floors = [model_floor(files, b, args.device, relevance, runtime) for runtime in runtimes
              for relevance in (False, True) for b in batch_sizes]
    node_floors = [f for f in floors if f["runtime"] == floors[-1]["runtime"]]  # the runtime the node ran
    summary = {"per_profile": {p: profile_summary([r for r in results if r["results"] == p], node_floors)
                               for p in profiles}}
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
    out = {"machine": facts, "n": args.n, "device": args.device, "results": results, "model_floor": floors,
           "summary": summary}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_e2e.json").write_text(json.dumps(out, indent=1) + "\n")
    print(f"{'results':>12} {'batch':>5} {'mode':>10} {'studies/s':>10} {'p50 s':>7} {'p95 s':>7} {'RSS MiB':>8}")
    for r in results:
        for p in r["passes"]:
            print(f"{r['results']:>12} {r['batch_size']:>5} {p['mode']:>10} {p['studies_per_second']:>10.2f} "
                  f"{p['latency_p50_s']:>7.2f} {p['latency_p95_s']:>7.2f} {r['node_peak_rss_mib']:>8.0f}")
    for f in floors:
        print(f"model floor (batch {f['batch_size']}, relevance {f['relevance']}, {f['device']}, {f['runtime']}): "
              f"{f['files_per_second']:.2f} files/s")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

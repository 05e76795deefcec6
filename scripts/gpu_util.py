"""GPU utilisation during a benchmark: sample it, then line the samples up with bench_e2e's passes.

``sample`` writes ``unix_time,utilization_gpu_percent,memory_used_mib`` every ``--interval``
seconds until it is killed, through NVML (``pynvml``, from nvidia-ml-py) where it imports,
else by asking ``nvidia-smi --query-gpu=utilization.gpu,memory.used`` each time. NVML's
utilisation is the share of the last sample period in which a kernel ran, not how full the
GPU was. ``summarize`` gives each pass of each ``bench_e2e.json`` (its ``started_unix`` to
``ended_unix``) the mean and maximum utilisation and the maximum memory of the samples inside it::

    python -m scripts.gpu_util sample --out gpu_util.csv --interval 0.25 &
    python -m scripts.gpu_util summarize --samples gpu_util.csv --bench out/bench_e2e.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

Reading = tuple[float, float]  # utilisation %, memory used MiB


def nvml_reader() -> Callable[[], Reading] | None:
    """A reader of GPU 0 through NVML, or ``None`` where pynvml or the driver's library is missing."""
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    except Exception:  # not installed, or no NVIDIA driver: fall back to nvidia-smi
        return None

    def read() -> Reading:
        util = pynvml.nvmlDeviceGetUtilizationRates(handle)
        return float(util.gpu), pynvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20

    return read


def smi_read() -> Reading:
    """GPU 0's utilisation and memory by one ``nvidia-smi`` query."""
    out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits",
                          "-i", "0"], capture_output=True, text=True, check=True, timeout=10).stdout
    util, memory = out.strip().splitlines()[0].split(",")
    return float(util), float(memory)


def sample(out: Path, interval: float) -> int:
    read = nvml_reader()
    if read is None and shutil.which("nvidia-smi") is None:
        print("gpu_util: neither NVML nor nvidia-smi: no GPU samples", file=sys.stderr)
        return 1
    with open(out, "w", encoding="utf-8") as f:
        f.write("unix_time,utilization_gpu_percent,memory_used_mib\n")
        while True:
            try:
                util, memory = (read or smi_read)()
            except (OSError, ValueError, subprocess.SubprocessError) as exc:  # one lost sample, not the run's
                print(f"gpu_util: sample failed: {exc}", file=sys.stderr)
            else:
                f.write(f"{time.time():.3f},{util:.0f},{memory:.0f}\n")
                f.flush()
            time.sleep(interval)


def pass_utilisation(samples: list[tuple[float, float, float]], start: float, end: float) -> dict[str, Any]:
    """Mean and max utilisation and max memory of the samples within ``[start, end]``.

    >>> pass_utilisation([(0.0, 10.0, 100.0), (1.0, 50.0, 300.0), (2.0, 90.0, 200.0), (3.0, 0.0, 50.0)], 0.5, 2.5)
    {'samples': 2, 'gpu_util_mean_percent': 70.0, 'gpu_util_max_percent': 90.0, 'memory_max_mib': 300.0}
    """
    inside = [s for s in samples if start <= s[0] <= end]
    if not inside:
        return {"samples": 0}
    utils = [s[1] for s in inside]
    return {"samples": len(inside), "gpu_util_mean_percent": round(sum(utils) / len(utils), 1),
            "gpu_util_max_percent": max(utils), "memory_max_mib": max(s[2] for s in inside)}


def summarize(samples_path: Path, benches: list[Path]) -> list[dict[str, Any]]:
    lines = samples_path.read_text().splitlines()[1:] if samples_path.exists() else []
    samples = [(float(t), float(u), float(m)) for t, u, m in (line.split(",") for line in lines if line)]
    rows = []
    for bench in benches:
        report = json.loads(bench.read_text())
        for run in report["results"]:
            for timed in run["passes"]:
                rows.append({"bench": bench.parent.name, "size": report.get("size"), "results": run["results"],
                             "batch_size": run["batch_size"], "mode": timed["mode"], "n": timed["n"],
                             "studies_per_second": timed["studies_per_second"],
                             "latency_p50_s": timed["latency_p50_s"], "latency_p95_s": timed["latency_p95_s"],
                             **pass_utilisation(samples, timed["started_unix"], timed["ended_unix"])})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    sampler = commands.add_parser("sample")
    sampler.add_argument("--out", type=Path, required=True)
    sampler.add_argument("--interval", type=float, default=0.25)
    summary = commands.add_parser("summarize")
    summary.add_argument("--samples", type=Path, required=True)
    summary.add_argument("--bench", type=Path, action="append", required=True, help="a bench_e2e.json (repeatable)")
    summary.add_argument("--out", type=Path, default=None, help="JSON of the rows (default: print only)")
    args = parser.parse_args(argv)
    if args.command == "sample":
        return sample(args.out, args.interval)
    rows = summarize(args.samples, [b for b in args.bench if b.exists()])
    if args.out is not None:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")
    print(f"{'size':>6} {'results':>8} {'batch':>5} {'mode':>10} {'n':>4} {'studies/s':>9} {'p50 s':>6} {'p95 s':>6} "
          f"{'GPU % mean':>10} {'max':>4} {'MiB max':>8}")
    for r in rows:
        print(f"{r['size']!s:>6} {r['results']:>8} {r['batch_size']:>5} {r['mode']:>10} {r['n']:>4} "
              f"{r['studies_per_second']:>9.2f} {r['latency_p50_s']:>6.3f} {r['latency_p95_s']:>6.3f} "
              f"{r.get('gpu_util_mean_percent', float('nan')):>10} {r.get('gpu_util_max_percent', '-')!s:>4} "
              f"{r.get('memory_max_mib', '-')!s:>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

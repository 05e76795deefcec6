"""Benchmark C-STORE ingest: the node (``python -m dicom_node serve``) against DCMTK storescp.

For each size class (``small``: 256 x 256, ~130 KB; ``cxr``: 2500 x 2048, ~10 MB) the same
N files from :mod:`scripts.dicom_corpus` are sent with DCMTK ``/usr/bin/storescu`` over one
association to each receiver in turn, alternating which goes first, for several rounds.
Each round starts the receiver on a fresh, empty folder on the same disk, waits for it to
answer C-ECHO, times storescu from start to exit, then checks that every SOP Instance UID
sent is on disk, so a receiver that drops files cannot look fast.

Usage (from the repo root)::

    python -m scripts.bench_ingest --n 200 --rounds 3 --sizes small,cxr --out bench-out

The node runs in both analysis modes (``--analysis both``, the default): ``node-analysis-on``
(the models loaded and analysing what arrives, the default product) and ``node-analysis-off``
(``--no-analysis``: receive and spool only). With analysis on, timing starts only once the
node logged ``ready:`` (models loaded), so model loading is not counted as ingest.

Prints median files/s and MB/s per receiver, each node mode over storescp and the disk
floor, and analysis on over off, and writes them with the machine facts to
``OUT/bench_ingest.json``. Output never contains patient data
(the corpus is synthetic-ID DX built from public images).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pydicom

from dicom_node.spool.durable import write_atomically
from scripts import dicom_corpus
from testkit.peers import free_port

REPO = Path(__file__).resolve().parents[1]
AE_TITLE = "CXR_AI"
CALLING_AE = "BENCH_SCU"
NODE_ON, NODE_OFF = "node-analysis-on", "node-analysis-off"
# The least a pynetdicom receiver does per instance (scripts/bare_pynetdicom_scp.py): the ceiling
# of any receiver built on pynetdicom, as storescp is of DCMTK's C++.
BARE_PYNETDICOM = "pynetdicom-bare"
NODE_MODES = {"on": (NODE_ON,), "off": (NODE_OFF,), "both": (NODE_ON, NODE_OFF)}
FLOOR = "disk-floor"  # no network: the same bytes written as the node writes them
SIZE_CLASSES = ("small", "cxr")


@dataclass(frozen=True)
class RoundResult:
    """One timed transfer of the whole corpus to one receiver."""

    receiver: str
    round: int
    position: int  # 0 = first receiver of the round, 1 = second
    seconds: float
    files_stored: int


@dataclass(frozen=True)
class SizeResult:
    """All rounds of one size class, with medians per receiver.

    ``summary[receiver]`` holds ``median_s``, ``min_s``, ``max_s``, ``files_per_s`` and
    ``mb_per_s`` (1 MB = 10**6 bytes, from the median wall time).
    """

    n_files: int
    bytes: int
    summary: dict[str, dict[str, float]]
    # Of median files/s, per node mode: "<mode>/storescp", "<mode>/disk-floor" (how close to
    # what the disk allows) and, with both modes, "analysis-on/analysis-off".
    ratios: dict[str, float]
    rounds: list[RoundResult]


def dcmtk_env() -> dict[str, str]:
    """Environment for DCMTK processes: Nagle off (else ~50 ms stall per DIMSE message)."""
    return {**os.environ, "TCP_NODELAY": "1"}


def receiver_command(
    receiver: str, port: int, store_dir: Path, node_cmd: list[str], config: Path
) -> tuple[list[str], dict[str, str]]:
    """Return the argv and environment that start ``receiver`` on ``port``.

    Parameters
    ----------
    receiver : str
        ``"node-analysis-on"``, ``"node-analysis-off"``, ``"pynetdicom-bare"`` or ``"storescp"``.
    port : int
        Port to listen on (127.0.0.1 only for the node; storescp has no bind option).
    store_dir : Path
        The node's spool or storescp's output folder.
    node_cmd : list of str
        Command prefix that starts the node, e.g. ``[python, "-m", "dicom_node", "serve"]``.
    config : Path
        Node configuration file (TOML).

    Returns
    -------
    tuple
        ``(argv, env)``.
    """
    # The node and the bare SCP run from this repository, whatever the caller's PYTHONPATH.
    repo_env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    if receiver in (NODE_ON, NODE_OFF):
        return [*node_cmd, "--ae-title", AE_TITLE, "--port", str(port), "--bind", "127.0.0.1",
                "--spool", str(store_dir), "--config", str(config),
                "--analysis" if receiver == NODE_ON else "--no-analysis"], repo_env
    if receiver == BARE_PYNETDICOM:
        return [sys.executable, "-m", "scripts.bare_pynetdicom_scp", "--port", str(port),
                "--store", str(store_dir), "--ae-title", AE_TITLE], repo_env
    # Same maximum PDU as the node's default (128 KiB; storescp's own default is 16 KiB).
    return ["/usr/bin/storescp", "--aetitle", AE_TITLE, "--max-pdu", "131072",
            "--output-directory", str(store_dir), str(port)], dcmtk_env()


def stored_uids(receiver: str, store_dir: Path) -> set[str]:
    """Return the SOP Instance UIDs a receiver has written, from its file names.

    The node writes ``<spool>/instances/<SOPInstanceUID>.dcm``; storescp writes
    ``<store_dir>/<modality>.<SOPInstanceUID>`` (e.g. ``DX.1.2.3``); the bare pynetdicom SCP
    ``<store_dir>/<SOPInstanceUID>``.
    """
    if receiver in (NODE_ON, NODE_OFF):
        return {p.stem for p in (store_dir / "instances").glob("*.dcm") if p.is_file()}
    if receiver == BARE_PYNETDICOM:
        return {p.name for p in store_dir.iterdir() if p.is_file()}
    return {p.name.split(".", 1)[1] for p in store_dir.iterdir()
            if p.is_file() and "." in p.name}


def log_tail(path: Path, lines: int = 8) -> str:
    """Return the last ``lines`` lines of a receiver log, for error messages."""
    text = path.read_text(errors="replace").splitlines()[-lines:] if path.exists() else []
    return "".join(f"\n  | {line}" for line in text)


def wait_ready(port: int, proc: subprocess.Popen[bytes], log_path: Path | None = None,
               timeout_s: float = 120.0, echo: Callable[[int], bool] | None = None) -> None:
    """Block until something on ``port`` answers C-ECHO to ``AE_TITLE`` (DCMTK echoscu, or ``echo``)
    and, with ``log_path``, its log has the node's ``ready:`` line (the models are loaded: receiving
    starts before).

    Raises
    ------
    RuntimeError
        If ``proc`` exits or it is not ready within ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    while log_path is not None and "ready:" not in log_path.read_text(errors="replace"):
        if proc.poll() is not None:
            raise RuntimeError(f"receiver exited with {proc.returncode} before it was ready")
        if time.monotonic() > deadline:
            raise RuntimeError(f"no 'ready:' line within {timeout_s:.0f} s")
        time.sleep(0.2)
    argv = ["/usr/bin/echoscu", "-to", "2", "-aet", CALLING_AE, "-aec", AE_TITLE,
            "127.0.0.1", str(port)]
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"receiver exited with {proc.returncode} before it was ready")
        if echo(port) if echo else subprocess.run(argv, env=dcmtk_env(), capture_output=True).returncode == 0:
            return
        time.sleep(0.1)
    raise RuntimeError(f"no C-ECHO answer on port {port} within {timeout_s:.0f} s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM ``proc`` and wait; SIGKILL it if it has not exited after 30 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_round(
    receiver: str,
    files: list[Path],
    sent_uids: set[str],
    work: Path,
    node_cmd: list[str],
    config: Path,
) -> tuple[float, int]:
    """Start ``receiver`` on an empty folder, send ``files`` and time it.

    Returns
    -------
    tuple
        ``(seconds, files_stored)``: storescu's wall time and how many were stored.

    Raises
    ------
    RuntimeError
        If storescu fails or any sent instance is missing on the receiver's disk.
    """
    store_dir = work / f"{receiver}-store"
    shutil.rmtree(store_dir, ignore_errors=True)
    store_dir.mkdir(parents=True)
    port = free_port()
    argv, env = receiver_command(receiver, port, store_dir, node_cmd, config)
    log_path = work / f"{receiver}.log"
    with open(log_path, "wb") as log:  # one log per round: a failure shows its own tail
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        try:
            wait_ready(port, proc, log_path if receiver == NODE_ON else None)
        except RuntimeError as err:
            raise RuntimeError(f"{receiver}: {err}{log_tail(log_path)}") from None
        scu = ["/usr/bin/storescu", "-aet", CALLING_AE, "-aec", AE_TITLE,
               "127.0.0.1", str(port), *map(str, files)]
        start = time.perf_counter()
        done = subprocess.run(scu, env=dcmtk_env(), capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(f"storescu to {receiver} exited {done.returncode}: "
                               f"{done.stderr.strip()[-400:]}{log_tail(log_path)}")
        stored = stored_uids(receiver, store_dir)
    finally:
        stop(proc)
    missing = len(sent_uids - stored)
    if missing:
        raise RuntimeError(f"{receiver} stored {len(stored & sent_uids)} of {len(sent_uids)} "
                           f"instances ({missing} missing){log_tail(log_path)}")
    # Untimed: flush what this receiver left dirty (storescp never fsyncs), so its write-back
    # does not land in the next receiver's timed round.
    os.sync()
    shutil.rmtree(store_dir)
    return seconds, len(stored & sent_uids)


def time_disk_floor(files: list[Path], work: Path, fsync: bool) -> float:
    """Seconds to persist ``files`` the way the node does (temp file, fdatasync, rename,
    directory fsync, plus a small job record), with no network: no durable receiver on this
    disk can be faster, while storescp never waits for the disk at all.
    """
    dest = work / "floor-store"
    shutil.rmtree(dest, ignore_errors=True)
    (dest / "jobs").mkdir(parents=True)
    contents = [f.read_bytes() for f in files]  # from the page cache: not timed as disk reads
    start = time.perf_counter()
    for f, content in zip(files, contents):
        write_atomically(dest / f.name, [content], fsync=fsync)
        write_atomically(dest / "jobs" / f"{f.stem}.json", [b'{"state": "received"}'], fsync=fsync)
    seconds = time.perf_counter() - start
    os.sync()
    shutil.rmtree(dest)
    return seconds


def summarize(rounds: list[RoundResult], n_files: int, n_bytes: int) -> dict[str, dict[str, float]]:
    """Median, min and max wall time, and median files/s and MB/s, per receiver."""
    summary = {}
    for receiver in dict.fromkeys(r.receiver for r in rounds):
        seconds = [r.seconds for r in rounds if r.receiver == receiver]
        median = statistics.median(seconds)
        summary[receiver] = {"median_s": median, "min_s": min(seconds), "max_s": max(seconds),
                             "files_per_s": n_files / median, "mb_per_s": n_bytes / 1e6 / median}
    return summary


def cpu_busy_fraction(seconds: float = 1.0) -> float:
    """Fraction of all cores' time spent busy over ``seconds`` (from ``/proc/stat``)."""
    def sample() -> tuple[int, int]:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = values[3] + values[4]  # idle + iowait
        return idle, sum(values)

    idle0, total0 = sample()
    time.sleep(seconds)
    idle1, total1 = sample()
    return 1.0 - (idle1 - idle0) / max(total1 - total0, 1)


def machine_facts(work: Path) -> dict[str, Any]:
    """Cores, CPU, memory, the work folder's file system and tool versions."""
    def first_line(argv: list[str]) -> str:
        try:
            out = subprocess.run(argv, capture_output=True, text=True)
        except OSError:  # not installed (the GPU machine has no DCMTK, maybe no git)
            return ""
        lines = (out.stdout or out.stderr).strip().splitlines()
        return lines[0] if out.returncode == 0 and lines else ""

    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
               platform.processor())
    mem_kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal"))
    mounts = [line.split()[:3] for line in Path("/proc/mounts").read_text().splitlines()]
    device, mount, fstype = max((m for m in mounts if str(work.resolve()).startswith(m[1])),
                                key=lambda m: len(m[1]))
    rotational = Path(f"/sys/block/{Path(device).name}/queue/rotational")
    usage = shutil.disk_usage(work)
    return {
        # Other processes' load skews every number; it is recorded so a busy run shows.
        "cpu_busy_before_start": round(cpu_busy_fraction(), 3),
        "load_average_1_5_15_min": [round(x, 2) for x in os.getloadavg()],
        "cores": os.cpu_count(), "cpu": cpu, "memory_gib": round(mem_kib / 2**20, 1),
        "kernel": platform.release(), "python": platform.python_version(),
        "pydicom": pydicom.__version__,
        "dcmtk": first_line(["/usr/bin/storescu", "--version"]).strip("$ ").removeprefix("dcmtk: "),
        "disk": {"device": device, "mount": mount, "fstype": fstype,
                 "rotational": rotational.read_text().strip() if rotational.exists() else None,
                 "free_gib": round(usage.free / 2**30, 1)},
        "repo_commit": first_line(["git", "-C", str(REPO), "rev-parse", "HEAD"]),
        "repo_dirty": bool(first_line(["git", "-C", str(REPO), "status", "--porcelain"])),
    }


def ratios(summary: dict[str, dict[str, float]], nodes: tuple[str, ...]) -> dict[str, float]:
    """Each node mode's median files/s over storescp's and the disk floor's, and analysis on over off."""
    rate = {receiver: s["files_per_s"] for receiver, s in summary.items()}
    out = {}
    for node in nodes:
        out[f"{node}/storescp"] = rate[node] / rate["storescp"]
        if BARE_PYNETDICOM in rate:
            out[f"{node}/{BARE_PYNETDICOM}"] = rate[node] / rate[BARE_PYNETDICOM]
        out[f"{node}/{FLOOR}"] = rate[node] / rate[FLOOR]
    if NODE_ON in rate and NODE_OFF in rate:
        out["analysis-on/analysis-off"] = rate[NODE_ON] / rate[NODE_OFF]
    if BARE_PYNETDICOM in rate:
        out[f"{BARE_PYNETDICOM}/storescp"] = rate[BARE_PYNETDICOM] / rate["storescp"]
    return out


def bench_size(size: str, args: argparse.Namespace, work: Path, config: Path,
               node_cmd: list[str]) -> SizeResult:
    """Build (or reuse) the corpus for ``size`` and run every round on every receiver."""
    real_every = args.real_every if size == "cxr" else 0
    corpus_dir = work / "corpus" / (f"{size}-real{real_every}" if real_every else size)
    files = sorted(corpus_dir.glob("*.dcm")) if corpus_dir.is_dir() else []
    if len(files) != args.n:  # reuse only a complete corpus from an earlier run
        shutil.rmtree(corpus_dir, ignore_errors=True)
        if size == "small":
            files = dicom_corpus.build_small_corpus(corpus_dir, args.n)
        else:
            files = dicom_corpus.build_cxr_sized_corpus(corpus_dir, args.n, real_every=real_every)
    sent_uids = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
    n_bytes = sum(f.stat().st_size for f in files)
    for f in files:  # warm the page cache so round 1 does not also measure reading the corpus
        f.read_bytes()
    receivers = (*NODE_MODES[args.analysis], *([BARE_PYNETDICOM] if args.pynetdicom_peer else []), "storescp")
    rounds: list[RoundResult] = []
    for r in range(args.rounds):
        order = receivers if r % 2 == 0 else receivers[::-1]
        for position, receiver in enumerate(order):
            seconds, stored = run_round(receiver, files, sent_uids, work, node_cmd, config)
            rounds.append(RoundResult(receiver, r, position, seconds, stored))
            print(f"  {size:5} round {r + 1}/{args.rounds} {receiver:17} {seconds:7.2f} s "
                  f"{len(files) / seconds:8.1f} files/s", flush=True)
        seconds = time_disk_floor(files, work, fsync=not args.no_fsync)
        rounds.append(RoundResult(FLOOR, r, len(order), seconds, len(files)))
        print(f"  {size:5} round {r + 1}/{args.rounds} {FLOOR:17} {seconds:7.2f} s "
              f"{len(files) / seconds:8.1f} files/s", flush=True)
    summary = summarize(rounds, len(files), n_bytes)
    return SizeResult(len(files), n_bytes, summary, ratios(summary, NODE_MODES[args.analysis]), rounds)


def print_table(results: dict[str, SizeResult]) -> None:
    """Print medians per size class and receiver, and the ratios."""
    print(f"\n{'size':5} {'receiver':17} {'files':>6} {'MB':>8} {'median s':>9} "
          f"{'files/s':>9} {'MB/s':>8}")
    for size, res in results.items():
        for receiver, s in res.summary.items():
            print(f"{size:5} {receiver:17} {res.n_files:>6} {res.bytes / 1e6:>8.1f} "
                  f"{s['median_s']:>9.2f} {s['files_per_s']:>9.1f} {s['mb_per_s']:>8.1f}")
        for name, value in res.ratios.items():
            print(f"{size:5} {name} files/s ratio: {value:.2f}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=200, help="files per size class (default 200)")
    p.add_argument("--rounds", type=int, default=3, help="rounds per receiver (default 3)")
    p.add_argument("--sizes", default="small,cxr", help="comma list of: small, cxr")
    p.add_argument("--out", type=Path, default=REPO / "bench-out",
                   help="folder for bench_ingest.json (default bench-out/)")
    p.add_argument("--real-every", type=int, default=0, metavar="K",
                   help="cxr: every K-th file is a real chest DICOM, decoded (default 0: none)")
    p.add_argument("--analysis", choices=sorted(NODE_MODES), default="both",
                   help="node with analysis on (models loaded, analysing what arrives), off "
                        "(--no-analysis), or both in the same run (default)")
    p.add_argument("--no-fsync", action="store_true",
                   help="run the node with [storage] fsync = false (storescp never fsyncs)")
    p.add_argument("--pynetdicom-peer", action=argparse.BooleanOptionalAction, default=True,
                   help="also time the bare pynetdicom Storage SCP (scripts/bare_pynetdicom_scp.py), "
                        "the ceiling of a pynetdicom receiver (default: on)")
    p.add_argument("--work", type=Path, default=None,
                   help="folder for the corpus and both receivers' output (default: a temp "
                        "folder, removed afterwards); pass one to reuse the corpus")
    p.add_argument("--node-cmd", default=f"{shlex.quote(sys.executable)} -m dicom_node serve",
                   help="command prefix that starts the node (default: %(default)s)")
    args = p.parse_args(argv)
    args.sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    if unknown := set(args.sizes) - set(SIZE_CLASSES):
        p.error(f"unknown size class(es): {', '.join(sorted(unknown))}")
    if args.n < 1 or args.rounds < 1 or args.real_every < 0:
        p.error("--n and --rounds must be at least 1, --real-every at least 0")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; exit status 1 if a receiver failed to store every file."""
    args = parse_args(argv)
    for tool in ("storescu", "storescp", "echoscu"):
        if not Path(f"/usr/bin/{tool}").exists():
            sys.exit(f"/usr/bin/{tool} missing: apt-get install dcmtk")
    with contextlib.ExitStack() as stack:
        work = args.work or Path(stack.enter_context(
            tempfile.TemporaryDirectory(prefix="bench-ingest-")))
        work.mkdir(parents=True, exist_ok=True)
        config = work / "node.toml"
        config.write_text(f"[storage]\nfsync = {'false' if args.no_fsync else 'true'}\n")
        node_cmd = shlex.split(args.node_cmd)
        facts = machine_facts(work)
        disk = facts["disk"]
        print(f"{facts['cores']} cores ({facts['cpu_busy_before_start']:.0%} busy), "
              f"{facts['cpu']}, {facts['memory_gib']} GiB; work dir on "
              f"{disk['fstype']} {disk['device']}; node fsync={'off' if args.no_fsync else 'on'}, "
              f"analysis={args.analysis}"
              f"; {facts['dcmtk']}", flush=True)
        results: dict[str, SizeResult] = {}
        try:
            for size in args.sizes:
                results[size] = bench_size(size, args, work, config, node_cmd)
        except RuntimeError as err:
            print(f"benchmark failed: {err}", file=sys.stderr)
            return 1
    print_table(results)
    facts["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    facts["cpu_busy_at_end"] = round(cpu_busy_fraction(), 3)
    print(f"CPUs {facts['cpu_busy_at_end']:.0%} busy after the run; load average "
          f"{facts['load_average_1_5_15_min'][0]} at the start, {facts['load_average_at_end'][0]} at the end")
    if facts["cpu_busy_before_start"] > 0.25:
        print(f"warning: CPUs were {facts['cpu_busy_before_start']:.0%} busy before the run; "
              "other processes skew the numbers")
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"machine": facts,
              "config": {"n": args.n, "rounds": args.rounds, "sizes": args.sizes,
                         "real_every": args.real_every,
                         "node_fsync": not args.no_fsync, "node_cmd": node_cmd,
                         "node_analysis": args.analysis,
                         "sender": "DCMTK storescu, one association, TCP_NODELAY=1",
                         "storescp": "DCMTK storescp --max-pdu 131072, TCP_NODELAY=1",
                         BARE_PYNETDICOM: ("stock pynetdicom Storage SCP, data set in memory, written as "
                                           "received without check or fsync, max PDU 131072, TCP_NODELAY=1")
                         if args.pynetdicom_peer else None},
              "results": {size: asdict(res) for size, res in results.items()}}
    out_file = args.out / "bench_ingest.json"
    out_file.write_text(json.dumps(report, indent=2) + "\n")
    print(f"results written to {out_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

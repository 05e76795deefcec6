"""Soak run: thousands of small studies at a steady rate, retention on, a PACS that goes down and up.

Bounded and on loopback. The pieces, each a real process:

* **the node**: ``python -m dicom_node serve`` with its own spool and config: analysis on with
  the repository's bundle (CPU), the ``--results`` profile of :mod:`scripts.bench_e2e`
  (default ``off``: the SR alone), fsync on, ``[retention]`` deleting a delivered study's
  instance and report at the next purge (``instances_days = results_days = 0``) and its job
  record after ``--records-days``, purging every ``--purge-minutes``; delivery retries after
  1 s, at most 5 s apart; metrics on a free port;
* **the PACS**: :mod:`scripts.soak_pacs`, a pynetdicom Store SCP that logs every C-STORE it
  answers (fsync'd before Success), SIGKILLed ``--outages`` times for ``--outage-seconds``
  during the sending and restarted on the same port;
* **the modality**: DCMTK ``storescu``, one association per study, ``--rate`` studies per
  second, from a thread; each C-STORE's status is kept. Study ``i`` is a 512 x 512 DX
  (``--size``) made from a real shared chest image just before it is sent, with its own
  deterministic Study, Series and SOP Instance UIDs (``--seed``) and a synthetic patient.

Every ``--sample-seconds``, from outside the node: its RSS, open file descriptors and
threads (``/proc``), the spool's size on disk and files per folder, jobs per state (the
spool's folders) and its ``/metrics`` (oldest undelivered, purged files and bytes).

At the end it waits for the outbox to drain and for retention to empty the spool, then
checks that every study's result objects arrived exactly once (by Study Instance UID; the
SR must reference the sent image), that no study was lost, that every C-STORE got Success,
and compares memory, descriptors and threads after ``--warmup`` studies with the end.
Writes ``OUT/soak.json`` and ``OUT/soak.png``; exit status 0 when every check holds::

    python -m scripts.soak --studies 2000 --rate 2 --out bench-out/soak

Output carries counts and times only: no patient data, no UIDs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from scripts import dicom_corpus
from scripts.bench_e2e import RESULT_PROFILES
from scripts.bench_ingest import dcmtk_env, machine_facts
from scripts.soak_pacs import PACS_AE_TITLE, result_kind
from testkit.peers import free_port
from testkit.process_tree import process_tree, status_sum

REPO = Path(__file__).resolve().parents[1]
NODE_AE = "CXR_AI"
MODALITY_AE = "SOAK_MODALITY"
JOB_STATES = ("received", "processing", "outbox", "sent", "failed", "not_analysed")
UID_RE = re.compile(r"\b\d+(?:\.\d+){3,}\b")


def expected_kinds(results: str) -> tuple[str, ...]:
    """The result objects the node sends per analysed study under a ``--results`` profile."""
    switches = RESULT_PROFILES[results]
    return (
        "sr", *(("sc",) if switches["summary_image"] else ()), *(("seg",) if switches["lung_segmentation"] else ()),
        *(("ko",) if switches["key_images"] else ()),  # the bundled index always gives similar images
    )


# --- the studies ---------------------------------------------------------------------------

class StudyMaker:
    """Study ``i``: one small DX For Presentation in its own study, from a real shared image."""

    def __init__(self, out_dir: Path, size: int, seed: int) -> None:
        self.out_dir = out_dir
        self.shape = (size, size)
        self.corpus = f"soak{seed}"
        self.sources = dicom_corpus.chest_image_paths()
        random.Random(seed).shuffle(self.sources)  # deterministic order of the images
        self.spacing = round(0.17 * dicom_corpus.CXR_SHAPE[1] / size, 4)  # a full chest field of view
        out_dir.mkdir(parents=True, exist_ok=True)

    def ids(self, i: int) -> dicom_corpus.InstanceIds:
        return dicom_corpus.instance_ids(self.corpus, i, 0)

    def write(self, i: int) -> Path:
        pixels = dicom_corpus.image_to_pixels(self.sources[i % len(self.sources)], self.shape)
        ds = dicom_corpus.radiograph_dataset(pixels, dicom_corpus.DX_FOR_PRESENTATION, self.ids(i),
                                             bits_stored=12, pixel_spacing_mm=self.spacing)
        path = self.out_dir / f"study_{i:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        return path


@dataclass
class Sent:
    """One study's C-STORE from the modality."""

    index: int
    planned_s: float  # when it was due, from the start of sending
    sent_s: float
    seconds: float
    exit_code: int
    status: str  # storescu's words for the response status ("Success"), "" if none


class Sender(threading.Thread):
    """Sends studies ``0..n-1`` at ``rate`` per second, one storescu association each."""

    STATUS_RE = re.compile(r"Received Store Response \(([^)]*)\)")

    def __init__(self, maker: StudyMaker, n: int, rate: float, port: int, deadline: float) -> None:
        super().__init__(name="sender", daemon=True)
        self.maker, self.n, self.rate, self.port, self.deadline = maker, n, rate, port, deadline
        self.sent: list[Sent] = []
        self.started_at = 0.0  # monotonic
        self.started_wall = 0.0  # Unix time of the same instant (the PACS log's clock)

    def run(self) -> None:
        self.started_wall, self.started_at = time.time(), time.monotonic()
        for i in range(self.n):
            due = self.started_at + i / self.rate
            if due > self.deadline:
                break  # --max-minutes: what was not sent is reported as not sent
            time.sleep(max(0.0, due - time.monotonic()))
            path = self.maker.write(i)
            begun = time.monotonic()
            done = subprocess.run(
                ["/usr/bin/storescu", "-v", "-aet", MODALITY_AE, "-aec", NODE_AE, "127.0.0.1", str(self.port),
                 str(path)], capture_output=True, text=True, env=dcmtk_env(),
            )
            match = self.STATUS_RE.search(done.stdout + done.stderr)
            self.sent.append(Sent(i, round(i / self.rate, 3), round(begun - self.started_at, 3),
                                  round(time.monotonic() - begun, 3), done.returncode, match[1] if match else ""))
            path.unlink()


# --- the PACS that goes down ------------------------------------------------------------------

class Pacs:
    """:mod:`scripts.soak_pacs` on a fixed port, killed and restarted by PID."""

    def __init__(self, work: Path) -> None:
        self.port = free_port()
        self.log_path = work / "pacs.jsonl"
        self.stderr = work / "pacs.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 30) -> None:
        with open(self.stderr, "ab") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "scripts.soak_pacs", "--port", str(self.port), "--log", str(self.log_path)],
                cwd=REPO, stdout=err, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout_s
        echo = ["/usr/bin/echoscu", "-to", "2", "-aet", NODE_AE, "-aec", PACS_AE_TITLE, "127.0.0.1", str(self.port)]
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the PACS exited with {self.process.returncode}: see {self.stderr}")
            if subprocess.run(echo, env=dcmtk_env(), capture_output=True).returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError(f"the PACS did not answer C-ECHO within {timeout_s:.0f} s")

    def kill(self) -> None:
        """SIGKILL: associations in flight are cut, responses not yet sent are lost."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def arrivals(self) -> list[dict[str, Any]]:
        if not self.log_path.exists():
            return []
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line.strip()]


@dataclass
class Outage:
    """One time the PACS was down, in seconds from the start of sending."""

    down_s: float
    up_s: float = 0.0


class Outages(threading.Thread):
    """Takes the PACS down ``count`` times, evenly spread over ``span_s`` of sending."""

    def __init__(self, pacs: Pacs, count: int, seconds: float, span_s: float, sender: Sender) -> None:
        super().__init__(name="outages", daemon=True)
        self.pacs, self.seconds, self.sender = pacs, seconds, sender
        self.plan = [span_s * (k + 1) / (count + 1) for k in range(count)]
        self.done: list[Outage] = []
        self.error = ""

    def run(self) -> None:
        while not self.sender.started_at:
            time.sleep(0.05)
        t0 = self.sender.started_at
        try:
            for down_at in self.plan:
                time.sleep(max(0.0, t0 + down_at - time.monotonic()))
                self.pacs.kill()
                outage = Outage(round(time.monotonic() - t0, 3))
                self.done.append(outage)
                time.sleep(self.seconds)
                self.pacs.start()
                outage.up_s = round(time.monotonic() - t0, 3)
        except RuntimeError as exc:
            self.error = str(exc)


# --- sampling ---------------------------------------------------------------------------------

def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM (KiB) and Threads of a running node: its receiver and its analysis process."""
    return status_sum(pid, ("VmRSS", "VmHWM", "Threads"))


def fd_kinds(pid: int) -> dict[str, int]:
    """Open descriptors of a node (and its analysis process) by kind: socket, pipe, anon_inode,
    or the folder of a file."""
    kinds: Counter[str] = Counter()
    for member in process_tree(pid):
        fd_dir = Path(f"/proc/{member}/fd")
        try:
            fds = os.listdir(fd_dir)
        except FileNotFoundError:
            continue  # ended meanwhile
        for fd in fds:
            try:
                target = os.readlink(fd_dir / fd)
            except FileNotFoundError:
                continue  # closed meanwhile
            kind = target.split(":", 1)[0] if ":" in target and not target.startswith("/") else str(Path(target).parent)
            kinds[kind] += 1
    return dict(kinds)


def spool_usage(spool: Path) -> tuple[int, dict[str, int]]:
    """Bytes on disk (as ``du``) and files per folder (``instances``, ``results``, ``jobs/<state>``, ...)."""
    total = 0
    files: Counter[str] = Counter()
    for folder, _dirs, names in os.walk(spool):
        rel = Path(folder).relative_to(spool).as_posix()
        for name in names:
            try:
                total += os.lstat(os.path.join(folder, name)).st_blocks * 512
            except FileNotFoundError:
                continue  # purged or moved between listing and stat
            files["." if rel == "." else rel] += 1
    return total, dict(files)


def scrape(port: int) -> dict[str, float]:
    """The node's ``/metrics`` that the soak follows, by ``name{labels}``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    wanted = ("cxr_oldest_undelivered_seconds", "cxr_purged_files_total", "cxr_purged_bytes_total",
              "cxr_delivery_attempts_total", "cxr_c_store_responses_total", "cxr_analysed_total")
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in wanted:
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                values[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return values


@dataclass
class Sample:
    """One look at the node from outside; ``t`` in seconds from the start of sending."""

    t: float
    studies_sent: int
    pacs_up: bool
    rss_mib: float
    threads: int
    fds: int
    spool_bytes: int
    spool_files: int
    files: dict[str, int]
    jobs: dict[str, int]
    metrics: dict[str, float] = field(default_factory=dict)


class Sampler(threading.Thread):
    """Samples the node every ``every_s`` until stopped; :meth:`take` samples now."""

    def __init__(self, pid: int, spool: Path, metrics_port: int, every_s: float, sender: Sender, pacs: Pacs) -> None:
        super().__init__(name="sampler", daemon=True)
        self.pid, self.spool, self.metrics_port, self.every_s = pid, spool, metrics_port, every_s
        self.sender, self.pacs = sender, pacs
        self.samples: list[Sample] = []
        self.halt = threading.Event()
        self.t0 = time.monotonic()  # replaced by the sender's start once it has one
        self.errors = 0
        self.warmup = 0
        self.fds_at_warmup: dict[str, int] = {}
        self._lock = threading.Lock()  # the main thread samples too, while waiting for the drain

    def take(self) -> Sample:
        with self._lock:
            return self._take()

    def _take(self) -> Sample:
        t0 = self.sender.started_at or self.t0
        status = proc_status(self.pid)
        fds = len(os.listdir(f"/proc/{self.pid}/fd"))
        spool_bytes, files = spool_usage(self.spool)
        jobs = {s: files.get(f"jobs/{s}", 0) for s in JOB_STATES}
        try:
            metrics = scrape(self.metrics_port)
        except OSError:
            metrics, self.errors = {}, self.errors + 1
        process = self.pacs.process
        sample = Sample(round(time.monotonic() - t0, 2), len(self.sender.sent),
                        process is not None and process.poll() is None, round(status["VmRSS"] / 1024, 1),
                        status["Threads"], fds, spool_bytes, sum(files.values()), files, jobs, metrics)
        self.samples.append(sample)
        if not self.fds_at_warmup and sample.studies_sent >= self.warmup:
            self.fds_at_warmup = fd_kinds(self.pid)
        return sample

    def run(self) -> None:
        while not self.halt.is_set():
            self.take()
            self.halt.wait(self.every_s)


# --- the node ---------------------------------------------------------------------------------

def node_config(path: Path, args: argparse.Namespace, pacs: Pacs, metrics_port: int) -> Path:
    switches = "".join(f"{key} = {str(value).lower()}\n" for key, value in RESULT_PROFILES[args.results].items())
    path.write_text(
        '[node]\nlog_level = "INFO"\n[storage]\nfsync = true\n'
        f"[delivery]\nretry_initial_seconds = 1\nretry_max_seconds = 5\nmax_attempts = {args.max_attempts}\n"
        f'[inference]\nanalysis = true\ndevice = "cpu"\nbundle = "{REPO / "bundle"}"\n[results]\n{switches}'
        f"[retention]\nenabled = true\ninstances_days = 0\nresults_days = 0\nrecords_days = {args.records_days}\n"
        f"interval_minutes = {args.purge_minutes}\n"
        f'[metrics]\nport = {metrics_port}\nbind = "127.0.0.1"\n'
        f'[[destinations]]\nname = "pacs"\nae_title = "{PACS_AE_TITLE}"\nhost = "127.0.0.1"\nport = {pacs.port}\n'
    )
    return path


def wait_until(predicate: Callable[[], bool], deadline: float, every_s: float = 0.5) -> bool:
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every_s)
    return predicate()


def wait_ready(metrics_port: int, node: subprocess.Popen[bytes], deadline: float) -> None:
    """Until ``/readyz`` answers 200 (listening, spool writable, models loaded)."""
    def ready() -> bool:
        if node.poll() is not None:
            raise RuntimeError(f"the node exited with {node.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/readyz", timeout=5) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    if not wait_until(ready, deadline, 0.2):
        raise RuntimeError("the node was not ready before --max-minutes")


def log_summary(log_path: Path) -> dict[str, Any]:
    """The node log's WARNING and ERROR lines by message (UIDs and numbers masked), and the
    jobs it reported not analysed (by index of the UID, to keep UIDs out)."""
    levels: Counter[str] = Counter()
    node_errors = 0  # ERROR lines of the node's own loggers (pynetdicom's name each refused connection)
    messages: Counter[str] = Counter()
    not_analysed: set[str] = set()
    tracebacks = 0
    for line in log_path.read_text(errors="replace").splitlines():
        tracebacks += line.startswith("Traceback")
        parts = line.split(" ", 4)
        if len(parts) < 5 or parts[2] not in ("WARNING", "ERROR", "CRITICAL"):
            continue
        levels[parts[2]] += 1
        node_errors += parts[2] != "WARNING" and not parts[3].startswith("pynetdicom")
        if m := re.search(r"job (\S+): not analysed", parts[4]):
            not_analysed.add(m[1])
        text = re.sub(r"\d+(\.\d+)?", "N", UID_RE.sub("<uid>", parts[4]))
        messages[f"{parts[2]} {parts[3]} {text}"] += 1
    return {"levels": dict(levels), "node_errors": node_errors, "tracebacks": tracebacks, "messages": dict(messages.most_common(30)),
            "not_analysed_uids": not_analysed}


# --- the verdict ------------------------------------------------------------------------------

def check_arrivals(sent: list[Sent], maker: StudyMaker, arrivals: list[dict[str, Any]], kinds: tuple[str, ...],
                   not_analysed_uids: set[str]) -> dict[str, Any]:
    """Per study: each expected result object exactly once at the PACS (by study UID)."""
    by_study: dict[str, dict[str, Counter[str]]] = defaultdict(lambda: defaultdict(Counter))
    references: dict[str, set[str]] = defaultdict(set)
    for a in arrivals:
        by_study[a["study_instance_uid"]][result_kind(a["sop_class_uid"])][a["sop_instance_uid"]] += 1
        references[a["sop_instance_uid"]].update(a["references"])
    stored = [s for s in sent if s.status == "Success"]
    missing: list[int] = []
    not_analysed: list[int] = []
    several_objects: list[int] = []  # more than one distinct object of a kind: a re-analysis
    wrong_reference: list[int] = []
    duplicates = 0  # extra arrivals of one object (same SOP Instance UID)
    objects = 0
    for s in stored:
        ids = maker.ids(s.index)
        got = by_study.get(str(ids.study_uid), {})
        if str(ids.sop_uid) in not_analysed_uids and not got:
            not_analysed.append(s.index)
            continue
        for kind in kinds:
            uids = got.get(kind, Counter())
            if not uids:
                missing.append(s.index)
                continue
            if len(uids) > 1:
                several_objects.append(s.index)
            objects += len(uids)
            duplicates += sum(n - 1 for n in uids.values())
            if kind == "sr" and not all(str(ids.sop_uid) in references[u] for u in uids):
                wrong_reference.append(s.index)
    sent_studies = {str(maker.ids(s.index).study_uid) for s in sent}
    strangers = sum(1 for study in by_study if study not in sent_studies)
    return {
        "studies_stored_by_node": len(stored),
        "studies_with_every_result": len(stored) - len(set(missing)) - len(not_analysed),
        "not_analysed": len(not_analysed), "missing": len(set(missing)), "missing_study_indices": sorted(set(missing)),
        "several_objects_of_one_kind": len(several_objects), "wrong_reference": len(wrong_reference),
        "result_objects": objects, "arrivals": len(arrivals), "duplicate_arrivals": duplicates,
        "objects_from_unknown_studies": strangers,
        "arrivals_by_kind": dict(Counter(result_kind(a["sop_class_uid"]) for a in arrivals)),
    }


def median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def slope_per_1000(samples: list[Sample], attr: str) -> float | None:
    """Least-squares growth of ``attr`` per 1000 studies sent, over ``samples``."""
    xs = [s.studies_sent for s in samples]
    ys = [float(getattr(s, attr)) for s in samples]
    if len(set(xs)) < 2:
        return None
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return round(1000 * sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs), 3)


def resources(samples: list[Sample], start: Sample, end_of_sending: Sample, end: Sample,
              sending: list[Sample]) -> dict[str, Any]:
    """Start (after warm-up) vs end of sending vs end (drained), with growth and a verdict."""
    out: dict[str, Any] = {}
    limits = {"rss_mib": max(50.0, 0.05 * start.rss_mib), "fds": 2, "threads": 2}
    for attr, limit in limits.items():
        a, b, c = getattr(start, attr), getattr(end_of_sending, attr), getattr(end, attr)
        out[attr] = {
            "start": a, "end_of_sending": b, "end": c, "growth": round(c - a, 1),
            "min": min(getattr(s, attr) for s in samples), "max": max(getattr(s, attr) for s in samples),
            "median_while_sending": median([getattr(s, attr) for s in sending]),
            "slope_per_1000_studies_while_sending": slope_per_1000(sending, attr),
            "allowed_growth": limit, "no_growth": (c - a) <= limit,
        }
    return out


def outage_behaviour(outages: list[Outage], samples: list[Sample], arrivals: list[dict[str, Any]],
                     t0_wall: float) -> list[dict[str, Any]]:
    """Per outage: the outbox and oldest undelivered at their peak, and how fast they fell."""
    out = []
    for o in outages:
        during = [s for s in samples if o.down_s <= s.t <= o.up_s + 1]
        after = [s for s in samples if s.t > o.up_s]
        drained = next((s for s in after if s.jobs["outbox"] == 0), None)
        oldest = [s.metrics.get("cxr_oldest_undelivered_seconds", 0.0) for s in during + after[:3]]
        arrived_after = [a for a in arrivals if a["time"] - t0_wall >= o.up_s]
        out.append({
            "down_s": o.down_s, "up_s": o.up_s, "seconds_down": round(o.up_s - o.down_s, 1),
            "outbox_peak": max((s.jobs["outbox"] for s in during + after[:3]), default=0),
            "oldest_undelivered_peak_s": max(oldest, default=0.0),
            "outbox_empty_after_up_s": round(drained.t - o.up_s, 1) if drained else None,
            "arrivals_in_first_30_s_after_up": sum(1 for a in arrived_after if a["time"] - t0_wall < o.up_s + 30),
        })
    return out


# --- the plot ---------------------------------------------------------------------------------

def plot(samples: list[Sample], outages: list[Outage], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s.t / 60 for s in samples]
    fig, axes = plt.subplots(4, 1, figsize=(10, 11), sharex=True)
    spool, rss, handles, queue = axes
    spool.plot(t, [s.spool_bytes / 1e6 for s in samples], color="tab:blue", label="spool MB (du)")
    spool.set_ylabel("spool MB")
    files = spool.twinx()
    files.plot(t, [s.spool_files for s in samples], color="tab:orange", label="spool files")
    files.plot(t, [s.files.get("instances", 0) for s in samples], color="tab:red", lw=0.8, label="instances")
    files.set_ylabel("files")
    spool.legend(loc="upper left")
    files.legend(loc="upper right")
    rss.plot(t, [s.rss_mib for s in samples], color="tab:purple")
    rss.set_ylabel("node RSS MiB")
    handles.plot(t, [s.fds for s in samples], label="open fds")
    handles.plot(t, [s.threads for s in samples], label="threads")
    handles.set_ylabel("count")
    handles.legend(loc="upper left")
    queue.plot(t, [s.jobs["outbox"] for s in samples], label="outbox jobs")
    queue.plot(t, [s.jobs["sent"] + s.jobs["not_analysed"] for s in samples], label="finished records")
    queue.set_ylabel("jobs")
    oldest = queue.twinx()
    oldest.plot(t, [s.metrics.get("cxr_oldest_undelivered_seconds", float("nan")) for s in samples],
                color="tab:gray", ls="--", label="oldest undelivered s")
    oldest.set_ylabel("seconds")
    queue.legend(loc="upper left")
    oldest.legend(loc="upper right")
    queue.set_xlabel("minutes from the first study sent (grey bands: PACS down)")
    for ax in axes:
        for o in outages:
            ax.axvspan(o.down_s / 60, o.up_s / 60, color="0.85", zorder=0)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# --- the run ----------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--studies", type=int, default=2000, help="studies to send (default 2000)")
    p.add_argument("--rate", type=float, default=2.0, help="studies per second (default 2)")
    p.add_argument("--size", type=int, default=512, help="image rows = columns (default 512)")
    p.add_argument("--seed", type=int, default=0, help="seed of the UIDs and the image order")
    p.add_argument("--results", default="off", choices=tuple(RESULT_PROFILES),
                   help="the node's [results] profile, as in bench_e2e (default off: the SR alone)")
    p.add_argument("--outages", type=int, default=2, help="times the PACS goes down (default 2)")
    p.add_argument("--outage-seconds", type=float, default=60.0, help="how long each time (default 60)")
    p.add_argument("--records-days", type=float, default=0.002, help="[retention] records_days (default 0.002, ~3 min)")
    p.add_argument("--purge-minutes", type=float, default=0.25, help="[retention] interval_minutes (default 0.25)")
    p.add_argument("--max-attempts", type=int, default=100, help="[delivery] max_attempts (default 100)")
    p.add_argument("--warmup", type=int, default=100, help="studies sent before the start figures (default 100)")
    p.add_argument("--sample-seconds", type=float, default=5.0, help="sampling period (default 5)")
    p.add_argument("--no-linger", action="store_true",
                   help="stop once the instances and results are purged, not waiting for the records")
    p.add_argument("--max-minutes", type=float, default=60.0, help="hard limit on the whole run (default 60)")
    p.add_argument("--out", type=Path, default=REPO / "bench-out" / "soak", help="folder for soak.json and soak.png")
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp dir, removed)")
    p.add_argument("--keep-work", action="store_true", help="keep the scratch folder (logs, spool)")
    args = p.parse_args(argv)
    if args.studies < 1 or args.rate <= 0 or args.outages < 0 or args.size < 64:
        p.error("--studies >= 1, --rate > 0, --outages >= 0 and --size >= 64 are required")
    args.warmup = min(args.warmup, args.studies - 1)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    deadline = time.monotonic() + args.max_minutes * 60
    work = Path(tempfile.mkdtemp(prefix="soak-", dir=args.work))
    facts = machine_facts(work)
    pacs = Pacs(work)
    maker = StudyMaker(work / "studies", args.size, args.seed)
    spool = work / "spool"
    node_port, metrics_port = free_port(), free_port()
    config = node_config(work / "node.toml", args, pacs, metrics_port)
    node_log = work / "node.log"
    pacs.start()
    with open(node_log, "ab") as log:
        node = subprocess.Popen(
            [sys.executable, "-m", "dicom_node", "serve", "--ae-title", NODE_AE, "--port", str(node_port),
             "--bind", "127.0.0.1", "--spool", str(spool), "--config", str(config)],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
        )
    sender = Sender(maker, args.studies, args.rate, node_port, deadline)
    sampler = Sampler(node.pid, spool, metrics_port, args.sample_seconds, sender, pacs)
    sampler.warmup = args.warmup
    outages = Outages(pacs, args.outages, args.outage_seconds, args.studies / args.rate, sender)
    phases: dict[str, float] = {}
    try:
        wait_ready(metrics_port, node, deadline)
        sender.start()
        while not sender.started_at:  # samples count time from the first study sent
            time.sleep(0.01)
        sampler.start()
        outages.start()
        print(f"soak: {args.studies} studies at {args.rate}/s to the node (pid {node.pid}), work {work}", flush=True)
        while sender.is_alive():
            sender.join(timeout=30)
            if sampler.samples:
                last = sampler.samples[-1]
                print(f"  t={last.t:7.0f}s sent={last.studies_sent} rss={last.rss_mib} MiB fds={last.fds} "
                      f"threads={last.threads} spool={last.spool_bytes / 1e6:.1f} MB jobs={last.jobs}", flush=True)
        phases["sending_ended_s"] = round(time.monotonic() - sender.started_at, 1)
        outages.join(timeout=max(0.0, deadline - time.monotonic()))

        def finished() -> bool:
            s = sampler.take()
            return s.jobs["received"] + s.jobs["processing"] + s.jobs["outbox"] == 0

        drained = wait_until(finished, deadline, 1.0)
        phases["drained_s"] = round(time.monotonic() - sender.started_at, 1)

        def files_purged() -> bool:
            s = sampler.take()
            return s.files.get("instances", 0) + s.files.get("results", 0) == 0

        purged = wait_until(files_purged, deadline, 2.0)
        phases["files_purged_s"] = round(time.monotonic() - sender.started_at, 1)
        records_purged = None
        if not args.no_linger:
            # Records go records_days after their job finished, at the next purge.
            def records_gone() -> bool:
                s = sampler.take()
                return sum(s.jobs.values()) == 0

            records_purged = wait_until(records_gone, deadline, 2.0)
            phases["records_purged_s"] = round(time.monotonic() - sender.started_at, 1)
        sampler.halt.set()
        sampler.join(timeout=30)
        end = sampler.take()
        end_fds = fd_kinds(node.pid)
    finally:
        sampler.halt.set()
        node.send_signal(signal.SIGTERM)
        try:
            node_exit: int | None = node.wait(timeout=90)
        except subprocess.TimeoutExpired:
            node.kill()
            node_exit = None
        pacs.kill()

    samples = sorted(sampler.samples, key=lambda s: s.t)
    sending = [s for s in samples if 0 <= s.t <= phases["sending_ended_s"]]
    start = next((s for s in sending if s.studies_sent >= args.warmup), sending[0] if sending else samples[0])
    end_of_sending = sending[-1] if sending else end
    logs = log_summary(node_log)
    arrivals = pacs.arrivals()
    kinds = expected_kinds(args.results)
    delivery = check_arrivals(sender.sent, maker, arrivals, kinds, logs.pop("not_analysed_uids"))
    statuses = Counter(s.status or f"none (exit {s.exit_code})" for s in sender.sent)
    res = resources(samples, start, end_of_sending, end, [s for s in sending if s.t >= start.t])
    lateness = [s.sent_s - s.planned_s for s in sender.sent]
    spool_max = max(samples, key=lambda s: s.spool_bytes)
    verdict = {
        "every_study_sent": len(sender.sent) == args.studies,
        "every_c_store_success": statuses.get("Success", 0) == len(sender.sent),
        "every_report_arrived": delivery["missing"] == 0 and delivery["several_objects_of_one_kind"] == 0
        and delivery["wrong_reference"] == 0,
        "every_report_exactly_once": delivery["missing"] == 0 and delivery["several_objects_of_one_kind"] == 0
        and delivery["duplicate_arrivals"] == 0,
        "no_study_lost": delivery["missing"] == 0 and end.jobs["failed"] == 0 and bool(drained),
        "spool_emptied": bool(purged) and end.files.get("instances", 0) + end.files.get("results", 0) == 0
        and (records_purged is None or bool(records_purged)),
        "no_growth": all(r["no_growth"] for r in res.values()),
        "node_exit_code_zero": node_exit == 0,
        "no_node_errors_in_log": logs["node_errors"] == 0 and logs["tracebacks"] == 0,
    }
    verdict["ok"] = all(verdict[k] for k in ("every_study_sent", "every_c_store_success", "every_report_arrived",
                                              "no_study_lost", "spool_emptied", "no_growth", "node_exit_code_zero",
                                              "no_node_errors_in_log"))
    report = {
        "conditions": {
            "studies": args.studies, "rate_per_s": args.rate, "image": f"{args.size}x{args.size} DX For Presentation, "
            "12 bits, Explicit VR LE, from the shared chest images", "seed": args.seed,
            "sender": "DCMTK storescu, one association per study, TCP_NODELAY=1",
            "analysis": True, "device": "cpu", "results_profile": args.results,
            "results_switches": RESULT_PROFILES[args.results], "result_objects_per_study": list(kinds),
            "fsync": True, "retention": {"instances_days": 0, "results_days": 0, "records_days": args.records_days,
                                         "interval_minutes": args.purge_minutes, "high_water_percent": 90},
            "delivery": {"retry_initial_seconds": 1, "retry_max_seconds": 5, "max_attempts": args.max_attempts},
            "pacs": "scripts/soak_pacs.py (pynetdicom Store SCP, fsync'd log per C-STORE), down by SIGKILL",
            "outages_planned": args.outages, "outage_seconds": args.outage_seconds,
            "warmup_studies": args.warmup, "sample_seconds": args.sample_seconds,
            "max_minutes": args.max_minutes,
        },
        "machine": facts,
        "phases_s": phases,
        "outages": [asdict(o) for o in outages.done], "outage_error": outages.error,
        "verdict": verdict,
        "delivery": delivery,
        "c_store_statuses": dict(statuses),
        "sending": {
            "c_store_seconds_median": median([s.seconds for s in sender.sent]),
            "c_store_seconds_max": max((s.seconds for s in sender.sent), default=None),
            "lateness_s_median": median(lateness), "lateness_s_max": max(lateness, default=None),
        },
        "resources": res,
        "start_sample": asdict(start), "end_of_sending_sample": asdict(end_of_sending), "end_sample": asdict(end),
        "fds_by_kind_start": sampler.fds_at_warmup, "fds_by_kind_end": end_fds,
        "spool": {
            "bytes_min": min(s.spool_bytes for s in samples), "bytes_max": spool_max.spool_bytes,
            "bytes_max_at_s": spool_max.t, "bytes_median_while_sending": median([s.spool_bytes for s in sending]),
            "files_max": max(s.spool_files for s in samples),
            "files_median_while_sending": median([s.spool_files for s in sending]),
            "instances_max": max(s.files.get("instances", 0) for s in samples),
            "records_max": max(sum(s.jobs.values()) for s in samples),
            "end_files": end.files, "end_bytes": end.spool_bytes,
        },
        "outage_behaviour": outage_behaviour(outages.done, samples, arrivals, sender.started_wall),
        "node_log": logs, "node_exit_code": node_exit, "metrics_scrape_errors": sampler.errors,
        "samples": [asdict(s) for s in samples],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "soak.json").write_text(json.dumps(report, indent=1) + "\n")
    plot(samples, outages.done, args.out / "soak.png",
         f"soak: {len(sender.sent)} studies at {args.rate}/s, results {args.results}, retention on, "
         f"{len(outages.done)} PACS outages")
    print(json.dumps({"verdict": verdict, "delivery": {k: v for k, v in delivery.items() if k != "missing_study_indices"},
                      "resources": {k: {x: v[x] for x in ("start", "end", "growth")} for k, v in res.items()}},
                     indent=1))
    print(f"written {args.out / 'soak.json'} and {args.out / 'soak.png'}")
    if args.keep_work:
        print(f"work folder kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if verdict["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

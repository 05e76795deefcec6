"""The modality and the PACS around the node in ``bench_e2e``, in two sets (``--peers``).

* ``dcmtk``: DCMTK ``storescu -v`` sends; Orthanc stores, and ``/changes`` (polled every 20 ms)
  says when each object appeared. Needs DCMTK and Orthanc (``scripts/setup.sh``).
* ``pynetdicom``: :mod:`scripts.bench_sender` sends; :mod:`scripts.soak_pacs` (``--store``)
  stores and logs each object's arrival as it answers it. Pure Python: what the GPU machine,
  which has neither DCMTK nor Orthanc, can run.

Each set is separate processes; the C-STORE response times and the SR arrival times are read on
``time.monotonic()``, one clock for every process on the machine.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import pydicom
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from scripts.bench_ingest import dcmtk_env, stop
from scripts.bench_sender import CALLING_AE
from scripts.soak_pacs import PACS_AE_TITLE, result_kind
from testkit.orthanc import ORTHANC_AE_TITLE, OrthancServer
from testkit.peers import free_port

REPO = Path(__file__).resolve().parents[1]
PEERS = ("dcmtk", "pynetdicom")

Sender = Callable[[int, list[Path]], list[float]]
"""``(node port, files) -> the time.monotonic() of each C-STORE response, in file order``."""


class Pacs(Protocol):
    """Where the node's reports go, and when each one arrived."""

    ae_title: str
    dicom_port: int

    def watch(self) -> None: ...

    def reports(self, sources: set[str]) -> dict[str, float]:
        """SRs arrived since the last call that reference one of ``sources``: source UID -> arrival."""
        ...

    def unwatch(self) -> None: ...

    def stop(self) -> None: ...


def echo_ok(port: int, called_ae: str, timeout_s: float = 2) -> bool:
    """A pynetdicom C-ECHO to ``127.0.0.1:port`` was answered Success."""
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)  # refused connections while it starts
    ae = AE(ae_title=CALLING_AE)
    ae.acse_timeout = ae.network_timeout = timeout_s
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=called_ae)
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return bool(status) and int(status.Status) == 0


def send_storescu(port: int, files: list[Path], called_ae: str) -> list[float]:
    """storescu ``files`` over one association; the time of each C-STORE response, in order."""
    argv = ["/usr/bin/storescu", "-v", "-aet", CALLING_AE, "-aec", called_ae, "127.0.0.1", str(port),
            *map(str, files)]
    return _responses(argv, "Received Store Response", len(files), dcmtk_env())


def send_pynetdicom(port: int, files: list[Path], called_ae: str, work: Path) -> list[float]:
    """:mod:`scripts.bench_sender` (its own process) sends ``files`` over one association."""
    listing = Path(work) / f"send_{time.monotonic_ns()}.txt"
    listing.write_text("".join(f"{p}\n" for p in files))
    argv = [sys.executable, "-m", "scripts.bench_sender", "--port", str(port), "--called-ae", called_ae,
            "--files-from", str(listing)]
    return _responses(argv, "response ", len(files), None, clock_from_line=True)


def _responses(argv: list[str], marker: str, expected: int, env: dict[str, str] | None,
               clock_from_line: bool = False) -> list[float]:
    """Run a sender; a response's time is when its line is read (storescu) or the one it prints."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)
    times, other = [], []
    assert proc.stdout is not None
    for line in proc.stdout:
        if marker in line:
            times.append(float(line.split()[-1]) if clock_from_line else time.monotonic())
        else:
            other.append(line)
    if proc.wait() != 0 or len(times) != expected:
        raise RuntimeError(f"{Path(argv[0]).name} {' '.join(argv[1:3])} failed ({proc.returncode}), "
                           f"{len(times)} of {expected} responses: {''.join(other[-5:])}")
    return times


def send_parallel(send: Sender, port: int, files: list[Path], senders: int) -> list[float]:
    """``senders`` associations at once, file i on association i % senders; response times in file order."""
    if senders <= 1:
        return send(port, files)
    parts: list[list[float]] = [[] for _ in range(senders)]
    errors: list[Exception] = []

    def one(k: int) -> None:
        try:
            parts[k] = send(port, files[k::senders])
        except Exception as exc:  # re-raised below, in the caller's thread
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(k,)) for k in range(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return [parts[i % senders][i // senders] for i in range(len(files))]


class OrthancPacs:
    """A fresh Orthanc; arrivals from ``/changes``, each new instance's content tree read for its source."""

    def __init__(self, work: Path, calling_ae: str) -> None:
        self.server = OrthancServer(work / "orthanc", calling_ae_titles=(calling_ae,)).start()
        self.ae_title = ORTHANC_AE_TITLE
        self.dicom_port = self.server.dicom_port
        self._watcher: ArrivalWatcher | None = None
        self._seen: set[str] = set()

    def watch(self) -> None:
        self._watcher = ArrivalWatcher(self.server)
        self._watcher.start()

    def reports(self, sources: set[str]) -> dict[str, float]:
        assert self._watcher is not None
        found: dict[str, float] = {}
        for orthanc_id, arrived in list(self._watcher.arrivals.items()):
            if orthanc_id not in self._seen:
                self._seen.add(orthanc_id)
                source = report_source(self.server, orthanc_id, sources)
                if source is not None:  # companions (SC, KOS) come first: the SR, last, wins
                    found[source] = arrived
        return found

    def unwatch(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()

    def stop(self) -> None:
        self.server.stop()


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


class PynetdicomPacs:
    """:mod:`scripts.soak_pacs` as its own process: stores each object, logs its arrival before Success."""

    def __init__(self, work: Path, timeout_s: float = 30) -> None:
        self.ae_title = PACS_AE_TITLE
        self.dicom_port = free_port()
        self.log_path = work / "pacs.jsonl"
        self.log_path.touch()
        self._offset = 0
        with open(work / "pacs.log", "ab") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "scripts.soak_pacs", "--port", str(self.dicom_port), "--log",
                 str(self.log_path), "--store", str(work / "pacs")], cwd=REPO, stdout=err, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while not echo_ok(self.dicom_port, self.ae_title):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the pynetdicom PACS did not answer C-ECHO: see {work / 'pacs.log'}")
            time.sleep(0.1)

    def watch(self) -> None:
        """Nothing to start: the PACS logs arrivals itself."""

    def reports(self, sources: set[str]) -> dict[str, float]:
        with open(self.log_path, "rb") as log:
            log.seek(self._offset)
            chunk = log.read()
        complete = chunk[:chunk.rfind(b"\n") + 1]  # a line still being written waits for the next call
        self._offset += len(complete)
        found: dict[str, float] = {}
        for line in complete.splitlines():
            record = json.loads(line)
            if result_kind(record["sop_class_uid"]) == "sr":
                for source in sources.intersection(record["references"]):
                    found[source] = record["monotonic"]
        return found

    def unwatch(self) -> None:
        """Nothing to stop."""

    def stop(self) -> None:
        stop(self.process)

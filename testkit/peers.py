"""Real peers on loopback: free ports, DCMTK tools, C-ECHO, the node as a subprocess."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from pydicom.dataset import Dataset

from testkit.shared_data import REPO_ROOT

EPHEMERAL_PORT_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_ports_handed_out: set[int] = set()


def listening_port_range(range_file: Path = EPHEMERAL_PORT_RANGE_FILE) -> range:
    """Ports outside the kernel's ephemeral range, the larger side of it.

    A port chosen by bind(0) lies inside that range, so between choosing it and a peer binding it,
    any process's outgoing connection (the node retrying a PACS that is not up yet) may take it as
    its source port, and the peer then fails with "address already in use". Below 20000 are Ray's
    worker ports (10002-19999 by default).
    """
    try:
        low, high = (int(field) for field in range_file.read_text().split())
    except (OSError, ValueError):
        return range(0)
    below, above = range(20000, low), range(high + 1, 65536)
    return below if len(below) >= len(above) else above


def port_is_free(port: int) -> bool:
    # No SO_REUSEADDR: a port with a connection in TIME_WAIT is refused too.
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A TCP port on 127.0.0.1, free now, outside the ephemeral range, never handed out twice here."""
    candidates = listening_port_range()
    rng = random.SystemRandom()
    for _ in range(200 if candidates else 0):
        port = rng.choice(candidates)
        if port not in _ports_handed_out and port_is_free(port):
            _ports_handed_out.add(port)
            return port
    while True:  # no usable range: fall back on the kernel's choice
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _ports_handed_out:
            _ports_handed_out.add(port)
            return port


def dcmtk(tool: str) -> str:
    """Path of a DCMTK program; the venv's pynetdicom scripts of the same name shadow them."""
    path = Path("/usr/bin") / tool
    if not path.exists():
        import pytest  # only tests call this; scripts import this module without pytest

        pytest.fail(f"DCMTK tool {path} missing: run scripts/setup.sh")
    return str(path)


def dcmtk_env() -> dict[str, str]:
    # Without TCP_NODELAY, Debian's DCMTK waits ~50 ms per DIMSE message (Nagle).
    return {**os.environ, "TCP_NODELAY": "1"}


def echo_ok(port: int, calling_ae: str = "TESTSCU", timeout: float = 5) -> bool:
    result = subprocess.run(
        [dcmtk("echoscu"), "-aet", calling_ae, "-aec", "CXR_AI", "-to", str(int(timeout)), "127.0.0.1", str(port)],
        env=dcmtk_env(), capture_output=True, timeout=timeout + 5,
    )
    return result.returncode == 0


class NodeProcess:
    """``python -m dicom_node serve`` as a subprocess on a free loopback port (``--no-analysis``
    unless ``extra_args`` hold ``--analysis``)."""

    def __init__(self, spool: Path, log_path: Path, extra_args: tuple[str, ...] = ()) -> None:
        self.spool = spool
        self.port = free_port()
        self.log_path = log_path
        self.extra_args = extra_args
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30, *, until: str = "ready:") -> NodeProcess:
        """Start the node and wait for the log line ``until``: ``"ready:"`` once the models are
        loaded (the node fully up), ``"listening:"`` once it accepts associations."""
        # Receiver tests leave the spool's jobs in `received`; end-to-end tests pass --analysis.
        analysis = () if "--analysis" in self.extra_args else ("--no-analysis",)
        args = [
            sys.executable, "-m", "dicom_node", "serve", "--bind", "127.0.0.1",
            "--port", str(self.port), "--spool", str(self.spool), *analysis, *self.extra_args,
        ]
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"node exited with {self.process.returncode}:\n{self.log()}")
            if until in self.log():
                return self
            time.sleep(0.1)
        raise RuntimeError(f"node did not log {until!r} within {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill9(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def terminate(self, timeout: float = 30) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL and reap, if still running (teardown)."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


def instance_dataset_bytes(path: Path) -> bytes:
    """The encoded data set of a DICOM file, without preamble and file meta."""
    from pydicom.filereader import _read_file_meta_info

    data = path.read_bytes()
    if data[128:132] != b"DICM":
        return data  # no preamble and no meta: the file is the bare data set
    with open(path, "rb") as f:
        f.seek(132)
        _read_file_meta_info(f)
        return f.read()


def stop_process(process: subprocess.Popen[bytes] | None, timeout: float = 30) -> None:
    """SIGTERM and wait ``timeout`` s, then SIGKILL: a peer started by a test, stopped by its PID."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def wait_for(predicate: Callable[[], bool], timeout: float = 60) -> bool:
    """Poll ``predicate`` every 0.2 s until it holds (``True``) or ``timeout`` s pass (``False``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def send_raw_c_store(
    port: int, path: Path, sop_class: str, syntax: str, calling_ae: str = "MODALITY"
) -> Dataset:
    """C-STORE a Part 10 file's data set bytes exactly as they are (pynetdicom, no parsing: how a
    broken sender behaves); return the status data set (empty when there was none)."""
    from pynetdicom import AE, _config

    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(sop_class, syntax)
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        assoc = ae.associate("127.0.0.1", port, ae_title="CXR_AI")
        assert assoc.is_established, "the node did not accept the association"
        status = assoc.send_c_store(path)
        if assoc.is_established:
            assoc.release()
        return status
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False

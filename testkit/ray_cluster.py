"""A real Ray cluster on loopback (``ray start --head --block``) with the bundle's Serve application.

Every port is a free one and the session files live in the cluster's own temp folder, so
it never meets another Ray on the machine. The head runs in its own process group: a stop
kills that group by its ID (the replicas' workers exit with their raylet), never ``ray stop``,
which would end every Ray of the user.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from testkit.peers import free_port, wait_for
from testkit.shared_data import REPO_ROOT

RAY = Path(sys.executable).with_name("ray")


class RayCluster:
    """One head node with ``num_cpus`` logical CPUs, Serve's HTTP proxy on ``http_port``."""

    def __init__(self, log_path: Path, num_cpus: int = 2) -> None:
        self.log_path = log_path
        self.num_cpus = num_cpus
        self.gcs_port = free_port()
        self.http_port = free_port()
        # Short: Ray's unix socket paths live under it (at most 107 characters).
        self.temp_dir = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def url(self) -> str:
        """Serve's HTTP proxy (a node's ``inference.serve_url``)."""
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, timeout: float = 90) -> RayCluster:
        ports = [f"--{flag}={free_port()}" for flag in (
            "ray-client-server-port", "dashboard-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
            "runtime-env-agent-port", "metrics-export-port", "node-manager-port", "object-manager-port",
        )]
        args = [
            str(RAY), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={self.gcs_port}",
            f"--num-cpus={self.num_cpus}", "--include-dashboard=false", "--disable-usage-stats",
            f"--temp-dir={self.temp_dir}", *ports,
        ]
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
        with open(self.log_path, "ab") as log:
            process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env,
                                       start_new_session=True)
        self.process = process
        if not wait_for(lambda: "Ray runtime started" in self.log() or process.poll() is not None, timeout):
            raise RuntimeError(f"ray start did not finish within {timeout} s:\n{self.log()}")
        if process.poll() is not None:
            raise RuntimeError(f"ray start exited with {process.returncode}:\n{self.log()}")
        return self

    def deploy(self, bundle: Path, *, name: str = "cxr", replicas: int = 2, num_cpus: float = 1.0,
               extra: tuple[str, ...] = (), timeout: float = 240) -> dict[str, Any]:
        """Deploy the bundle's networks (``python -m monai_app.serve``); returns the identity it serves."""
        args = [
            sys.executable, "-m", "monai_app.serve", "--address", self.address, "--bundle", str(bundle),
            "--name", name, "--http-port", str(self.http_port), "--replicas", str(replicas),
            "--num-cpus", str(num_cpus), "--num-threads", "1", *extra,
        ]
        result = subprocess.run(args, capture_output=True, text=True, cwd=REPO_ROOT, timeout=timeout)
        with open(self.log_path, "a") as log:
            log.write(result.stdout + result.stderr)
        line = next((line for line in result.stdout.splitlines() if line.startswith("serving: ")), None)
        if result.returncode != 0 or line is None:
            raise RuntimeError(f"deploy failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        return json.loads(line.split(" ", 3)[3])

    def identity(self, name: str = "cxr") -> dict[str, Any]:
        """One replica's answer to ``GET /<name>/identity`` (its ``replica`` is ``host:pid``)."""
        with urllib.request.urlopen(f"{self.url}/{name}/identity", timeout=10) as answer:
            return json.load(answer)

    def replica_pids(self, name: str = "cxr", replicas: int = 2, timeout: float = 30) -> set[int]:
        """The worker PIDs of the application's replicas, by asking until each has answered."""
        pids: set[int] = set()
        deadline = time.monotonic() + timeout
        while len(pids) < replicas and time.monotonic() < deadline:
            pids.add(int(self.identity(name)["replica"].rsplit(":", 1)[1]))
        return pids

    def cpu_seconds(self) -> float:
        """CPU time so far of the cluster's processes: the head's process group (GCS, raylet, ...) and
        every descendant of those (the workers, in groups of their own: Serve's proxy, controller, replicas)."""
        if self.process is None:
            return 0.0
        stats: dict[int, tuple[int, int, float]] = {}  # pid -> (parent, process group, CPU seconds)
        ticks = os.sysconf("SC_CLK_TCK")
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # exited meanwhile
            stats[int(entry.name)] = (int(fields[1]), int(fields[2]), (int(fields[11]) + int(fields[12])) / ticks)
        members = {pid for pid, (_, group, _) in stats.items() if group == self.process.pid}
        grown = True
        while grown:
            found = {pid for pid, (parent, _, _) in stats.items() if parent in members} - members
            members |= found
            grown = bool(found)
        return sum(stats[pid][2] for pid in members)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        """Kill the head's process group (GCS, raylet and the rest) at once, as a lost machine."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=30)
        self.process = None

    def close(self) -> None:
        """Stop, and delete the cluster's session files (logs included)."""
        self.stop()
        shutil.rmtree(self.temp_dir, ignore_errors=True)

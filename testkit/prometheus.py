"""A real Prometheus (Debian ``prometheus``) on a free loopback port, scraping given targets."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from testkit.peers import free_port, stop_process, wait_for

PROMETHEUS = "/usr/bin/prometheus"


def prometheus_binary() -> str | None:
    return PROMETHEUS if shutil.which(PROMETHEUS) else None


class PrometheusServer:
    """Prometheus scraping ``targets`` (``host:port``) every ``interval`` seconds; stopped by PID."""

    def __init__(self, workdir: Path, targets: list[str], interval: float = 1.0) -> None:
        self.workdir = workdir
        self.targets = targets
        self.interval = interval
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> PrometheusServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        config.write_text(
            f"global:\n  scrape_interval: {round(self.interval * 1000)}ms\n"
            f"scrape_configs:\n  - job_name: cxr_node\n    static_configs:\n      - targets: {json.dumps(self.targets)}\n"
        )
        log = open(self.workdir / "prometheus.log", "ab")
        self.process = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={self.workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()
        if not wait_for(self._ready, timeout):
            raise RuntimeError(f"Prometheus not ready within {timeout} s:\n{self.log()}")
        return self

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"Prometheus exited with {self.process.returncode}:\n{self.log()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def log(self) -> str:
        path = self.workdir / "prometheus.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def query(self, expression: str) -> list[dict[str, Any]]:
        """The instant vector of ``expression`` (``[{"metric": {...}, "value": [t, "v"]}, ...]``)."""
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": expression})
        with urllib.request.urlopen(url, timeout=10) as response:
            answer = json.load(response)
        assert answer["status"] == "success", answer
        return list(answer["data"]["result"])

    def value(self, expression: str) -> float | None:
        """The single value of ``expression``, ``None`` when it has no sample yet."""
        result = self.query(expression)
        return float(result[0]["value"][1]) if result else None

    def stop(self, timeout: float = 30) -> None:
        stop_process(self.process, timeout)

"""The OHIF v3 viewer in headless Chromium, for tests that look at node-made objects as a user would.

:class:`ViewerServer` serves the pinned OHIF dist (``viewer/ohif``, from ``viewer/install.sh``) as a
single-page app on a free loopback port, with our ``/app-config.js`` and a same-origin proxy of
``/dicom-web`` and ``/wado`` to Orthanc (which sends no CORS headers). :func:`check_in_ohif` opens one
series in headless Chromium (``viewer/check_ohif.mjs``, puppeteer-core) and returns what it saw;
:func:`ohif_pacs` starts Orthanc with DICOMweb plus the viewer server and stops both. See
docs/viewer_testing.md.
"""

from __future__ import annotations

import http.client
import json
import mimetypes
import os
import re
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from testkit.orthanc import OrthancServer, dicomweb_plugin, orthanc_binary
from testkit.shared_data import REPO_ROOT

VIEWER_DIR = REPO_ROOT / "viewer"
OHIF_DIST = VIEWER_DIR / "ohif"
CHECK_SCRIPT = VIEWER_DIR / "check_ohif.mjs"
CHROMIUM = Path("/usr/bin/chromium")
PROXIED_PREFIXES = ("/dicom-web", "/wado")
# Request headers not forwarded to Orthanc (hop-by-hop, or ones that would make it compress).
_DROPPED_REQUEST_HEADERS = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade", "accept-encoding"}
_DROPPED_RESPONSE_HEADERS = {"connection", "keep-alive", "transfer-encoding", "trailer", "upgrade"}
_STATIC_SUFFIXES = {".js", ".mjs", ".css", ".wasm", ".map", ".json", ".png", ".svg", ".ico", ".woff", ".woff2", ".onnx"}


def ohif_available() -> bool:
    """Whether the viewer checks can run: OHIF dist, puppeteer-core, Chromium and Node are present."""
    return (
        (OHIF_DIST / "index.html").is_file()
        and (VIEWER_DIR / "node_modules" / "puppeteer-core" / "package.json").is_file()
        and CHROMIUM.exists()
        and shutil.which("node") is not None
    )


def app_config(origin: str) -> str:
    """OHIF's ``window.config``: one DICOMweb data source on ``origin`` (the proxy), no pop-ups."""
    dicomweb = f"{origin}/dicom-web"
    config: dict[str, Any] = {
        "routerBasename": "/",
        "extensions": [],
        "modes": [],
        "customizationService": {},
        "showStudyList": True,
        "maxNumberOfWebWorkers": 3,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": True,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "showErrorDetails": "always",
        "investigationalUseDialog": {"option": "never"},
        "maxNumRequests": {"interaction": 100, "thumbnail": 5, "prefetch": 25},
        "defaultDataSourceName": "orthanc",
        "dataSources": [
            {
                "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
                "sourceName": "orthanc",
                "configuration": {
                    "friendlyName": "test Orthanc (DICOMweb plugin)",
                    "name": "orthanc",
                    "wadoUriRoot": f"{origin}/wado",
                    "qidoRoot": dicomweb,
                    "wadoRoot": dicomweb,
                    "qidoSupportsIncludeField": False,
                    "imageRendering": "wadors",
                    "thumbnailRendering": "wadors",
                    "enableStudyLazyLoad": False,
                    "supportsFuzzyMatching": False,
                    "supportsWildcard": True,
                    "staticWado": False,
                    "singlepart": "bulkdata,video",
                    "bulkDataURI": {"enabled": True},
                    "omitQuotationForMultipartRequest": True,
                },
            }
        ],
    }
    return f"window.config = {json.dumps(config, indent=2)};\n"


class _Handler(SimpleHTTPRequestHandler):
    """Static OHIF files with an SPA fallback, ``/app-config.js``, and the Orthanc proxy."""

    server: _Server
    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".wasm": "application/wasm", ".mjs": "text/javascript"}

    def do_GET(self) -> None:
        self._route(head=False)

    def do_HEAD(self) -> None:
        self._route(head=True)

    def do_POST(self) -> None:
        if self._proxied():
            self._proxy()
        else:
            self.send_error(405)

    def _proxied(self) -> bool:
        path = urlsplit(self.path).path
        return any(path == p or path.startswith(p + "/") or path.startswith(p + "?") for p in PROXIED_PREFIXES)

    def _route(self, head: bool) -> None:
        path = urlsplit(self.path).path
        if self._proxied():
            self._proxy()
        elif path == "/app-config.js":
            body = self.server.app_config.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/javascript; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if not head:
                self.wfile.write(body)
        else:
            target = Path(self.translate_path(self.path))
            if not target.is_file() and Path(path).suffix.lower() not in _STATIC_SUFFIXES:
                self.path = "/index.html"  # a client-side route such as /viewer?StudyInstanceUIDs=...
            if head:
                super().do_HEAD()
            else:
                super().do_GET()

    def _proxy(self) -> None:
        """Forward to Orthanc with the same method, path, query and headers; stream the answer back."""
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _DROPPED_REQUEST_HEADERS}
        # Host stays ours: Orthanc's DICOMweb writes absolute BulkDataURIs from it, which must come back here.
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        connection = http.client.HTTPConnection("127.0.0.1", self.server.orthanc_http_port, timeout=60)
        answered = False
        try:
            connection.request(self.command, self.path, body=body, headers=headers)
            response = connection.getresponse()
            answered = True
            self.send_response(response.status, response.reason)
            for key, value in response.getheaders():
                if key.lower() not in _DROPPED_RESPONSE_HEADERS:
                    self.send_header(key, value)
            self.end_headers()  # HTTP/1.0: the body ends when the connection closes
            if self.command != "HEAD":
                while chunk := response.read(64 * 1024):
                    self.wfile.write(chunk)
        except OSError as error:
            if not answered:  # else the client sees a truncated body: the connection just closes
                self.send_error(502, f"Orthanc: {error}")
        finally:
            connection.close()
        self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        with self.server.lock:
            self.server.requests.append(f"{self.command} {self.path} {args[1] if len(args) > 1 else ''}")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    app_config: str
    orthanc_http_port: int
    requests: list[str]
    lock: threading.Lock


class ViewerServer:
    """OHIF on ``http://127.0.0.1:<port>/`` in a background thread, reading Orthanc's DICOMweb.

    ``requests`` lists ``"METHOD path status"`` of every request served, for diagnosis.
    """

    def __init__(self, orthanc_http_port: int, dist: Path = OHIF_DIST) -> None:
        self.dist = dist
        self.orthanc_http_port = orthanc_http_port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("ViewerServer is not started")
        return self._server.server_address[1]

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def requests(self) -> list[str]:
        if self._server is None:
            return []
        with self._server.lock:
            return list(self._server.requests)

    def start(self) -> ViewerServer:
        if not (self.dist / "index.html").is_file():
            raise RuntimeError(f"OHIF dist missing at {self.dist}: run bash viewer/install.sh")
        mimetypes.add_type("application/wasm", ".wasm")
        server = _Server(("127.0.0.1", 0), partial(_Handler, directory=str(self.dist)))
        server.orthanc_http_port = self.orthanc_http_port
        server.requests = []
        server.lock = threading.Lock()
        self._server = server
        server.app_config = app_config(self.origin)
        self._thread = threading.Thread(target=server.serve_forever, name="ohif-viewer-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = self._thread = None

    def __enter__(self) -> ViewerServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def viewer_url(self, study_uid: str, series_uid: str | None = None) -> str:
        """The OHIF route that opens ``study_uid`` with ``series_uid``'s display set in the viewport."""
        url = f"{self.origin}/viewer?StudyInstanceUIDs={study_uid}"
        return url + (f"&initialSeriesInstanceUID={series_uid}" if series_uid else "")


def check_in_ohif(
    server: ViewerServer,
    study_uid: str,
    series_uid: str | None,
    screenshot: Path,
    timeout: float = 60,
    settle_ms: int = 1500,
    min_annotations: int = 0,
) -> dict[str, Any]:
    """Open the series in OHIF in headless Chromium and return ``check_ohif.mjs``'s findings.

    Keys: ``url``; ``ok`` (rendered, no page error, no error-boundary report, no crash);
    ``rendered`` (a viewport canvas holds a non-uniform, non-black image: luminance mean and std > 5);
    ``pageErrors`` (uncaught exceptions); ``errorBoundary`` (OHIF's error-boundary reports, which it
    logs with ``console.debug``); ``consoleErrors`` (``console.error`` and error-like ``console.debug``);
    ``httpErrors`` (responses >= 400, failed requests); ``text`` (body innerText: panels, viewport
    overlays, measurement labels); ``svgText`` (texts drawn in the annotation layers);
    ``annotationShapes`` (polylines, lines, paths, circles, ellipses in ``svg.svg-layer``); ``viewports``
    (per viewport: canvas size, pixel mean/std, shape and text counts); ``fatal`` (the script's own
    failure, e.g. navigation timeout); ``timings`` (ms from start); ``screenshot`` (full-page PNG).

    The script waits until the viewport renders (or an error shows) and then ``settle_ms`` more, and
    keeps waiting, within ``timeout``, until at least ``min_annotations`` shapes are drawn; pass 1 for
    an SR that should draw its regions. ``timeout`` bounds the whole run (seconds).
    """
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    args = {
        "url": server.viewer_url(study_uid, series_uid),
        "screenshot": str(screenshot),
        "chromium": str(CHROMIUM),
        "timeoutMs": int(max(timeout - 10, 5) * 1000),
        "settleMs": settle_ms,
        "minAnnotations": min_annotations,
    }
    process = subprocess.Popen(
        ["node", str(CHECK_SCRIPT)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, cwd=VIEWER_DIR, start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(json.dumps(args), timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop_check(process)
        raise
    if process.returncode != 0 or not stdout.strip():
        raise RuntimeError(f"check_ohif.mjs exited with {process.returncode}:\n{stderr[-4000:]}")
    result: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    return result


def _stop_check(process: subprocess.Popen[str]) -> None:
    """End a hung check: SIGTERM (puppeteer then closes Chromium), then SIGKILL node's and Chromium's groups.

    puppeteer starts Chromium detached, in a process group of its own whose ID the script prints first.
    """
    process.send_signal(signal.SIGTERM)
    try:
        _, stderr = process.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        _, stderr = process.communicate()
    match = re.search(r"^chromium pid (\d+)$", stderr or "", re.MULTILINE)
    if match:
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(int(match.group(1)), signal.SIGKILL)


@contextmanager
def ohif_pacs(workdir: Path, calling_ae_titles: tuple[str, ...] = ("TESTSCU",)) -> Iterator[tuple[OrthancServer, ViewerServer]]:
    """Orthanc with DICOMweb (accepting C-STORE from ``calling_ae_titles``) and OHIF in front of it.

    Both are stopped on exit (Orthanc by PID, the viewer server's thread by shutdown). For a fixture::

        with ohif_pacs(tmp_path, ("CXR_AI",)) as (orthanc, viewer):
            ...  # send to orthanc.dicom_port, then check_in_ohif(viewer, study, series, png)
    """
    if orthanc_binary() is None or dicomweb_plugin() is None:
        raise RuntimeError("Orthanc or its DICOMweb plugin is missing: run scripts/setup.sh")
    orthanc = OrthancServer(workdir / "orthanc", calling_ae_titles, dicomweb=True)
    viewer = ViewerServer(orthanc.http_port)
    try:
        orthanc.start()
        viewer.start()
        yield orthanc, viewer
    finally:
        viewer.stop()
        orthanc.stop()

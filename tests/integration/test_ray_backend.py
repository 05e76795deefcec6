"""The models on a real Ray Serve cluster on loopback (``[inference] backend = "ray"``).

One head node (``ray start --head`` on 127.0.0.1) serves the bundle's networks with two CPU
replicas; two node processes, two "sites" with their own spools, send their reports to one
real Orthanc. A third node with the local backend analyses the same real chest DX files
(detector size, ~10 MB) as the reference. The tests run in file order: a burst from both
sites, a replica killed mid-burst, a deployment of another model, and last the whole
cluster killed and started again while a site keeps receiving.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from prometheus_client.parser import text_string_to_metric_families

from dicom_node.spool import JobState, Spool
from scripts.dicom_corpus import build_cxr_sized_corpus
from testkit.orthanc import ORTHANC_AE_TITLE, OrthancServer, running_orthanc
from testkit.peers import NodeProcess, dcmtk, dcmtk_env, free_port, wait_for
from testkit.ray_cluster import RayCluster
from testkit.shared_data import REPO_ROOT
from testkit.sr import content_items, reports_in_orthanc

logger = logging.getLogger(__name__)

NODE_AE = "CXR_AI"
BURST = 3  # images per site per burst
KILL_ATTEMPTS = 4  # bursts the replica-kill test may take: a kill can land between two calls
KILL_FILES = slice(2 * BURST, 2 * BURST + 2 * BURST * KILL_ATTEMPTS)
REST = 2 * BURST + 2 * BURST * KILL_ATTEMPTS  # the files after those: another model, the cluster restart
REPORT_TIMEOUT = 240  # a loaded 2-core machine: two nodes' preprocessing and two replicas share it
BUNDLE = REPO_ROOT / "bundle"


def _config(path: Path, *, backend: str, serve_url: str = "", application: str = "cxr",
            orthanc: OrthancServer | None = None, metrics_port: int = 0) -> Path:
    text = (
        "[delivery]\nretry_initial_seconds = 1\nretry_max_seconds = 2\n"
        f'[inference]\ndevice = "cpu"\nnum_threads = 1\nbackend = "{backend}"\n'
    )
    if backend == "ray":
        text += (f'serve_url = "{serve_url}"\nserve_application = "{application}"\nserve_timeout_seconds = 30\n'
                 "backend_retry_max_seconds = 2\n")
    if metrics_port:
        text += f"[metrics]\nport = {metrics_port}\n"
    if orthanc is not None:
        text += (f'[[destinations]]\nname = "pacs"\nae_title = "{ORTHANC_AE_TITLE}"\n'
                 f'host = "127.0.0.1"\nport = {orthanc.dicom_port}\n')
    path.write_text(text)
    return path


def _send(port: int, files: list[Path], calling_ae: str) -> None:
    result = subprocess.run(
        [dcmtk("storescu"), "-aet", calling_ae, "-aec", NODE_AE, "127.0.0.1", str(port), *map(str, files)],
        capture_output=True, text=True, env=dcmtk_env(), timeout=120,
    )
    assert result.returncode == 0, result.stderr


def _send_from_sites(bursts: list[tuple[NodeProcess, list[Path]]]) -> None:
    """Each site's burst at once, over its own association (the sites are independent)."""
    threads = [threading.Thread(target=_send, args=(node.port, files, f"MODALITY_{i}"))
               for i, (node, files) in enumerate(bursts)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=150)


def _uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def _facts(report: pydicom.Dataset) -> dict[str, object]:
    """What a report says, for comparing two backends: UIDs and every content item, with the
    numbers to 3 decimals (the two backends batch differently: float32 sums differ in the 6th)."""
    items = []
    for item in content_items(report):
        name = item.ConceptNameCodeSequence[0].CodeValue if "ConceptNameCodeSequence" in item else ""
        value: object = None
        if item.ValueType == "NUM":
            value = round(float(item.MeasuredValueSequence[0].NumericValue), 3)
        elif item.ValueType == "CODE":
            value = item.ConceptCodeSequence[0].CodeValue
        elif item.ValueType in ("TEXT", "UIDREF"):
            value = str(item.get("TextValue", item.get("UID", "")))
        elif item.ValueType == "IMAGE":
            value = str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        elif item.ValueType == "SCOORD":
            value = len(item.GraphicData)
        items.append((item.ValueType, name, value))
    return {"sop_instance_uid": str(report.SOPInstanceUID), "series": str(report.SeriesInstanceUID), "items": items}


def _reported(spool: Spool, uid: str) -> bool:
    """Whether the job of ``uid`` has its report (in the outbox or delivered)."""
    job = spool.find_job(uid)
    return job is not None and job.state in (JobState.OUTBOX, JobState.SENT)


class LocalReference:
    """A node with the local backend and no destination: its reports stay in its spool."""

    def __init__(self, node: NodeProcess) -> None:
        self.node = node
        self.spool = Spool(node.spool, fsync=False)

    def report(self, source_uid: str) -> pydicom.Dataset:
        path = self.node.spool / "results" / f"{source_uid}.dcm"
        assert wait_for(lambda: _reported(self.spool, source_uid), REPORT_TIMEOUT), self.node.log()[-4000:]
        return pydicom.dcmread(path)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """33 detector-size DX files, every other one a real chest DICOM at its own size, the rest shared chest images."""
    return build_cxr_sized_corpus(tmp_path_factory.mktemp("corpus"), REST + BURST, images_per_study=1, real_every=2)


@pytest.fixture(scope="module")
def local_reference(tmp_path_factory: pytest.TempPathFactory, corpus: list[Path]) -> Iterator[LocalReference]:
    """The local backend's reports on the whole corpus (sent at once; analysed while the cluster starts)."""
    root = tmp_path_factory.mktemp("local")
    node = NodeProcess(root / "spool", root / "node.log",
                       ("--analysis", "--config", str(_config(root / "node.toml", backend="local"))))
    node.start(timeout=120, until="listening:")
    _send(node.port, corpus, "MODALITY_L")
    yield LocalReference(node)
    node.kill()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayCluster]:
    root = tmp_path_factory.mktemp("ray")
    cluster = RayCluster(root / "ray.log", num_cpus=3).start()  # two replicas, and one of another model
    try:
        cluster.deploy(BUNDLE, replicas=2)
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    with running_orthanc(tmp_path_factory.mktemp("orthanc"), (NODE_AE,)) as server:
        yield server


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory, cluster: RayCluster, orthanc: OrthancServer,
          local_reference: LocalReference) -> Iterator[list[NodeProcess]]:
    """Two nodes on the cluster, each with its own spool and metrics port, one Orthanc."""
    nodes = []
    for name in ("site_a", "site_b"):
        root = tmp_path_factory.mktemp(name)
        config = _config(root / "node.toml", backend="ray", serve_url=cluster.url, orthanc=orthanc,
                         metrics_port=free_port())
        nodes.append(NodeProcess(root / "spool", root / "node.log", ("--analysis", "--config", str(config))))
    for node in nodes:
        node.start(timeout=120)
    yield nodes
    for node in nodes:
        node.kill()


def _metrics(node: NodeProcess) -> str:
    import urllib.request

    port = int(next(line for line in node.log().splitlines() if "metrics: http" in line).rsplit(":", 1)[1].split("/")[0])
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        return answer.read().decode()


def sample_value(text: str, name: str, **labels: str) -> float:
    """The value of sample ``name`` with ``labels`` in a /metrics page (0 when absent)."""
    return sum(
        sample.value for family in text_string_to_metric_families(text) for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def _assert_once_and_as_local(orthanc: OrthancServer, sources: list[Path], reference: LocalReference,
                              nodes: list[NodeProcess]) -> None:
    uids = {_uid(path) for path in sources}

    def all_arrived() -> bool:
        return set(reports_in_orthanc(orthanc, uids)) == uids

    assert wait_for(all_arrived, REPORT_TIMEOUT), "\n".join(node.log()[-3000:] for node in nodes)
    found = reports_in_orthanc(orthanc, uids)
    assert {uid: len(reports) for uid, reports in found.items()} == dict.fromkeys(uids, 1), "one report per image"
    for uid, (report,) in found.items():
        assert _facts(report) == _facts(reference.report(uid)), f"report on {uid} differs from the local backend's"


def test_two_sites_bursts_each_report_arrives_once_equal_to_the_local_backend(
    corpus: list[Path], sites: list[NodeProcess], orthanc: OrthancServer, local_reference: LocalReference,
) -> None:
    bursts = [(sites[0], corpus[:BURST]), (sites[1], corpus[BURST:2 * BURST])]
    _send_from_sites(bursts)
    _assert_once_and_as_local(orthanc, corpus[: 2 * BURST], local_reference, sites)
    for node in sites:
        metrics = _metrics(node)
        # Only the tensors travel: the U-Net's 256² input and logits, the classifier's 3 x 224² input,
        # probability, embedding and Grad-CAM map, about 1.3 MB a study against ~10 MB a file.
        sent = sample_value(metrics, "cxr_backend_bytes_total", direction="sent")
        received = sample_value(metrics, "cxr_backend_bytes_total", direction="received")
        assert 0.8e6 * BURST < sent < 1.0e6 * BURST and 0.4e6 * BURST < received < 0.55e6 * BURST, (sent, received)
        assert sample_value(metrics, "cxr_backend_calls_total", route="predict", outcome="ok") >= 1
        assert node.process is not None
        maps = Path(f"/proc/{node.process.pid}/maps").read_text()
        assert "_raylet" not in maps, "the node talks HTTP to Serve: Ray stays out of its process"


def test_a_replica_killed_mid_burst_loses_no_report_and_duplicates_none(
    corpus: list[Path], cluster: RayCluster, sites: list[NodeProcess], orthanc: OrthancServer,
    local_reference: LocalReference,
) -> None:
    kill_files = corpus[KILL_FILES]
    failed = 0.0
    for attempt in range(KILL_ATTEMPTS):
        # A call lasts tens of milliseconds and the nodes' own preprocessing longer, so a kill
        # can land between two calls: nothing is then in flight to retry, and a new burst is tried.
        before = cluster.replica_pids()
        assert len(before) == 2
        files = kill_files[2 * BURST * attempt: 2 * BURST * (attempt + 1)]
        sender = threading.Thread(target=_send_from_sites,
                                  args=([(sites[0], files[:BURST]), (sites[1], files[BURST:])],))
        sender.start()
        uids = {_uid(path) for path in files}
        spools = [Spool(node.spool, fsync=False) for node in sites]
        # Mid-burst: the first replica seen starting a call. Not after the first report: the
        # nodes build a batch's reports while the next batch is computed (overlap_reports), so
        # by then the burst's calls are mostly done.
        victim = _busy(before)
        os.kill(victim, signal.SIGKILL)
        done = sum(1 for spool in spools for uid in uids if _reported(spool, uid))
        sender.join(timeout=150)
        _assert_once_and_as_local(orthanc, files, local_reference, sites)
        failed = sum(sample_value(_metrics(node), "cxr_backend_calls_total", outcome="unavailable") for node in sites)
        logger.info("replica kill %d: %d of %d images reported before it, %g calls failed and were retried so far",
                    attempt + 1, done, len(uids), failed)
        assert wait_for(lambda: victim not in cluster.replica_pids() and len(cluster.replica_pids()) == 2, 120), \
            "Serve replaces the killed replica"  # noqa: B023
        if failed >= 1:
            break
    assert failed >= 1, "a kill hit calls in flight (the victim was computing), which the nodes retried"


def _cpu_seconds(pid: int) -> float:
    """CPU time of all of ``pid``'s threads, in nanosecond steps (``schedstat``; ``stat`` counts 10 ms ticks)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):  # a thread that just ended
            continue
    return total / 1e9


def _busy(pids: set[int], timeout: float = 60) -> int:
    """The first of ``pids`` seen starting to compute: idle in one 5 ms window, over 0.6 of a core in the next.

    A call lasts a few tens of milliseconds, so a replica caught at the start of one is still
    in it when killed a moment later; one caught busy anywhere was often at its end.
    """
    deadline = time.monotonic() + timeout
    last = {pid: _cpu_seconds(pid) for pid in pids}
    idle = dict.fromkeys(pids, False)
    while time.monotonic() < deadline:
        time.sleep(0.005)
        for pid in pids:
            now = _cpu_seconds(pid)
            used, last[pid] = now - last[pid], now
            if idle[pid] and used > 0.003:
                return pid
            idle[pid] = used < 0.001
    raise AssertionError("no replica started computing within the burst")


def _other_model_bundle(target: Path) -> Path:
    """The bundle with another version in its metadata (configs copied, weights linked)."""
    shutil.copytree(BUNDLE / "configs", target / "configs")
    (target / "models").symlink_to(BUNDLE / "models")
    metadata = json.loads((target / "configs" / "metadata.json").read_text())
    metadata["version"] += "-other"
    (target / "configs" / "metadata.json").write_text(json.dumps(metadata))
    return target


def test_a_deployment_of_another_model_is_refused_and_nothing_reported(
    tmp_path: Path, corpus: list[Path], cluster: RayCluster, orthanc: OrthancServer,
) -> None:
    bundle = _other_model_bundle(tmp_path / "bundle")
    served = cluster.deploy(bundle, name="other", replicas=1)
    version = json.loads((BUNDLE / "configs" / "metadata.json").read_text())["version"]
    assert served["version"] == f"{version}-other"
    config = _config(tmp_path / "node.toml", backend="ray", serve_url=cluster.url, application="other", orthanc=orthanc)
    node = NodeProcess(tmp_path / "spool", tmp_path / "node.log", ("--analysis", "--config", str(config)))
    try:
        node.start(timeout=120)
        source = corpus[REST]
        _send(node.port, [source], "MODALITY_X")
        uid = _uid(source)
        refusal = f"version: {version} != {version}-other"
        assert wait_for(lambda: refusal in node.log() and "answer refused, nothing reported" in node.log(), 120), \
            node.log()[-3000:]
        assert wait_for(lambda: (job := Spool(node.spool, fsync=False).find_job(uid)) is not None
                        and job.backend_attempts >= 2, 60), "refused answers are retried with backoff, counted"
        job = Spool(node.spool, fsync=False).find_job(uid)
        assert job is not None and job.state is JobState.RECEIVED and refusal in job.detail
        assert not (tmp_path / "spool" / "results" / f"{uid}.dcm").exists()
        assert uid not in reports_in_orthanc(orthanc, {uid})
    finally:
        node.kill()


def test_the_cluster_killed_and_started_again_only_delays_analysis(
    tmp_path: Path, corpus: list[Path], cluster: RayCluster, sites: list[NodeProcess], orthanc: OrthancServer,
    local_reference: LocalReference,
) -> None:
    cluster.stop()
    files = corpus[REST + 1:]
    _send(sites[0].port, files, "MODALITY_0")  # receiving goes on: every C-STORE answered Success
    uids = [_uid(path) for path in files]
    spool = Spool(sites[0].spool, fsync=False)

    def waiting_with_retries() -> bool:
        jobs = [spool.find_job(uid) for uid in uids]
        return all(job is not None and job.backend_attempts >= 2 and job.attempts == 0 for job in jobs)

    assert wait_for(waiting_with_retries, 60), sites[0].log()[-3000:]
    status = subprocess.run([sys.executable, "-m", "dicom_node", "status", "--json", "--spool", str(sites[0].spool)],
                            capture_output=True, text=True, timeout=60, check=True)
    backlog = json.loads(status.stdout)
    assert backlog["jobs"]["received"] + backlog["jobs"]["processing"] >= len(files), backlog["jobs"]
    assert backlog["backend_waiting"]["jobs"] == len(files) and backlog["backend_waiting"]["most_tries"] >= 2
    metrics = _metrics(sites[0])
    assert sample_value(metrics, "cxr_backend_calls_total", route="lung", outcome="unavailable") >= 2
    assert sample_value(metrics, "cxr_jobs", state="received") + sample_value(metrics, "cxr_jobs", state="processing") \
        >= len(files)
    time.sleep(1)
    cluster.start()
    cluster.deploy(BUNDLE, replicas=2)
    _assert_once_and_as_local(orthanc, files, local_reference, sites)
    assert all(spool.find_job(uid).attempts == 1 for uid in uids), "the waits used up none of the tries"  # type: ignore[union-attr]

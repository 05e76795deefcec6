"""Profile one study's path through the node, stage by stage: wall and CPU time per stage.

Every stage is the node's own code, called in this process in the order the node runs it
(:mod:`dicom_node.analyse.worker`), on one DICOM file at a time:

- ``receive`` (only with ``--network``): DCMTK ``storescu`` sends the file to the node
  (``python -m dicom_node serve``, analysis off, fsync on) on loopback; wall is storescu's,
  CPU is the node process's (``/proc/PID/stat``) over the send;
- ``check``: the receive-time check of the data set (:func:`read_instance_identity`);
- ``persist``: the spool's durable write of the instance and its job record (``store_instance``);
- ``queue``: the job's move to ``processing`` (what the worker does first);
- ``header``: ``dcmread`` without pixels + :func:`check_header`;
- each transform of the bundle's ``preprocessing``, by class name (``LoadChestXrayd`` is the
  decode), with the U-Net's own forward timed apart inside ``LungProbabilityd``;
- ``applicability``: the rest of ``prepare`` (8-bit source copy, geometry, lung fields,
  appearance) + :func:`check_image`;
- ``classifier``: ``predict`` with relevance, as the node calls it: ResNet50 + head on the
  runtime in use, then the Grad-CAM from that pass's feature maps (the head's gradient only,
  :func:`~monai_app.relevance.grad_cam_from_feature_maps`);
- ``index_query``, ``image_evidence``, ``build_result`` (SR, SC, KOS), ``encode``,
  ``spool_result`` (``put_result``: every object durably, the job into the outbox);
- ``outbox_c_store`` (only with ``--network``): the node's ``send_files`` of the SR and its
  companions, on one association, to DCMTK ``storescp`` on loopback.

Wall is ``time.perf_counter``, CPU ``time.process_time`` (this process, all threads: above
wall when PyTorch runs on two cores). Medians over ``--rounds`` after one warm-up round.
``--cprofile`` adds cProfile's top functions (cumulative) of one more round per file.

Usage (from the repository root)::

    python -m scripts.profile_study --sizes cxr,small --rounds 5 --network --out bench-out/profile

Writes ``<out>/profile_study.json``; prints a table. No patient data (the corpus is synthetic).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pydicom
import torch

from dicom_node.analyse.applicability import check_header, check_image
from dicom_node.analyse.image_evidence import image_evidence
from dicom_node.analyse.worker import encode, similar_studies
from dicom_node.config import PacsDestination
from dicom_node.receive.instance_check import read_instance_identity
from dicom_node.report.result import build_result
from dicom_node.report.sr import AlgorithmInfo, Finding
from dicom_node.send.delivery import send_files
from dicom_node.spool import JobState, Spool
from monai_app.inference import BundleAnalyser, PreparedImage, to_uint8
from monai_app.transforms.classifier_input import LungProbabilityd
from monai_app.transforms.geometry import grid_from_meta
from monai_app.transforms.lung_fields import measure_lung_fields
from scripts import dicom_corpus
from scripts.bench_ingest import cpu_busy_fraction, dcmtk_env, machine_facts, stop, wait_ready
from testkit.peers import free_port
from testkit.process_tree import cpu_seconds

REPO = Path(__file__).resolve().parents[1]
AE_TITLE = "CXR_AI"
PACS_AE = "PROFILE_PACS"
CLASSIFIER_STAGE = "classifier + Grad-CAM (one forward pass, the head's gradient)"


class Stages:
    """Wall and CPU seconds per named stage, one list entry per round."""

    def __init__(self) -> None:
        self.wall: dict[str, list[float]] = {}
        self.cpu: dict[str, list[float]] = {}

    @contextmanager
    def time(self, name: str) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.process_time()
        yield
        self.add(name, time.perf_counter() - wall, time.process_time() - cpu)

    def add(self, name: str, wall: float, cpu: float) -> None:
        self.wall.setdefault(name, []).append(wall)
        self.cpu.setdefault(name, []).append(cpu)

    def medians(self) -> list[dict[str, Any]]:
        return [{"stage": name, "wall_ms": round(1000 * statistics.median(w), 2),
                 "cpu_ms": round(1000 * statistics.median(self.cpu[name]), 2), "rounds": len(w)}
                for name, w in self.wall.items()]


def dataset_start(path: Path) -> int:
    """Offset of the data set in a Part 10 file: preamble, magic, then the file meta group's length."""
    with open(path, "rb") as f:
        head = f.read(144)
    if head[128:132] != b"DICM" or head[132:136] != b"\x02\x00\x00\x00":
        raise ValueError(f"{path.name}: no File Meta Information Group Length first")
    return 144 + struct.unpack("<I", head[140:144])[0]


def unet_timer(analyser: BundleAnalyser, stages: Stages) -> Callable[[], None]:
    """Time the lung network's forward inside ``LungProbabilityd`` apart (it also resizes); returns the undo."""
    lung = next(t for t in analyser.preprocessing.transforms if isinstance(t, LungProbabilityd))
    original = lung.network

    def timed(x: torch.Tensor) -> torch.Tensor:
        with stages.time("  U-Net forward"):
            return original(x)

    lung.use_network(timed)
    return lambda: lung.use_network(original)


def prepare_by_stage(analyser: BundleAnalyser, path: Path, stages: Stages) -> PreparedImage:
    """:meth:`BundleAnalyser.prepare`, with each transform of the bundle's preprocessing timed."""
    data: Any = {"image": str(path)}
    source_image = None
    for i, transform in enumerate(analyser.preprocessing.transforms):
        with stages.time(f"preprocess: {type(transform).__name__}" if i else "decode: LoadChestXrayd"):
            data = analyser.preprocessing(data, start=i, end=i + 1)
            if i == 0:
                source_image = to_uint8(data["image"].numpy()[0])
    with stages.time("applicability (lung fields, appearance)"):
        grid = grid_from_meta(getattr(data["image"], "meta", {}), data["image"].shape[-2:])
        tensor = torch.as_tensor(data["image"]).float()
        image, lung = tensor[0].numpy(), tensor[1].numpy()
        appearance = (float("nan"), float("inf"))
        if analyser.appearance is not None:
            appearance = (analyser.appearance.residual(image, lung), analyser.appearance.limit)
        prepared = PreparedImage(tensor, float((tensor[1] >= 0.5).float().mean()), measure_lung_fields(lung),
                                 *appearance, grid=grid, source_image=source_image)
        check_image(prepared)
    return prepared


def one_study(analyser: BundleAnalyser, path: Path, spool: Spool,
              algorithm: AlgorithmInfo, stages: Stages) -> list[Path]:
    """One study through the node's in-process stages; returns the result files the outbox sends."""
    ts = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
    with stages.time("check (receive-time, element headers)"), open(path, "rb") as f:
        identity = read_instance_identity(f, ts, start=dataset_start(path))
    data = path.read_bytes()
    with stages.time("persist (instance + job, fsync)"):
        job, _ = spool.store_instance([data], sop_instance_uid=identity.sop_instance_uid,
                                      sop_class_uid=identity.sop_class_uid, transfer_syntax_uid=str(ts),
                                      calling_ae_title="PROFILE")
    with stages.time("queue (job to processing)"):
        job = spool.transition(job, JobState.PROCESSING, attempts=job.attempts + 1)
    instance = spool.instance_path(job.sop_instance_uid)
    with stages.time("header (dcmread, no pixels + check)"):
        header = pydicom.dcmread(instance, stop_before_pixels=True)
        check_header(header)
    prepared = prepare_by_stage(analyser, instance, stages)
    with stages.time(CLASSIFIER_STAGE):
        prediction = analyser.predict([prepared], relevance=True)[0]
    relevance_map = prediction.relevance
    assert relevance_map is not None
    with stages.time("index query (k=4)"):
        similar = similar_studies(analyser.similar(prediction.embedding, 4, exclude_study=str(header.StudyInstanceUID)))
    with stages.time("image_evidence (maps to source grid)"):
        evidence = image_evidence(prepared, relevance_map)
    with stages.time("build_result (SR, SC, KOS)"):
        result = build_result(header, Finding(probability=prediction.probability, threshold=analyser.threshold),
                              similar, algorithm, evidence)
    with stages.time("encode (SR, SC, KOS)"):
        report = encode(result.report)
        companions = [(kind, encode(dataset)) for kind, dataset in result.companions]
    with stages.time("spool result (objects + outbox, fsync)"):
        job = spool.put_result(job, report, ["pacs"], companions=companions)
    return [p for p in sorted(spool.root.rglob("*.dcm")) if "results" in p.parts]


def measure_receive(files: list[Path], work: Path, rounds: int, stages: Stages) -> None:
    """C-STORE each file with DCMTK storescu to the node (analysis off): storescu's wall, the node's CPU."""
    spool_dir = work / "receive-spool"
    config = work / "receive.toml"
    config.write_text("[inference]\nanalysis = false\n")
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    node = subprocess.Popen([sys.executable, "-m", "dicom_node", "serve", "--ae-title", AE_TITLE, "--port", str(port),
                             "--bind", "127.0.0.1", "--spool", str(spool_dir), "--config", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=REPO)
    try:
        wait_ready(port, node, timeout_s=60)
        for round_ in range(rounds + 1):
            for path in files:
                cpu, wall = cpu_seconds(node.pid), time.perf_counter()
                subprocess.run(["/usr/bin/storescu", "-aec", AE_TITLE, "127.0.0.1", str(port), str(path)],
                               env=dcmtk_env(), check=True, capture_output=True)
                if round_:  # the first is a warm-up
                    stages.add("receive (C-STORE to the node, storescu)", time.perf_counter() - wall,
                               cpu_seconds(node.pid) - cpu)
    finally:
        stop(node)


def sizes_corpus(size: str, work: Path, n: int) -> list[Path]:
    if size == "cxr":
        return dicom_corpus.build_cxr_sized_corpus(work / "cxr", n, images_per_study=1)
    if size == "small":
        return dicom_corpus.build_small_corpus(work / "small", n, images_per_study=1)
    raise ValueError(f"unknown size {size!r} (cxr, small)")


def profile_size(size: str, args: argparse.Namespace, analyser: BundleAnalyser, work: Path) -> dict[str, Any]:
    files = sizes_corpus(size, work, args.files)
    stages = Stages()
    algorithm = AlgorithmInfo(name=analyser.identity.name[:64], version=analyser.identity.version,
                              weights_sha256=analyser.identity.sha256, manufacturer=analyser.identity.authors[:64])
    undo = unet_timer(analyser, stages)
    pacs = None
    outbox_files: list[list[Path]] = []
    try:
        for round_ in range(args.rounds + 1):
            for path in files:
                spool = Spool(work / f"spool-{size}-{round_}-{path.stem}")
                record = stages if round_ else Stages()  # round 0 warms up
                outbox_files.append(one_study(analyser, path, spool, algorithm, record))
        profile_text = ""
        if args.cprofile:
            profiler = cProfile.Profile()
            profiler.enable()
            one_study(analyser, files[0], Spool(work / f"spool-{size}-cprofile"), algorithm, Stages())
            profiler.disable()
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(args.cprofile)
            profile_text = out.getvalue()
        if args.network:
            measure_receive(files, work, args.rounds, stages)
            pacs_dir = work / f"pacs-{size}"
            pacs_dir.mkdir()
            port = free_port()
            pacs = subprocess.Popen(["/usr/bin/storescp", "--aetitle", PACS_AE, "--max-pdu", "131072",
                                     "--output-directory", str(pacs_dir), str(port)], env=dcmtk_env(),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_ready(port, pacs, timeout_s=30)
            destination = PacsDestination(name="pacs", ae_title=PACS_AE, host="127.0.0.1", port=port)
            for i, objects in enumerate(outbox_files):
                with (stages if i >= len(files) else Stages()).time("outbox C-STORE (SR, SC, KOS to storescp)"):
                    delivered = send_files(objects, destination, calling_ae_title=AE_TITLE)
                if not delivered.delivered:
                    raise RuntimeError(f"outbox C-STORE failed: {delivered}")
    finally:
        undo()
        if pacs is not None:
            stop(pacs)
    header = pydicom.dcmread(files[0], stop_before_pixels=True)
    table = stages.medians()
    model_stages = ("  U-Net forward", CLASSIFIER_STAGE)
    nested = {"  U-Net forward"}  # inside LungProbabilityd: not added twice
    total = [row for row in table if row["stage"] not in nested and not row["stage"].startswith(("receive", "outbox"))]
    return {
        "size": size, "rows": int(header.Rows), "columns": int(header.Columns),
        "file_bytes": files[0].stat().st_size, "files": len(files), "rounds": args.rounds,
        "stages": table,
        "in_process_total_wall_ms": round(sum(r["wall_ms"] for r in total), 1),
        "in_process_total_cpu_ms": round(sum(r["cpu_ms"] for r in total), 1),
        "networks_wall_ms": round(sum(r["wall_ms"] for r in table if r["stage"] in model_stages), 1),
        "cprofile_top": profile_text,
    }


def print_table(result: dict[str, Any]) -> None:
    print(f"\n{result['size']} ({result['rows']} x {result['columns']}, {result['file_bytes'] / 1e6:.1f} MB), "
          f"median of {result['rounds']} rounds x {result['files']} files")
    for row in result["stages"]:
        print(f"  {row['stage']:<48} {row['wall_ms']:>9.1f} ms wall {row['cpu_ms']:>9.1f} ms CPU")
    print(f"  {'in-process total':<48} {result['in_process_total_wall_ms']:>9.1f} ms wall "
          f"{result['in_process_total_cpu_ms']:>9.1f} ms CPU")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="cxr,small", help="cxr (2500 x 2048), small (256 x 256)")
    parser.add_argument("--files", type=int, default=3, help="files per size (each its own study)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds after one warm-up")
    parser.add_argument("--network", action="store_true", help="also receive and outbox C-STORE on loopback (DCMTK)")
    parser.add_argument("--cprofile", type=int, default=0, help="print cProfile's top N functions of one round")
    parser.add_argument("--runtime", default="pytorch", help="[inference] runtime of the U-Net and the classifier")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "bench-out" / "profile")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    work = args.work or Path(tempfile.mkdtemp(prefix="profile-study-"))
    work.mkdir(parents=True, exist_ok=True)
    facts = machine_facts(work)
    analyser = BundleAnalyser(REPO / "bundle", "cpu", runtime=args.runtime, runtime_cache=work / "runtime")
    try:
        results = [profile_size(size, args, analyser, work / size) for size in args.sizes.split(",")]
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    out = {"machine": facts, "cpu_busy_after": round(cpu_busy_fraction(), 3),
           "threads": args.threads, "runtime": analyser.runtime, "results": results}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "profile_study.json").write_text(json.dumps(out, indent=2))
    print(f"{facts['cores']} cores, {facts['cpu']}, CPUs {facts['cpu_busy_before_start']:.0%} busy before, "
          f"{out['cpu_busy_after']:.0%} after; runtime {analyser.runtime}, {args.threads} threads")
    for result in results:
        print_table(result)
        if result["cprofile_top"]:
            print(result["cprofile_top"])
    return out


if __name__ == "__main__":
    main()

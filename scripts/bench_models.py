"""The model floor per network runtime: PyTorch eager against ONNX Runtime and OpenVINO, in one run.

The *model floor* is what ``scripts/bench_e2e.py`` calls it: the bundle's preprocessing (decode,
crop, pad, U-Net lung channel, resize, CLAHE) and classifier on detector-size DX files in one
process, no network, spool or report (``BundleAnalyser.prepare`` + ``predict``). Here it is
timed for each runtime of ``[inference] runtime`` on the same files, at each batch size, the
runtimes' order rotated from round to round so that drift and other load hit them alike.
The networks alone are timed too (U-Net at its 256 x 256 input, the classifier at 224 x 224,
ms per image), and the largest differences from PyTorch on the same files are recorded.

``--before-peer`` adds the floor as it was at the issue's start, measured in the same run:
PyTorch with the display chain applied pixel by pixel
(:func:`monai_app.data.dicom_image.display_table` switched off for that run) and, with
Grad-CAM, MONAI's full Grad-CAM pass after the classification
(:class:`monai_app.relevance.GradCamRelevance`, a second pass through the ResNet50) instead of
the map from the classification pass's own feature maps. The cases' order turns from round
to round as the runtimes' does, so that no case always runs first.

Usage (from the repository root)::

    python -m scripts.bench_models --n 8 --rounds 5 --batch-sizes 1,4 --threads 2 --out bench-out/models

Writes ``<out>/bench_models.json`` (figures, machine facts, CPU load before and after); prints
files/s and the ratios to PyTorch. No patient data (the corpus is synthetic).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from monai_app.data import dicom_image
from monai_app.inference import BundleAnalyser, PreparedImage
from monai_app.relevance import GradCamRelevance
from monai_app.runtime import installed
from monai_app.transforms.classifier_input import LungProbabilityd
from scripts import dicom_corpus
from scripts.bench_ingest import cpu_busy_fraction, machine_facts

REPO = Path(__file__).resolve().parents[1]


BEFORE = "pytorch-before"
"""The PyTorch analyser as at the issue's start: the display chain per pixel, Grad-CAM as a second full pass."""


@contextlib.contextmanager
def display_chain_per_pixel() -> Iterator[None]:
    """Within: :func:`~monai_app.data.dicom_image.dicom_to_display` maps every pixel (no table)."""
    table = dicom_image.display_table
    dicom_image.display_table = lambda *args: None
    try:
        yield
    finally:
        dicom_image.display_table = table


def floor_seconds(analyser: BundleAnalyser, files: list[Path], batch_size: int, relevance: bool,
                  full_grad_cam: GradCamRelevance | None = None) -> float:
    """Seconds for prepare + predict of every file, ``batch_size`` at a time (as the node's worker).

    With ``full_grad_cam`` (the :data:`BEFORE` peer) the display chain runs per pixel and the
    relevance maps come from that second full pass, as before.
    """
    with display_chain_per_pixel() if full_grad_cam is not None else contextlib.nullcontext():
        started = time.perf_counter()
        for i in range(0, len(files), batch_size):
            prepared = [analyser.prepare(p) for p in files[i:i + batch_size]]
            if full_grad_cam is None:
                analyser.predict(prepared, relevance=relevance)
                continue
            analyser.predict(prepared)
            if relevance:
                full_grad_cam(torch.stack([p.tensor for p in prepared]))
        return time.perf_counter() - started


def median_ms(call: Callable[[], object], repeats: int) -> float:
    call()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def network_times(analyser: BundleAnalyser, batch_sizes: list[int], repeats: int) -> dict[str, float]:
    """ms per image of the U-Net forward and of the classifier's embed + logits, random inputs."""
    lung = next(t for t in analyser.preprocessing.transforms if isinstance(t, LungProbabilityd))
    out: dict[str, float] = {}
    for b in batch_sizes:
        lung_input = torch.rand(b, 1, 256, 256)
        images = [torch.rand(3, 224, 224) for _ in range(b)]
        prepared = [PreparedImage(image, lung_fraction=0.5) for image in images]

        def run_lung() -> None:
            with torch.inference_mode():
                lung.network(lung_input)  # noqa: B023 (called at once)

        out[f"unet_batch_{b}_ms_per_image"] = round(median_ms(run_lung, repeats) / b, 2)
        out[f"classifier_batch_{b}_ms_per_image"] = round(
            median_ms(lambda: analyser.predict(prepared), repeats) / b, 2)  # noqa: B023 (called at once)
    return out


def differences(analysers: dict[str, BundleAnalyser], files: list[Path]) -> dict[str, dict[str, float]]:
    """Largest differences from PyTorch on ``files``: lung probability, COVID-19 probability, embedding cosine."""
    results: dict[str, Any] = {}
    for name, analyser in analysers.items():
        prepared = [analyser.prepare(p) for p in files]
        results[name] = (prepared, analyser.predict(prepared))
    ref_prepared, ref = results["pytorch"]
    out = {}
    for name in analysers:
        if name == "pytorch":
            continue
        prepared, found = results[name]
        out[name] = {
            "lung_probability_max_abs_diff": float(max(np.abs(a.lung_probability - b.lung_probability).max()
                                                       for a, b in zip(ref_prepared, prepared))),
            "covid_probability_max_abs_diff": float(max(abs(a.probability - b.probability) for a, b in zip(ref, found))),
            "embedding_min_cosine": float(min(
                a.embedding @ b.embedding / (np.linalg.norm(a.embedding) * np.linalg.norm(b.embedding))
                for a, b in zip(ref, found))),
        }
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8, help="detector-size DX files (2500 x 2048)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-sizes", default="1,4")
    parser.add_argument("--runtimes", default="pytorch,onnxruntime,openvino")
    parser.add_argument("--relevance", action="store_true", help="also the floor with Grad-CAM (always PyTorch)")
    parser.add_argument("--before-peer", action="store_true",
                        help=f"also {BEFORE}: PyTorch as at the issue's start (display chain per pixel, full Grad-CAM pass)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10, help="calls per network timing")
    parser.add_argument("--out", type=Path, default=REPO / "bench-out" / "models")
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-models-"))
    work.mkdir(parents=True, exist_ok=True)
    facts = machine_facts(work)
    files = dicom_corpus.build_cxr_sized_corpus(work / "cxr", args.n, images_per_study=1)
    names = [r for r in args.runtimes.split(",") if installed(r)]
    if "pytorch" not in names:
        names.insert(0, "pytorch")
    analysers = {name: BundleAnalyser(REPO / "bundle", "cpu", load_index=False, runtime=name,
                                      runtime_cache=work / "runtime") for name in names}
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    cases = [(b, rel) for rel in ((False, True) if args.relevance else (False,)) for b in batch_sizes]
    seconds: dict[str, list[float]] = {}
    timed = names + ([BEFORE] if args.before_peer else [])
    full_grad_cam = GradCamRelevance(analysers["pytorch"].network) if args.before_peer else None
    for name in timed:  # warm-up: first calls allocate and compile
        for relevance in {rel for _, rel in cases}:
            floor_seconds(analysers["pytorch" if name == BEFORE else name], files[:max(batch_sizes)], max(batch_sizes),
                          relevance, full_grad_cam if name == BEFORE else None)
    for round_ in range(args.rounds):
        order = timed[round_ % len(timed):] + timed[:round_ % len(timed)]
        for name in order:
            analyser = analysers["pytorch" if name == BEFORE else name]
            for b, rel in cases[round_ % len(cases):] + cases[:round_ % len(cases)]:
                key = f"{name} batch {b}{' + Grad-CAM' if rel else ''}"
                seconds.setdefault(key, []).append(
                    floor_seconds(analyser, files, b, rel, full_grad_cam if name == BEFORE else None))
        print(f"round {round_ + 1}/{args.rounds} done", flush=True)
    floors: dict[str, dict[str, Any]] = {key: {"median_seconds": round(statistics.median(s), 3),
                    "files_per_second": round(len(files) / statistics.median(s), 3),
                    "rounds_files_per_second": [round(len(files) / x, 3) for x in s]} for key, s in seconds.items()}
    for key, floor in floors.items():
        name, rest = key.split(" ", 1)
        floor["over_pytorch"] = round(floor["files_per_second"] / floors[f"pytorch {rest}"]["files_per_second"], 2)
        if args.before_peer:
            floor["over_before"] = round(floor["files_per_second"] / floors[f"{BEFORE} {rest}"]["files_per_second"], 2)
    networks = {name: network_times(a, batch_sizes, args.repeats) for name, a in analysers.items()}
    diffs = differences(analysers, files)
    out = {"machine": facts, "cpu_busy_after": round(cpu_busy_fraction(), 3), "threads": args.threads,
           "files": len(files), "file_shape": [2500, 2048], "rounds": args.rounds,
           "runtimes": {name: a.runtime for name, a in analysers.items()},
           "model_floor": floors, "networks_ms_per_image": networks, "differences_from_pytorch": diffs,
           "versions": {"torch": torch.__version__, **{m: __import__(m).__version__ for m in names if m != "pytorch"}}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_models.json").write_text(json.dumps(out, indent=2))
    print(f"{facts['cores']} cores, {facts['cpu']}, CPUs {facts['cpu_busy_before_start']:.0%} busy before, "
          f"{out['cpu_busy_after']:.0%} after, load {facts['load_average_1_5_15_min']}; {args.threads} threads")
    for key, floor in floors.items():
        print(f"model floor {key:<40} {floor['files_per_second']:7.2f} files/s  x{floor['over_pytorch']:.2f} of PyTorch"
              + (f"  x{floor['over_before']:.2f} of {BEFORE}" if args.before_peer else ""))
    for name, times in networks.items():
        print(f"networks {name:<12} " + "  ".join(f"{k} {v}" for k, v in times.items()))
    print(json.dumps(diffs))
    return out


if __name__ == "__main__":
    main()

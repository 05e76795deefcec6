"""The display chain of a DICOM image (Modality LUT, VOI, MONOCHROME1): per stored value against per pixel.

Times the two ways :mod:`monai_app.data.dicom_image` can map decoded pixels into the common
intensity space, on the same files in one run, the order alternating from round to round:
``per pixel`` (:func:`~monai_app.data.dicom_image.display_per_pixel`, the chain on every pixel)
and ``table`` (:func:`~monai_app.data.dicom_image.display_table`, the chain on each stored value
once, then one lookup; what :func:`~monai_app.data.dicom_image.dicom_to_display` does for integer
pixels). The peer is the decode itself (``pixel_array``), which both need first. Each file is
also checked to give the same image both ways, bit for bit.

Files: detector-size DX (2500 x 2048, 12 bits) with their Window Center/Width, the same without
any VOI (the percentile window, which needs the image's histogram), and the real CR/DX files of
the shared data that pydicom decodes.

Usage (from the repository root)::

    python -m scripts.bench_decode --n 4 --rounds 7 --out bench-out/decode

Writes ``<out>/bench_decode.json``; prints medians in ms and the ratios. No patient data.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from monai_app.data.dicom_image import DEFAULT_PERCENTILES, decode_pixels, display_per_pixel, display_table
from scripts import dicom_corpus
from scripts.bench_ingest import cpu_busy_fraction, machine_facts
from testkit.shared_data import shared_data_dir

UNDECODABLE = ("DX_chest_Canon_966.dcm", "RG2_JPLY.dcm")


def by_table(stored: np.ndarray, ds: Dataset) -> np.ndarray:
    lookup = display_table(stored, ds, DEFAULT_PERCENTILES)
    assert lookup is not None, "integer pixels"
    table, codes = lookup
    return table[codes]


def by_pixel(stored: np.ndarray, ds: Dataset) -> np.ndarray:
    return display_per_pixel(stored, ds, DEFAULT_PERCENTILES)


def file_sets(work: Path, n: int) -> dict[str, list[Dataset]]:
    """Datasets by kind, read once (the reading is not what is measured)."""
    windowed: list[Dataset] = [pydicom.dcmread(p) for p in dicom_corpus.build_cxr_sized_corpus(work / "cxr", n, images_per_study=1)]
    no_voi: list[Dataset] = []
    for path in sorted((work / "cxr").glob("*.dcm")):
        ds = pydicom.dcmread(path)
        del ds.WindowCenter, ds.WindowWidth
        no_voi.append(ds)
    shared = shared_data_dir() / "dicom"
    real: list[Dataset] = [pydicom.dcmread(p, force=True) for p in sorted(shared.rglob("*.dcm")) if p.name not in UNDECODABLE]
    return {"detector-size, window": windowed, "detector-size, percentile window": no_voi, "real CR/DX (shared)": real}


def seconds(call: Callable[..., object], *args: object) -> float:
    started = time.perf_counter()
    call(*args)
    return time.perf_counter() - started


def measure(datasets: list[Dataset], rounds: int) -> dict[str, Any]:
    """Median ms per file of the decode, the per-pixel chain and the table chain."""
    stored = [decode_pixels(ds) for ds in datasets]
    for s, ds in zip(stored, datasets):
        if not np.array_equal(by_table(s, ds), by_pixel(s, ds)):
            raise AssertionError("the table and the per-pixel chain differ")
    times: dict[str, list[float]] = {"decode": [], "per pixel": [], "table": []}
    for r in range(rounds):
        for i, ds in enumerate(datasets):
            ds._pixel_array = None  # decode again each round
            times["decode"].append(seconds(decode_pixels, ds))
            ways = [("per pixel", by_pixel), ("table", by_table)]
            for name, way in ways if (r + i) % 2 == 0 else ways[::-1]:
                times[name].append(seconds(way, stored[i], ds))
    medians = {k: 1000 * statistics.median(v) for k, v in times.items()}
    return {"files": len(datasets), "shapes": sorted({tuple(int(x) for x in s.shape) for s in stored}),
            "ms": medians, "per pixel / table": medians["per pixel"] / medians["table"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=4, help="detector-size DX files (2500 x 2048)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path("bench-out/decode"))
    args = parser.parse_args(argv)
    busy_before = cpu_busy_fraction()
    with tempfile.TemporaryDirectory(prefix="bench_decode_") as tmp:
        results = {kind: measure(sets, args.rounds) for kind, sets in file_sets(Path(tmp), args.n).items()}
        machine = machine_facts(Path(tmp))
    out = {"machine": machine, "cpu_busy_before": busy_before, "cpu_busy_after": cpu_busy_fraction(),
           "rounds": args.rounds, "results": results}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_decode.json").write_text(json.dumps(out, indent=2))
    print(f"CPUs busy before / after: {busy_before:.0%} / {out['cpu_busy_after']:.0%}")
    print("| files | decode (pixel_array) ms | chain per pixel ms | chain by table ms | per pixel / table |")
    print("| --- | --- | --- | --- | --- |")
    for kind, r in results.items():
        ms = r["ms"]
        print(f"| {kind} ({r['files']}) | {ms['decode']:.1f} | {ms['per pixel']:.1f} | {ms['table']:.1f} "
              f"| {r['per pixel / table']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

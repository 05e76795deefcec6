"""Measure what Grad-CAM adds to the classifier's ``predict``, per image, at a few batch sizes.

One process, the repository's bundle, one real chest DICOM of the shared data; each batch
size is timed as the median of ``--repeats`` calls of ``predict`` without and with
``relevance=True`` (after one warm-up call of each), interleaved so that drift hits both.
The peer is the full Grad-CAM pass the node made before (:class:`~monai_app.relevance.GradCamRelevance`:
MONAI's Grad-CAM, a second forward pass through the ResNet50), timed in the same loop, and the
largest difference between its maps and the node's.

Usage (from the repo root)::

    python -m scripts.bench_relevance --batch-sizes 1,4 --repeats 5 --device cpu

Prints one JSON object; no patient data.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from monai_app.inference import BundleAnalyser
from monai_app.labels import POSITIVE_CLASS
from monai_app.relevance import GradCamRelevance
from testkit.bundle import BUNDLE
from testkit.shared_data import shared_data_dir

DICOM = "dicom/pydicom-data/RG1_J2KI.dcm"
"""A real CR chest PA (NEMA WG04 RG1) of the shared data."""


def _seconds(call: object) -> float:
    start = time.perf_counter()
    call()  # type: ignore[operator]
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict[str, object]:
    """Run the measurement and print it (milliseconds per image)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", default="1,4")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    analyser = BundleAnalyser(BUNDLE, args.device, load_index=False)
    prepared = analyser.prepare(Path(shared_data_dir()) / DICOM)
    reference = GradCamRelevance(analyser.network, POSITIVE_CLASS)
    results: dict[str, object] = {"device": str(analyser.device), "threads": args.threads, "repeats": args.repeats}
    for size in (int(s) for s in args.batch_sizes.split(",")):
        batch = [prepared] * size
        inputs = torch.stack([p.tensor for p in batch]).to(analyser.device)
        plain, with_map, full_pass = [], [], []
        for repeat in range(args.repeats + 1):
            t_plain = _seconds(lambda: analyser.predict(batch))  # noqa: B023 (called at once)
            t_map = _seconds(lambda: analyser.predict(batch, relevance=True))  # noqa: B023
            t_full = _seconds(lambda: reference(inputs))  # noqa: B023
            if repeat:  # the first of each is a warm-up
                plain.append(t_plain)
                with_map.append(t_map)
                full_pass.append(t_full)
        ms_plain = 1000 * statistics.median(plain) / size
        ms_map = 1000 * statistics.median(with_map) / size
        ms_full = 1000 * statistics.median(full_pass) / size
        node_maps = np.stack([np.asarray(p.relevance) for p in analyser.predict(batch, relevance=True)])
        results[f"batch_{size}"] = {
            "predict_ms_per_image": round(ms_plain, 1),
            "predict_with_relevance_ms_per_image": round(ms_map, 1),
            "added_ms_per_image": round(ms_map - ms_plain, 1),
            "full_grad_cam_pass_ms_per_image (before)": round(ms_full, 1),
            "max_abs_difference_from_the_full_pass": float(np.abs(node_maps - reference(inputs)).max()),
        }
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()

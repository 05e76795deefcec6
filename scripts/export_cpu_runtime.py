"""Export the bundle's U-Net and classifier to ONNX for the node's CPU runtimes, ahead of the first start.

The node does the same on its first start when the files are missing (:mod:`monai_app.runtime`);
run this at installation to keep that off the first study, or to fill a shared cache. The files
are deterministic functions of the shipped weights and are named by their SHA-256.

Usage (from the repository root)::

    python -m scripts.export_cpu_runtime                       # into $CXR_RUNTIME_CACHE or ~/.cache/cxr-node/runtime
    python -m scripts.export_cpu_runtime --out /var/cache/cxr-node/runtime --runtime openvino

Prints the files and the runtime that loads them.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from monai_app.inference import BundleAnalyser
from monai_app.runtime import RUNTIMES, default_cache_dir

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=REPO / "bundle")
    parser.add_argument("--out", type=Path, default=None, help="cache folder (default: the node's)")
    parser.add_argument("--runtime", default="auto", choices=[r for r in RUNTIMES if r != "pytorch"],
                        help="load the export with this runtime as a check")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cache = args.out or default_cache_dir()
    analyser = BundleAnalyser(args.bundle, "cpu", load_index=False, load_appearance=False, runtime=args.runtime,
                              runtime_cache=cache)
    for path in sorted(cache.glob("*.onnx")):
        print(f"{path} {path.stat().st_size / 1e6:.1f} MB")
    print(f"runtime: {analyser.runtime}")
    return 0 if analyser.runtime != "pytorch" else 1


if __name__ == "__main__":
    raise SystemExit(main())

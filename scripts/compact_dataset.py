"""Write a reduced copy of a manifest's images, for training where the full set cannot travel.

The GPU machines lent to this project take at most 64 MiB of files per call, and the shared
data is 184 MB. The classifier sees its images at 224 x 224 (the U-Net at 256 x 256), so a
copy whose long side is a little larger loses nothing the networks use. Each image is read
with the project's own reader (so 16-bit PNGs are scaled as in training), shrunk with area
interpolation and saved as 8-bit JPEG; the manifest is copied with the new paths and without
mask columns (the classifier does not use masks). Patient IDs stay as in the input manifest:
the copy is for training machines, not for publication.

Usage::

    python -m scripts.compact_dataset --dataset-dir ../shared/data --output-dir .devdata \
        --splits train val test --long-side 448
"""

from __future__ import annotations

import argparse
import csv
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from monai_app.data.manifest import read_manifest
from monai_app.data.raster_image import read_raster_image

logger = logging.getLogger(__name__)


def shrink(image: np.ndarray, long_side: int) -> Image.Image:
    """An 8-bit grey PIL image of ``image`` (float in [0, 1]) with its long side at most ``long_side``."""
    grey = Image.fromarray(np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8), mode="L")
    scale = long_side / max(grey.size)
    if scale < 1.0:
        size = (max(1, round(grey.width * scale)), max(1, round(grey.height * scale)))
        grey = grey.resize(size, Image.Resampling.BOX)
    return grey


def compact_copy(
    dataset_dir: Path, output_dir: Path, splits: Sequence[str], long_side: int, quality: int
) -> int:
    """Write the reduced images and ``manifest.csv`` of ``splits``; return the number of images."""
    rows = [r for r in read_manifest(dataset_dir / "manifest.csv") if r["split"] in splits]
    kept = []
    for row in rows:
        relative = Path(row["image_path"]).with_suffix(".jpg")
        target = output_dir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shrink(read_raster_image(dataset_dir / row["image_path"]), long_side).save(
            target, quality=quality
        )
        kept.append({**row, "image_path": relative.as_posix(), "mask_path": "", "mask_source": ""})
    with (output_dir / "manifest.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(kept[0]))
        writer.writeheader()
        writer.writerows(kept)
    return len(kept)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument("--splits", nargs="+", default=["train", "val", "test"])
    parser.add_argument("--long-side", type=int, default=448, help="pixels (default 448)")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality (default 90)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    count = compact_copy(args.dataset_dir, args.output_dir, args.splits, args.long_side, args.quality)
    size = sum(p.stat().st_size for p in args.output_dir.rglob("*") if p.is_file())
    logger.info("%d images, %.1f MiB in %s", count, size / 2**20, args.output_dir)


if __name__ == "__main__":
    main()

"""Fit the frontal-chest appearance model of the bundle on the shared training split.

Runs the shipped bundle's preprocessing (loader, crop, pad, U-Net lung channel, resize,
CLAHE) over every train- and val-split image of the shared manifest, fits
:func:`monai_app.transforms.chest_appearance.fit_appearance` on the train split, sets the
limit from the train and val residuals, and writes ``bundle/models/chest_appearance.npz``.
The test split is left for ``scripts/measure_applicability.py``. Run from the repository root::

    python scripts/fit_chest_appearance.py [--data ../shared/data] [--out bundle/models/chest_appearance.npz]
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from monai_app.inference import APPEARANCE_MODEL, IMAGE_CHANNEL, LUNG_CHANNEL, BundleAnalyser
from monai_app.transforms.chest_appearance import appearance_vector, fit_appearance, residual_limit
from testkit.shared_data import REPO_ROOT, shared_data_dir


def split_images(data: Path, splits: tuple[str, ...]) -> list[Path]:
    """Images of the manifest rows in ``splits`` (all are frontal chest radiographs)."""
    with (data / "manifest.csv").open(newline="") as handle:
        return [data / row["image_path"] for row in csv.DictReader(handle) if row["split"] in splits]


def vectors(analyser: BundleAnalyser, paths: list[Path]) -> np.ndarray:
    """Appearance vectors of ``paths`` after the bundle's preprocessing."""
    out = []
    for path in paths:
        tensor = analyser.prepare(path).tensor.numpy()
        out.append(appearance_vector(tensor[IMAGE_CHANNEL], tensor[LUNG_CHANNEL]))
    return np.stack(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="shared data folder")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bundle" / APPEARANCE_MODEL)
    args = parser.parse_args(argv)
    data = args.data or shared_data_dir()
    analyser = BundleAnalyser(REPO_ROOT / "bundle", "cpu", load_index=False, load_appearance=False)
    train = vectors(analyser, split_images(data, ("train",)))
    val = vectors(analyser, split_images(data, ("val",)))
    model = fit_appearance(train)
    residuals = [model.residual_of(v) for v in np.concatenate([train, val])]
    model = fit_appearance(train, limit=residual_limit(residuals))
    model.save(args.out)
    print(f"fitted on {len(train)} train images; largest residual train+val ({len(residuals)}) "
          f"{max(residuals):.1f}; limit {model.limit:.1f}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

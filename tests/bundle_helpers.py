"""Helpers for running the bundle's configs in tests."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser, ConfigWorkflow
from PIL import Image

from tests.shared_data import REPO_ROOT

BUNDLE = REPO_ROOT / "bundle"
CONFIGS = BUNDLE / "configs"
TRAIN = str(CONFIGS / "train.yaml")
EVALUATE = str(CONFIGS / "evaluate.yaml")
INFERENCE = str(CONFIGS / "inference.yaml")
METADATA = str(CONFIGS / "metadata.json")


def workflow(config: str | list[str], workflow_type: str, run_id: str, **override: Any) -> ConfigWorkflow:
    """A ``ConfigWorkflow`` of the bundle with ``bundle_root`` pointing at the repository."""
    return ConfigWorkflow(
        config_file=config,
        meta_file=METADATA,
        logging_file=False,
        workflow_type=workflow_type,
        run_id=run_id,
        bundle_root=str(BUNDLE),
        **override,
    )


def parser(config: str | list[str], **override: Any) -> ConfigParser:
    """A parsed bundle config (nothing instantiated until asked), with overrides."""
    p = ConfigParser()
    p.read_config(config)
    p.read_meta(METADATA)
    p.update({"bundle_root": str(BUNDLE), **override})
    return p


def write_tiny_dataset(shared: Path, target: Path, size: int = 64) -> Path:
    """Copy a few real image/mask pairs per split, resized to ``size``, with a manifest.

    Returns the manifest path; the manifest's paths are relative to ``target``.
    """
    with (shared / "manifest.csv").open(newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["mask_path"]]
    wanted = {"train": 4, "val": 2, "test": 2}
    chosen = []
    for split, count in wanted.items():
        chosen += [r for r in rows if r["split"] == split][:count]
    chosen.append(next(r for r in rows if r["split"] == "train" and "lungvae" in r["mask_path"]))
    out_rows = []
    for row in chosen:
        image = Image.open(shared / row["image_path"]).convert("L").resize((size, size), Image.BILINEAR)
        mask = Image.open(shared / row["mask_path"]).convert("L").resize((size, size), Image.NEAREST)
        stem = Path(row["image_path"]).stem
        image_rel = f"images/{stem}.png"
        mask_rel = f"masks/{Path(row['mask_path']).parent.name}/{stem}.png"
        for rel, picture in ((image_rel, image), (mask_rel, mask)):
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            picture.save(target / rel)
        out_rows.append({**row, "image_path": image_rel, "mask_path": mask_rel})
    manifest = target / "manifest.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(out_rows[0]))
        writer.writeheader()
        writer.writerows(out_rows)
    return manifest


"""The bundle in tests: its config paths, parsed configs and workflows, and tiny real data sets."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser, ConfigWorkflow
from PIL import Image

from testkit.shared_data import REPO_ROOT

BUNDLE = REPO_ROOT / "bundle"
SHIPPED_UNET = BUNDLE / "models" / "lung_unet.pt"
"""The bundle's own lung U-Net weights (what a stage without lung masks keeps)."""
CONFIGS = BUNDLE / "configs"


def _stack(*names: str) -> list[str]:
    """Config files stacked in this order, as ``--config_file "[...]"`` lists them."""
    return [str(CONFIGS / f"{name}.yaml") for name in names]


# One stacking per stage, as bundle/docs/README.md documents the commands.
COMMON = _stack("common")
SEGMENTATION = _stack("common", "train_segmentation")
PRETRAIN = _stack("common", "pretrain")
CLASSIFIER = _stack("common", "train_classifier")
BUILD_INDEX = _stack("common", "build_index")
TRAIN = _stack("common", "train_segmentation", "pretrain", "train_classifier", "build_index", "train")
"""Every training stage: ``run training`` (and any one stage's run key)."""
EVALUATE = _stack("common", "train_segmentation", "train_classifier", "build_index", "evaluate")
"""All evaluations (``evaluating``, ``evaluating_classifier``, ``calibrating_threshold``, ``evaluating_retrieval``)."""
CROSS_VALIDATE = _stack("common", "train_classifier", "cross_validate")
"""``cross_validating``: the classifier recipe retrained on k patient-grouped folds, with its ablation and the kNN vote."""
CALIBRATE = _stack("common", "calibrate")
"""``calibrating``: the probability calibration of the shipped classifier."""
INFERENCE = _stack("common", "inference")
INFERENCE_CLASSIFIER = _stack("common", "inference_classifier")
STAGE_FILES = sorted(CONFIGS.glob("*.yaml"))
METADATA = str(CONFIGS / "metadata.json")
CLASSIFIER_PROPERTIES = str(CONFIGS / "classifier_properties.json")

CLASSIFIER_TINY: dict[str, Any] = {
    "cls_spatial_size": [64, 64], "cls_lung_spatial_size": [64, 64], "cls_num_epochs": 1,
    "cls_batch_size": 4, "cls_hidden_dim": 32, "cls_embedding_dim": 8, "num_workers": 0,
    "ssl_num_epochs": 1, "ssl_batch_size": 4, "ssl_hidden_dim": 16, "ssl_projection_dim": 8,
}
"""Overrides that make the classifier's and pretraining's runs tiny (with :func:`write_tiny_classification_dataset`)."""


def workflow(
    config: str | list[str], workflow_type: str, run_id: str, properties_path: str | None = None, **override: Any
) -> ConfigWorkflow:
    """A ``ConfigWorkflow`` of the bundle with ``bundle_root`` pointing at the repository.

    ``properties_path`` names a bundle properties file (e.g. the classifier's, whose run keys
    use the ``cls_*`` IDs); ``None`` uses MONAI's default properties.
    """
    return ConfigWorkflow(
        properties_path=properties_path,
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
        image = Image.open(shared / row["image_path"]).convert("L").resize((size, size), Image.Resampling.BILINEAR)
        mask = Image.open(shared / row["mask_path"]).convert("L").resize((size, size), Image.Resampling.NEAREST)
        stem = Path(row["image_path"]).stem
        image_rel = f"images/{stem}.png"
        mask_rel = f"masks/{Path(row['mask_path']).parent.name}/{stem}.png"
        for rel, picture in ((image_rel, image), (mask_rel, mask)):
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            picture.save(target / rel)
        out_rows.append({**row, "image_path": image_rel, "mask_path": mask_rel})
    return _write_manifest(target, out_rows)


def write_tiny_classification_dataset(shared: Path, target: Path, size: int = 64) -> Path:
    """Copy a few real labelled images per split and source, resized to ``size``, with a manifest.

    Each split gets ieee8023 COVID-19 images, NIH negatives and Actualmed images of both labels
    (a source with both labels, for ``within_source`` and the checkpoint choice); train also gets one ``unknown`` row,
    which the classifier must skip. Returns the manifest path (paths relative to ``target``).
    """
    with (shared / "manifest.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    wanted = {  # (split, source, label): count
        ("train", "ieee8023", "covid"): 3, ("train", "nih_cxr14", "non_covid"): 3,
        ("train", "actualmed", "covid"): 1, ("train", "actualmed", "non_covid"): 1,
        ("train", "actualmed", "unknown"): 1,
        ("val", "ieee8023", "covid"): 2, ("val", "nih_cxr14", "non_covid"): 2,
        ("val", "actualmed", "covid"): 1, ("val", "actualmed", "non_covid"): 1,
        ("test", "ieee8023", "covid"): 2, ("test", "nih_cxr14", "non_covid"): 2,
        ("test", "actualmed", "covid"): 1, ("test", "actualmed", "non_covid"): 1,
    }
    chosen = []
    for (split, source, label), count in wanted.items():
        chosen += [r for r in rows if (r["split"], r["source"], r["label"]) == (split, source, label)][:count]
    out_rows = []
    for row in chosen:
        image = Image.open(shared / row["image_path"]).convert("L").resize((size, size), Image.Resampling.BILINEAR)
        image_rel = f"images/{row['source']}/{Path(row['image_path']).stem}.png"
        (target / image_rel).parent.mkdir(parents=True, exist_ok=True)
        image.save(target / image_rel)
        out_rows.append({**row, "image_path": image_rel, "mask_path": ""})
    return _write_manifest(target, out_rows)


def write_tiny_full_dataset(shared: Path, target: Path, size: int = 64) -> Path:
    """Both tiny data sets in one folder and manifest: masks for the U-Net, labels for the classifier."""
    write_tiny_dataset(shared, target, size)
    with (target / "manifest.csv").open(newline="") as handle:
        segmentation_rows = list(csv.DictReader(handle))
    write_tiny_classification_dataset(shared, target, size)
    with (target / "manifest.csv").open(newline="") as handle:
        classification_rows = list(csv.DictReader(handle))
    kept = {r["image_path"] for r in classification_rows}
    return _write_manifest(target, classification_rows + [r for r in segmentation_rows if r["image_path"] not in kept])


def _write_manifest(target: Path, rows: list[dict[str, str]]) -> Path:
    """Write ``rows`` as ``target/manifest.csv`` (the shared manifest's format) and return its path."""
    manifest = target / "manifest.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def build_similar_index(images: list[tuple[Path, str]], target: Path) -> Path:
    """The bundle's ``build_index`` (shipped classifier) on DICOM ``images`` of ``(path, label)``; returns the index folder.

    The index holds each file's own Study, Series and SOP Instance UIDs (read from its header),
    so a test that also loads the files into a PACS can retrieve what the node reports.
    """
    dataset_dir = target / "reference_set"
    dataset_dir.mkdir(parents=True)
    rows = []
    for number, (path, label) in enumerate(images):
        relative = f"images/{number}.dcm"
        (dataset_dir / relative).parent.mkdir(exist_ok=True)
        (dataset_dir / relative).write_bytes(path.read_bytes())
        rows.append({"image_path": relative, "patient_id": f"prior-{number}", "label": label, "mask_path": "",
                     "split": "train", "source": "test"})
    manifest = _write_manifest(dataset_dir, rows)
    index_dir = target / "index"
    wf = workflow(
        BUILD_INDEX, "train", "build_index", CLASSIFIER_PROPERTIES, dataset_dir=str(dataset_dir),
        manifest=str(manifest), cls_index_dir=str(index_dir), cls_index_model_file="@cls_model_file",
        cls_index_salt="test-salt",
    )
    wf.initialize()
    wf.run()
    wf.finalize()
    return index_dir

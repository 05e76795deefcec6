"""Evaluation report of the lung segmentation: ``metrics.json`` and per-source figures."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

from monai_app.data.masks import IGNORE
from monai_app.metrics import bootstrap_ci, masked_dice

logger = logging.getLogger(__name__)


def update_metrics_file(path: str | Path, section: str, values: dict[str, object]) -> None:
    """Set ``section`` of a JSON metrics file, keeping the other sections (atomic write).

    Parameters
    ----------
    path : str or pathlib.Path
        The ``metrics.json`` file; created if absent.
    section : str
        Top-level key (``"segmentation"``; the classifier adds its own).
    values : dict
        The section's content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    content = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    content[section] = values
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(content, handle, indent=2)
    os.replace(tmp, path)


def summarise_dice(
    dice: list[float], patients: list[str], n_resamples: int = 2000, seed: int = 0
) -> dict[str, object]:
    """Mean, patient-clustered bootstrap 95 % CI, and count of per-image Dice values."""
    low, high = bootstrap_ci(dice, patients, n_resamples=n_resamples, seed=seed)
    return {
        "dice_mean": float(np.mean(dice)),
        "dice_ci95": [low, high],
        "dice_median": float(np.median(dice)),
        "dice_min": float(np.min(dice)),
        "n": len(dice),
        "n_patients": len(set(patients)),
    }


def plot_dice_by_source(per_source: dict[str, list[float]], path: str | Path) -> None:
    """Save a strip/box plot of per-image Dice, one column per source."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    names = sorted(per_source)
    fig, ax = plt.subplots(figsize=(max(4.5, 1.8 + 1.4 * len(names)), 4))
    ax.boxplot([per_source[n] for n in names], showfliers=False)
    for i, name in enumerate(names, start=1):
        jitter = np.random.default_rng(i).uniform(-0.12, 0.12, len(per_source[name]))
        ax.plot(i + jitter, per_source[name], "o", alpha=0.5, markersize=3)
    ax.set_xticks(range(1, len(names) + 1), [f"{n}\n(n={len(per_source[n])})" for n in names])
    ax.set_ylabel("Dice (ignore pixels excluded)")
    ax.set_title("Lung segmentation Dice per source")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


class PerImageReport:
    """Base of evaluator handlers that collect one row per image and write a report at the end.

    Subclasses implement ``_collect`` (add rows from the current iteration) and ``_write``.
    """

    rows: list[dict[str, object]]

    def attach(self, engine: Engine) -> None:
        """Register on ``engine`` (the evaluator)."""
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self.rows = []

    def _collect(self, engine: Engine) -> None:
        raise NotImplementedError

    def _write(self, engine: Engine) -> None:
        raise NotImplementedError


class SegmentationReport(PerImageReport):
    """Collect per-image Dice during evaluation, then write ``metrics.json`` and figures.

    Writes the ``"segmentation"`` section ``{"dice_mean", "dice_ci95", "n", ...,
    "by_source": {...}}`` of ``output_dir/metrics.json``, a per-image CSV and
    ``segmentation_dice_by_source.png``.

    Parameters
    ----------
    output_dir : str or pathlib.Path
        Folder of the report.
    threshold : float
        Probability above which a pixel is lung.
    n_resamples : int
        Bootstrap resamples.
    seed : int
        Bootstrap seed.
    """

    def __init__(
        self,
        output_dir: str | Path,
        threshold: float = 0.5,
        n_resamples: int = 2000,
        seed: int = 0,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.threshold = threshold
        self.n_resamples = n_resamples
        self.seed = seed
        self.rows: list[dict[str, Any]] = []

    def _collect(self, engine: Engine) -> None:
        for item, out in zip(engine.state.batch, engine.state.output):  # type: ignore[call-overload]  # lists at EPOCH_COMPLETED
            pred = torch.as_tensor(out["pred"])[None]
            label = torch.as_tensor(out["label"])[None]
            dice = float(masked_dice(pred, label, self.threshold, IGNORE)[0])
            image = item["image"]
            name = Path(str(getattr(image, "meta", {}).get("filename_or_obj", ""))).name
            self.rows.append(
                {
                    "image": name,
                    "patient_id": str(item.get("patient_id", name)),
                    "source": str(item.get("source", "unknown")),
                    "dice": dice,
                }
            )

    def _write(self, engine: Engine) -> None:
        if not self.rows:
            raise ValueError("the evaluation saw no images")
        dice = [float(r["dice"]) for r in self.rows]
        patients = [str(r["patient_id"]) for r in self.rows]
        section = summarise_dice(dice, patients, self.n_resamples, self.seed)
        per_source: dict[str, list[float]] = defaultdict(list)
        per_source_patients: dict[str, list[str]] = defaultdict(list)
        for r in self.rows:
            per_source[str(r["source"])].append(float(r["dice"]))
            per_source_patients[str(r["source"])].append(str(r["patient_id"]))
        section["by_source"] = {
            s: summarise_dice(v, per_source_patients[s], self.n_resamples, self.seed)
            for s, v in sorted(per_source.items())
        }
        section["threshold"] = self.threshold
        self.output_dir.mkdir(parents=True, exist_ok=True)
        update_metrics_file(self.output_dir / "metrics.json", "segmentation", section)
        with (self.output_dir / "segmentation_per_image.csv").open("w", encoding="utf-8") as fh:
            fh.write("image,source,dice\n")
            for r in self.rows:
                fh.write(f"{r['image']},{r['source']},{float(r['dice']):.5f}\n")
        plot_dice_by_source(per_source, self.output_dir / "segmentation_dice_by_source.png")
        logger.info(
            "segmentation Dice %.4f (95%% CI %.4f-%.4f, n=%d)",
            section["dice_mean"], *section["dice_ci95"], section["n"],  # type: ignore[misc]
        )

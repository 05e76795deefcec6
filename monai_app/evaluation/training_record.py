"""Figures for the training record: loss and validation-metric curves from ``history.jsonl``."""

from __future__ import annotations

import logging
from pathlib import Path

from monai_app.handlers import read_history

logger = logging.getLogger(__name__)


def plot_history(
    history: str | Path,
    output: str | Path,
    metric: str = "val_dice",
    metric_title: str = "Validation Dice (human-reviewed masks)",
    loss_label: str = "Dice + BCE loss",
) -> Path:
    """Plot training loss and a validation metric per epoch into a PNG.

    Parameters
    ----------
    history : str or pathlib.Path
        File written by :class:`monai_app.handlers.EpochHistoryWriter`.
    output : str or pathlib.Path
        PNG to write.
    metric : str
        History key of the validation metric (``val_dice``, ``val_auc``).
    metric_title, loss_label : str
        Titles of the metric panel and the loss axis.

    Returns
    -------
    pathlib.Path
        ``output``.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    records = read_history(history)
    if not records:
        raise ValueError(f"no epochs in {Path(history).name!r}")
    epochs = [r["epoch"] for r in records]
    fig, (loss_ax, dice_ax) = plt.subplots(1, 2, figsize=(10, 4))
    loss_ax.plot(epochs, [r.get("train_loss") for r in records], marker="o", markersize=3)
    loss_ax.set(xlabel="epoch", ylabel=loss_label, title="Training loss")
    dice_ax.plot(epochs, [r.get(metric) for r in records], marker="o", markersize=3)
    dice_ax.set(xlabel="epoch", ylabel=metric, title=metric_title)
    for ax in (loss_ax, dice_ax):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=100)
    plt.close(fig)
    logger.info("wrote %s (%d epochs)", output.name, len(records))
    return output

"""Figures for the training record: loss and Dice curves from ``history.jsonl``."""

from __future__ import annotations

import logging
from pathlib import Path

from monai_app.handlers import read_history

logger = logging.getLogger(__name__)


def plot_history(history: str | Path, output: str | Path) -> Path:
    """Plot training loss and validation Dice per epoch into a PNG.

    Parameters
    ----------
    history : str or pathlib.Path
        File written by :class:`monai_app.handlers.EpochHistoryWriter`.
    output : str or pathlib.Path
        PNG to write.

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
    loss_ax.set(xlabel="epoch", ylabel="Dice + BCE loss", title="Training loss")
    dice_ax.plot(epochs, [r.get("val_dice") for r in records], marker="o", markersize=3)
    dice_ax.set(xlabel="epoch", ylabel="Dice", title="Validation Dice (human-reviewed masks)")
    for ax in (loss_ax, dice_ax):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=100)
    plt.close(fig)
    logger.info("wrote %s (%d epochs)", output.name, len(records))
    return output

"""Ignite handlers of the bundle's training and inference workflows."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.handlers import CheckpointLoader, from_engine
from PIL import Image

from monai_app.utils import as_bool

logger = logging.getLogger(__name__)


def _scalar(value: object) -> float | None:
    """A metric value as a float, or ``None`` when it is not a number."""
    try:
        return float(torch.as_tensor(value).item())
    except (TypeError, ValueError, RuntimeError):
        return None


class EpochHistoryWriter:
    """Append one JSON line per epoch: train metrics, validation metrics, learning rate, time.

    Attach it after the ``ValidationHandler`` so that it sees that epoch's validation.

    Parameters
    ----------
    path : str or pathlib.Path
        JSON-lines file (appended, so a resumed run continues the history).
    evaluator : ignite.engine.Engine, optional
        The validation engine, whose ``state.metrics`` (e.g. ``val_dice``) are recorded too.
    optimizer : torch.optim.Optimizer, optional
        Its first learning rate is recorded.
    """

    def __init__(
        self,
        path: str | Path,
        evaluator: Engine | None = None,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> None:
        self.path = Path(path)
        self.evaluator = evaluator
        self.optimizer = optimizer
        self._start = time.monotonic()

    def attach(self, engine: Engine) -> None:
        """Register on ``engine`` (the trainer)."""
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)

    def _started(self, engine: Engine) -> None:
        self._start = time.monotonic()
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def _write(self, engine: Engine) -> None:
        record: dict[str, float | int | None] = {
            "epoch": engine.state.epoch,
            "seconds": round(time.monotonic() - self._start, 1),
        }
        record.update({k: _scalar(v) for k, v in engine.state.metrics.items()})
        if self.evaluator is not None:
            metrics: Mapping[str, object] = self.evaluator.state.metrics
            record.update({k: _scalar(v) for k, v in metrics.items()})
        if self.optimizer is not None:
            record["lr"] = float(self.optimizer.param_groups[0]["lr"])
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        logger.info("epoch summary %s", json.dumps(record))


def read_history(path: str | Path) -> list[dict[str, float]]:
    """Read an :class:`EpochHistoryWriter` file; later lines for one epoch win (resumed runs)."""
    by_epoch: dict[int, dict[str, float]] = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            by_epoch[int(record["epoch"])] = record
    return [by_epoch[e] for e in sorted(by_epoch)]


class ResumeFromCheckpoint:
    """Resume training from the newest checkpoint in a folder, if there is one.

    Parameters
    ----------
    checkpoint_dir : str or pathlib.Path
        Folder of the ``CheckpointSaver`` that saves the training state every epoch.
    load_dict : dict
        Objects to restore (network, optimizer, trainer, scheduler), as saved.
    pattern : str
        Glob of the checkpoint files.
    enabled : bool
        ``False`` always starts from scratch.
    """

    def __init__(
        self,
        checkpoint_dir: str | Path,
        load_dict: dict[str, object],
        pattern: str = "*checkpoint_epoch=*.pt",
        enabled: bool = True,
    ) -> None:
        self.checkpoint_dir = Path(checkpoint_dir)
        self.load_dict = load_dict
        self.pattern = pattern
        self.enabled = as_bool(enabled, "enabled")

    def latest(self) -> Path | None:
        """Newest checkpoint file, or ``None``."""
        if not self.checkpoint_dir.is_dir():
            return None
        files = sorted(self.checkpoint_dir.glob(self.pattern), key=lambda p: p.stat().st_mtime)
        return files[-1] if files else None

    def attach(self, engine: Engine) -> None:
        """Attach a :class:`monai.handlers.CheckpointLoader` for the newest checkpoint."""
        path = self.latest() if self.enabled else None
        if path is None:
            logger.info("no checkpoint to resume from; training from scratch")
            return
        logger.info("resuming from %s", path.name)
        CheckpointLoader(load_path=str(path), load_dict=self.load_dict, map_location="cpu").attach(
            engine
        )


class ProbabilityMapWriter:
    """Write each predicted lung probability map as an 8-bit PNG (``<stem>_lung.png``).

    Parameters
    ----------
    output_dir : str or pathlib.Path
        Folder for the PNGs.
    image_key, pred_key : str
        Keys of the (decollated) batch and output items.
    """

    def __init__(
        self, output_dir: str | Path, image_key: str = "image", pred_key: str = "pred"
    ) -> None:
        self.output_dir = Path(output_dir)
        self.image_key = image_key
        self.pred_key = pred_key

    def attach(self, engine: Engine) -> None:
        """Register on ``engine`` (the inference evaluator)."""
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        for item, out in zip(engine.state.batch, engine.state.output):
            source = item[self.image_key].meta.get("filename_or_obj", "image")
            prob = torch.as_tensor(out[self.pred_key]).detach().cpu().numpy()[0]
            png = np.clip(np.rint(prob * 255.0), 0, 255).astype(np.uint8)
            Image.fromarray(png).save(self.output_dir / f"{Path(str(source)).stem}_lung.png")


def pred_and_label_on_cpu(output: Sequence[Mapping[str, torch.Tensor]]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """``output_transform`` of metrics on decollated ``pred``/``label``, both moved to the CPU.

    On a GPU the prediction is on the device and the label can stay on the CPU, and MONAI's
    ROC AUC indexes one with the other's ``argsort`` (which then fails).
    """
    preds, labels = from_engine(["pred", "label"])(output)
    return [torch.as_tensor(p).detach().cpu() for p in preds], [torch.as_tensor(y).detach().cpu() for y in labels]

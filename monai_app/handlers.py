"""Ignite handlers of the bundle's training and inference workflows."""

from __future__ import annotations

import csv
import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import cast

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.handlers import CheckpointLoader, CheckpointSaver, from_engine
from PIL import Image

from monai_app.labels import POSITIVE_CLASS
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
        # map_location accepts what torch.load does; MONAI's annotation says dict only
        CheckpointLoader(load_path=str(path), load_dict=self.load_dict, map_location="cpu").attach(  # type: ignore[arg-type]
            engine
        )


class TrainingCheckpoint:
    """Save the full training state every epoch and resume from the newest save: one handler.

    Attaches MONAI's :class:`~monai.handlers.CheckpointSaver` (every epoch, newest kept) and a
    :class:`ResumeFromCheckpoint` on the same folder, both with the trainer itself added to the
    objects, so a config lists the network, optimizer and scheduler once. List it last among
    the trainer's handlers: it then saves after that epoch's validation, as before.

    Parameters
    ----------
    checkpoint_dir : str or pathlib.Path
        Folder of the ``checkpoint_epoch=<n>.pt`` files.
    save_dict : dict
        Objects to save and restore besides the trainer (``model``, ``optimizer``, ``lr_scheduler``).
    resume : bool
        ``False`` always starts from scratch (the saves are still written).
    """

    def __init__(self, checkpoint_dir: str | Path, save_dict: Mapping[str, object], resume: bool = True) -> None:
        self.checkpoint_dir = Path(checkpoint_dir)
        self.save_dict = dict(save_dict)
        self.resume = as_bool(resume, "resume")

    def latest(self) -> Path | None:
        """Newest checkpoint file of the folder, or ``None``."""
        return ResumeFromCheckpoint(self.checkpoint_dir, {}).latest()

    def attach(self, engine: Engine) -> None:
        """Register the saver and the resumer on ``engine`` (the trainer)."""
        objects = {**self.save_dict, "trainer": engine}
        CheckpointSaver(
            save_dir=str(self.checkpoint_dir), save_dict=objects, save_interval=1, n_saved=1, epoch_level=True
        ).attach(engine)
        ResumeFromCheckpoint(self.checkpoint_dir, objects, enabled=self.resume).attach(engine)


class BackboneStart:
    """Load a backbone state dict into the network when training starts (else random weights).

    List it before :class:`TrainingCheckpoint`: a resumed run then restores its own weights over it.

    Parameters
    ----------
    network : torch.nn.Module
        The classifier (a ``backbone`` attribute).
    weights_file : str, pathlib.Path or None
        See :func:`monai_app.networks.classifier.load_backbone_weights`; ``None`` trains from scratch.
    """

    def __init__(self, network: torch.nn.Module, weights_file: str | Path | None) -> None:
        self.network = network
        self.weights_file = weights_file

    def attach(self, engine: Engine) -> None:
        """Register on ``engine`` (the trainer)."""
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> bool:
        from monai_app.networks.classifier import load_backbone_weights  # the classifier's module, not every handler's

        return load_backbone_weights(self.network, self.weights_file)


class HalfPrecisionExport:
    """When training completes, save the best checkpoint's network as fp16 weights.

    Parameters
    ----------
    checkpoint : str or pathlib.Path
        The best-model file of the validation ``CheckpointSaver``.
    output : str or pathlib.Path
        The fp16 state dict to write (:func:`monai_app.weights.export_half_precision`).
    """

    def __init__(self, checkpoint: str | Path, output: str | Path) -> None:
        self.checkpoint = Path(checkpoint)
        self.output = Path(output)

    def attach(self, engine: Engine) -> None:
        """Register on ``engine`` (the trainer)."""
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        from monai_app.weights import export_half_precision

        export_half_precision(self.checkpoint, self.output)


class BackboneExport:
    """When pretraining completes, save the backbone of its newest checkpoint (the classifier's start).

    Parameters
    ----------
    checkpoint_dir : str or pathlib.Path
        Folder of the pretraining's :class:`TrainingCheckpoint` (its newest file is exported).
    output : str or pathlib.Path
        The fp16 backbone file (:func:`monai_app.networks.contrastive.export_backbone`).
    """

    def __init__(self, checkpoint_dir: str | Path, output: str | Path) -> None:
        self.checkpoint = TrainingCheckpoint(checkpoint_dir, {})
        self.output = Path(output)

    def attach(self, engine: Engine) -> None:
        """Register on ``engine`` (the trainer), after the checkpoint handler so the last epoch is saved."""
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        from monai_app.networks.contrastive import export_backbone

        latest = self.checkpoint.latest()
        if latest is None:
            raise FileNotFoundError(f"no pretraining checkpoint in {self.checkpoint.checkpoint_dir}")
        export_backbone(latest, self.output)


class HistoryPlot:
    """When training completes, plot the :class:`EpochHistoryWriter` file (loss and validation metric).

    Parameters
    ----------
    history, output : str or pathlib.Path
        The JSON-lines history and the PNG to write.
    metric, metric_title, loss_label : str
        See :func:`monai_app.evaluation.training_record.plot_history`.
    """

    def __init__(
        self,
        history: str | Path,
        output: str | Path,
        metric: str = "val_dice",
        metric_title: str = "Validation Dice (human-reviewed masks)",
        loss_label: str = "Dice + BCE loss",
    ) -> None:
        self.history = Path(history)
        self.output = Path(output)
        self.metric = metric
        self.metric_title = metric_title
        self.loss_label = loss_label

    def attach(self, engine: Engine) -> None:
        """Register on ``engine`` (the trainer)."""
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        from monai_app.evaluation.training_record import plot_history  # matplotlib only when plotting

        plot_history(self.history, self.output, self.metric, self.metric_title, self.loss_label)


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
        for item, out in zip(engine.state.batch, engine.state.output):  # type: ignore[call-overload]  # lists after decollation
            source = item[self.image_key].meta.get("filename_or_obj", "image")
            prob = torch.as_tensor(out[self.pred_key]).detach().cpu().numpy()[0]
            png = np.clip(np.rint(prob * 255.0), 0, 255).astype(np.uint8)
            Image.fromarray(png).save(self.output_dir / f"{Path(str(source)).stem}_lung.png")


class ClassifierWeightsLoader:
    """Load classifier weights of any form (int8, fp16, fp32, checkpoint) when the evaluator starts.

    Parameters
    ----------
    network : CovidClassifier
        The network of the inference config.
    model_file : str or pathlib.Path
        Weights, read with :func:`monai_app.networks.classifier.load_classifier_weights`.
    """

    def __init__(self, network: torch.nn.Module, model_file: str | Path) -> None:
        self.network = network
        self.model_file = Path(model_file)

    def attach(self, engine: Engine) -> None:
        """Register on ``engine`` (the inference evaluator)."""
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        from monai_app.networks.classifier import CovidClassifier, load_classifier_weights

        load_classifier_weights(cast(CovidClassifier, self.network), self.model_file)


class PredictionWriter:
    """Write one CSV row per image: its file, the covid probability and the call at ``threshold``.

    Parameters
    ----------
    output_file : str or pathlib.Path
        The CSV (rewritten when the evaluator starts).
    threshold : float
        Covid probability at or above which an image is called positive.
    image_key, pred_key : str
        Keys of the (decollated) batch and output items.
    """

    def __init__(
        self, output_file: str | Path, threshold: float, image_key: str = "image", pred_key: str = "pred"
    ) -> None:
        self.output_file = Path(output_file)
        self.threshold = float(threshold)
        self.image_key = image_key
        self.pred_key = pred_key

    def attach(self, engine: Engine) -> None:
        """Register on ``engine`` (the inference evaluator)."""
        engine.add_event_handler(Events.STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def _start(self, engine: Engine) -> None:
        self.output_file.parent.mkdir(parents=True, exist_ok=True)
        with self.output_file.open("w", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerow(["image", "covid_probability", "positive"])

    def __call__(self, engine: Engine) -> None:
        rows = []
        for item, out in zip(engine.state.batch, engine.state.output):  # type: ignore[call-overload]  # lists after decollation
            source = item[self.image_key].meta.get("filename_or_obj", "image")
            probability = float(torch.as_tensor(out[self.pred_key]).detach().cpu()[1])
            rows.append([Path(str(source)).name, f"{probability:.6f}", int(probability >= self.threshold)])
        with self.output_file.open("a", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerows(rows)


def covid_score_and_label_on_cpu(
    output: Sequence[Mapping[str, torch.Tensor]],
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """``output_transform`` of the ROC AUC: each item's COVID-19 probability and one-hot COVID-19 label, on the CPU.

    One channel of each, so a two- or three-class head is scored on the same question (for two
    classes it equals the macro ROC AUC of both channels, as before). On a GPU the prediction is on the
    device and the label can stay on the CPU, and MONAI's ROC AUC indexes one with the other's
    ``argsort`` (which then fails).
    """
    preds, labels = from_engine(["pred", "label"])(output)
    channel = slice(POSITIVE_CLASS, POSITIVE_CLASS + 1)
    return ([torch.as_tensor(p).detach().cpu()[channel] for p in preds],
            [torch.as_tensor(y).detach().cpu()[channel] for y in labels])


def step_loss(output: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """``output_transform`` of the loss of a step that is not decollated (one loss per batch)."""
    return output["loss"]

"""Choices of the bundle's training workflows, kept out of the configs.

The configs only wire components together; which weights a stage starts from, and where the
index salt comes from, are decided here, in small functions the tests pin down.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from monai.engines import SupervisedEvaluator, SupervisedTrainer

from monai_app.retrieval.reference_set import require_salt

logger = logging.getLogger(__name__)

INDEX_SALT_ENV = "CXR_INDEX_SALT"
"""Environment variable holding the secret of the index's pseudonymous patient keys."""


def trained_or_shipped(trained: str | Path, shipped: str | Path) -> str:
    """The weights a stage has just trained when they exist, else the shipped ones.

    ``run training`` thus gives the classifier (and the pretraining) the lung maps of the U-Net
    it has just trained; a stage run alone uses the bundle's U-Net.

    >>> trained_or_shipped("/no/such/lung_unet.pt", "bundle/models/lung_unet.pt")
    'bundle/models/lung_unet.pt'
    """
    chosen = trained if Path(trained).is_file() else shipped
    logger.info("weights chosen: %s", chosen)
    return str(chosen)


def backbone_if_present(backbone_file: str | Path) -> str | None:
    """The self-supervised backbone of ``run pretraining`` when it exists, else ``None`` (random start).

    >>> backbone_if_present("/no/such/backbone.pt") is None
    True
    """
    return str(backbone_file) if Path(backbone_file).is_file() else None


def index_salt(salt: str | None = None) -> str:
    """The secret salt of the index: ``salt`` when given, else ``$CXR_INDEX_SALT``.

    Called first by ``run training`` so that a missing salt stops it before hours of training.

    Raises
    ------
    ValueError
        If the salt is empty (``salt=""`` or the variable unset).

    >>> index_salt("secret")
    'secret'
    """
    value = os.environ.get(INDEX_SALT_ENV, "") if salt is None else str(salt)
    require_salt(value)
    return value


def no_items(datalist: Sequence[object]) -> bool:
    """Whether a stage's datalist is empty (its loader and engine are then not built).

    >>> no_items([]), no_items([{"image": "a.png"}])
    (True, False)
    """
    return len(datalist) == 0


def train_segmentation(
    trainer: SupervisedTrainer | None,
    validator: SupervisedEvaluator,
    without_masks: Literal["error", "keep_shipped"] = "error",
) -> bool:
    """Train the lung U-Net when the dataset has lung masks; whether it trained.

    A dataset from the PACS (``cxr-node pacs-export``) has images and labels but no lung masks,
    which need a human to draw or review them. Its training loader and trainer are then not
    built (``None``, see :func:`no_items`), and ``run training`` keeps the bundle's U-Net
    (``without_masks="keep_shipped"``): the later stages find no new ``lung_unet.pt`` and
    :func:`trained_or_shipped` gives them the shipped one. The stage run alone
    (``run training_segmentation``) has nothing to do and says so.

    Raises
    ------
    ValueError
        If there are no training masks and ``without_masks`` is ``"error"``, or there are
        training masks but no validation masks (the best model could not be chosen).
    """
    if trainer is None:
        if without_masks == "error":
            raise ValueError("the dataset has no training rows with lung masks: nothing for the U-Net to learn from")
        logger.warning(
            "segmentation stage skipped: the dataset has no lung masks; the bundle's U-Net is kept for the lung channel"
        )
        return False
    if len(validator.data_loader) == 0:  # type: ignore[arg-type]  # a DataLoader here: zero batches, zero items
        raise ValueError("training rows have lung masks but no validation row has one")
    trainer.run()
    return True

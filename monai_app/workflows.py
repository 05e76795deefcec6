"""Choices of the bundle's training workflows, kept out of the configs.

The configs only wire components together; which weights a stage starts from, and where the
index salt comes from, are decided here, in small functions the tests pin down.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

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

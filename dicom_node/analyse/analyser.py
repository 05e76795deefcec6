"""The one interface between the analysis stage and the models.

The worker sees the models only through :class:`Analyser`: prepare an image file, predict a
batch, look up similar studies. The local MONAI bundle (:class:`monai_app.inference.BundleAnalyser`)
implements it in-process; another implementation can run the models in another process or on
another machine without touching the receiver, the spool or the worker. Nothing here imports
torch or MONAI.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np


class PreparedImage(Protocol):
    """An image after the model's preprocessing, ready for :meth:`Analyser.predict`."""

    @property
    def lung_fraction(self) -> float:
        """Share of the picture the lung segmentation calls lung (0..1)."""
        ...

    @property
    def not_chest_reason(self) -> str:
        """Why the image does not look like a frontal chest radiograph (lung fields, appearance); ``""`` when it does."""
        ...

    @property
    def lung_fields_summary(self) -> str:
        """The lung-field measurements as short text, for reasons and logs (no patient data)."""
        ...


class Prediction(Protocol):
    """The classifier's output for one image."""

    @property
    def probability(self) -> float:
        """Probability of COVID-19 (0..1)."""
        ...

    @property
    def embedding(self) -> np.ndarray:
        """The image's embedding, what the similar-study index is built on."""
        ...


class ReferenceStudy(Protocol):
    """A labelled reference image of the similar-study index."""

    @property
    def study_instance_uid(self) -> str: ...
    @property
    def series_instance_uid(self) -> str: ...
    @property
    def sop_instance_uid(self) -> str: ...
    @property
    def sop_class_uid(self) -> str: ...
    @property
    def label(self) -> str:
        """``"covid"`` or ``"non_covid"``."""
        ...


class Neighbour(Protocol):
    """One similar study: the reference and its embedding distance to the query."""

    @property
    def item(self) -> ReferenceStudy: ...
    @property
    def distance(self) -> float: ...


PreparedT = TypeVar("PreparedT", bound=PreparedImage)


class Analyser(Protocol[PreparedT]):
    """Models of the analysis stage.

    ``prepare`` raises :class:`monai_app.errors.UndecodableImageError` (possibly as the cause of
    another exception) for an image no codec can decode; any other exception is an analysis
    error that the worker retries.
    """

    def prepare(self, path: str | Path) -> PreparedT:
        """Load and preprocess one image file."""
        ...

    def predict(self, images: Sequence[PreparedT]) -> Sequence[Prediction]:
        """Classify a batch of prepared images, in order."""
        ...

    def similar(self, embedding: np.ndarray, k: int) -> Sequence[Neighbour]:
        """The ``k`` reference studies nearest to ``embedding``, nearest first."""
        ...

"""The one interface between the analysis stage and the models.

The worker sees the models only through :class:`Analyser`: prepare an image file, predict a
batch, look up similar studies. The local MONAI bundle (:class:`monai_app.inference.BundleAnalyser`)
implements it in-process; another implementation can run the models in another process or on
another machine without touching the receiver, the spool or the worker. Nothing here imports
torch or MONAI (the grid protocol comes from numpy-only geometry).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np

from dicom_node.errors import NodeError
from monai_app.transforms.geometry import GridResampling


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

    @property
    def lung_probability(self) -> np.ndarray:
        """The U-Net's lung probability on the model grid."""
        ...

    @property
    def source_image(self) -> np.ndarray | None:
        """The loaded source image, (rows, columns) uint8 for display; ``None`` if not kept."""
        ...

    @property
    def grid(self) -> ModelGrid | None:
        """The way back to the source grid; ``None`` if not known."""
        ...


class ModelGrid(GridResampling, Protocol):
    """The way from the classifier's input grid back to the source image's pixel grid
    (``source_shape`` and ``to_grid`` as :class:`~monai_app.transforms.geometry.GridResampling`)."""

    def to_source(self, model_map: np.ndarray, fill: float = 0.0) -> np.ndarray:
        """A map on the model grid, resampled onto the source grid."""
        ...

    def points_to_source(self, points: np.ndarray) -> np.ndarray:
        """(n, 2) (row, column) model-grid coordinates as source-grid coordinates (SCOORD convention)."""
        ...

    def content_bounds(self) -> tuple[float, float, float, float]:
        """(top, bottom, left, right) of the image content on the model grid (the rest is padding)."""
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

    @property
    def relevance(self) -> np.ndarray | None:
        """Where the classifier looked (model grid, 0..1); ``None`` when not asked for."""
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
        """``"covid"`` or ``"non_covid"``; ``"unknown"`` for a prior with no known label."""
        ...
    @property
    def study_date(self) -> str:
        """The study's date (DICOM DA), ``""`` when not known."""
        ...


class Neighbour(Protocol):
    """One similar study: the reference and its embedding distance to the query."""

    @property
    def item(self) -> ReferenceStudy: ...
    @property
    def distance(self) -> float: ...
    @property
    def similarity(self) -> float | None:
        """Cosine similarity of the two embeddings, when known."""
        ...


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

    def predict(self, images: Sequence[PreparedT], *, relevance: bool = False) -> Sequence[Prediction]:
        """Classify a batch of prepared images, in order; with ``relevance`` also say where the classifier looked."""
        ...

    def similar(self, embedding: np.ndarray, k: int, *, exclude_study: str = "") -> Sequence[Neighbour]:
        """The ``k`` reference studies nearest to ``embedding``, nearest first, none of study ``exclude_study``."""
        ...


class BackendUnavailableError(NodeError):
    """The models' backend cannot answer now (a remote cluster down, restarting or timing out).

    Not an analysis error: the worker hands the jobs back to ``received`` without using up
    their tries, counts the try in each job's ``backend_attempts`` and waits (with backoff)
    before the next batch. Receiving goes on meanwhile. Raised outside ``except`` blocks, with
    messages of this code base (addresses, statuses, identities), so the logs may quote them.
    """


class ModelMismatchError(BackendUnavailableError):
    """The backend answered with another bundle version or weights than the node expects.

    The answer is refused and nothing is reported (a report names the model that made it,
    and its UID derives from that model's identity); the jobs wait as for an unavailable
    backend, until the deployment serves the expected model or the node is configured to
    accept it (``[inference] accept_other_model``).
    """

"""Dice that ignores ignore pixels, its MONAI metric wrapper, and a bootstrap CI."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.metrics import CumulativeIterationMetric

from monai_app.data.masks import IGNORE, LUNG


def masked_dice(
    pred: torch.Tensor, label: torch.Tensor, threshold: float = 0.5, ignore_label: int = IGNORE
) -> torch.Tensor:
    """Per-image Dice of thresholded predictions, skipping ignore pixels.

    Parameters
    ----------
    pred : torch.Tensor
        Lung probabilities ``(B, 1, H, W)``.
    label : torch.Tensor
        Labels ``(B, 1, H, W)``: 0 background, 1 lung, ``ignore_label`` ignored.
    threshold : float
        Probability above which a pixel is lung.
    ignore_label : int
        Label value excluded from the count.

    Returns
    -------
    torch.Tensor
        ``(B,)`` Dice values; 1.0 where prediction and label are both empty.
    """
    pred = torch.as_tensor(pred)
    label = torch.as_tensor(label, device=pred.device)
    valid = label != ignore_label
    p = (pred > threshold) & valid
    t = (label == LUNG) & valid
    dims = tuple(range(1, pred.ndim))
    intersection = (p & t).sum(dim=dims).double()
    total = p.sum(dim=dims).double() + t.sum(dim=dims).double()
    return torch.where(total > 0, 2.0 * intersection / total.clamp_min(1), torch.ones_like(total))


class MaskedDiceMetric(CumulativeIterationMetric):
    """MONAI cumulative metric of :func:`masked_dice`; ``aggregate()`` gives the mean.

    Parameters
    ----------
    threshold : float
        Probability above which a pixel is lung.
    ignore_label : int
        Label value excluded from the count.
    """

    def __init__(self, threshold: float = 0.5, ignore_label: int = IGNORE) -> None:
        super().__init__()
        self.threshold = threshold
        self.ignore_label = ignore_label

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        if y is None:
            raise ValueError("MaskedDiceMetric needs labels")
        return masked_dice(y_pred, y, self.threshold, self.ignore_label)[:, None]

    def aggregate(self) -> torch.Tensor:
        """Mean Dice over every image seen since the last ``reset()``."""
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor) or data.numel() == 0:
            raise ValueError("MaskedDiceMetric has no data to aggregate")
        return data.float().mean()


def patient_resamples(
    groups: Sequence[str], n_resamples: int = 2000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """The patient-clustered bootstrap: which cluster each value belongs to, and the draws.

    Clusters (patients) are resampled as a whole, so several images of one patient do not
    narrow an interval. Both the Dice interval and the classifier's metric intervals use it.

    Returns
    -------
    tuple of numpy.ndarray
        ``group_ids`` (cluster index per value, ``(n_values,)``) and ``draws``
        (``(n_resamples, n_clusters)`` cluster indices, one row per resample).

    >>> ids, draws = patient_resamples(["a", "b", "a"], n_resamples=3)
    >>> ids.tolist(), draws.shape
    ([0, 1, 0], (3, 2))
    """
    group_ids = np.unique(np.asarray(groups), return_inverse=True)[1].reshape(-1)
    n_groups = int(group_ids.max()) + 1 if group_ids.size else 0
    draws = np.random.default_rng(seed).integers(0, n_groups, size=(n_resamples, n_groups))
    return group_ids, draws


def bootstrap_ci(
    values: Sequence[float],
    groups: Sequence[str] | None = None,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean.

    Parameters
    ----------
    values : Sequence of float
        One value per image.
    groups : Sequence of str, optional
        Cluster id per value (e.g. patient id): clusters are resampled as a whole, so
        several images of one patient do not narrow the interval.
    n_resamples : int
        Number of bootstrap resamples.
    confidence : float
        Coverage of the interval.
    seed : int
        Seed of the random generator (the interval is reproducible).

    Returns
    -------
    tuple of float
        Lower and upper bound.

    Raises
    ------
    ValueError
        If ``values`` is empty or ``groups`` has another length.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError('Argument "values" must not be empty')
    group_ids, draws = patient_resamples([str(i) for i in range(x.size)] if groups is None else groups, n_resamples, seed)
    if group_ids.shape[0] != x.size:
        raise ValueError('Arguments "values" and "groups" must have the same length')
    n_groups = draws.shape[1]
    sums = np.bincount(group_ids, weights=x, minlength=n_groups)
    counts = np.bincount(group_ids, minlength=n_groups).astype(np.float64)
    means = sums[draws].sum(axis=1) / counts[draws].sum(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)

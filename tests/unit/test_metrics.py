"""Dice and loss skip ignore pixels; the bootstrap CI behaves like a CI."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_app.data.masks import IGNORE, LUNG
from monai_app.losses import MaskedDiceBCELoss
from monai_app.metrics import MaskedDiceMetric, bootstrap_ci, masked_dice


def _label() -> torch.Tensor:
    label = torch.zeros(1, 1, 8, 8)
    label[..., 2:6, 2:6] = LUNG
    label[..., 0, :] = IGNORE
    return label


def test_dice_is_one_when_errors_fall_only_on_ignore_pixels() -> None:
    label = _label()
    pred = (label == LUNG).float()
    pred[..., 0, :] = 1.0  # wrong, but on ignore pixels
    assert masked_dice(pred, label).item() == pytest.approx(1.0)


def test_dice_counts_errors_outside_ignore_pixels() -> None:
    label = _label()
    pred = (label == LUNG).float()
    pred[..., 7, :] = 1.0  # 8 false positives; 16 lung pixels
    assert masked_dice(pred, label).item() == pytest.approx(2 * 16 / (24 + 16))


def test_dice_of_two_empty_masks_is_one() -> None:
    assert masked_dice(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 4)).tolist() == [1.0, 1.0]


def test_dice_metric_aggregates_the_mean_over_images() -> None:
    metric = MaskedDiceMetric()
    label = _label()
    metric(y_pred=[(label == LUNG).float()[0], torch.zeros(1, 8, 8)], y=[label[0], label[0]])
    assert metric.aggregate().item() == pytest.approx(0.5)


def test_loss_ignores_logits_at_ignore_pixels() -> None:
    label = _label()
    logits = torch.randn(1, 1, 8, 8, requires_grad=True)
    loss_fn = MaskedDiceBCELoss()
    loss = loss_fn(logits, label)
    loss.backward()
    assert logits.grad is not None
    assert torch.all(logits.grad[..., 0, :] == 0)
    changed = logits.detach().clone()
    changed[..., 0, :] = 50.0
    assert loss_fn(changed, label).item() == pytest.approx(loss.item())


def test_loss_is_lower_for_a_better_prediction() -> None:
    label = _label()
    good = torch.where(label == LUNG, 5.0, -5.0)
    assert MaskedDiceBCELoss()(good, label) < MaskedDiceBCELoss()(-good, label)


def test_bootstrap_ci_brackets_the_mean_and_is_reproducible() -> None:
    values = np.random.default_rng(0).normal(0.9, 0.05, 200)
    low, high = bootstrap_ci(values.tolist(), seed=1)
    assert low < values.mean() < high
    assert (low, high) == bootstrap_ci(values.tolist(), seed=1)
    assert high - low < 0.03


def test_bootstrap_ci_is_wider_when_images_cluster_by_patient() -> None:
    rng = np.random.default_rng(0)
    patient_means = rng.normal(0.9, 0.05, 20)
    values = (np.repeat(patient_means, 10) + rng.normal(0, 0.001, 200)).tolist()
    groups = np.repeat([f"p{i}" for i in range(20)], 10).tolist()
    naive = np.subtract(*bootstrap_ci(values)[::-1])
    clustered = np.subtract(*bootstrap_ci(values, groups)[::-1])
    assert clustered > 2 * naive


def test_bootstrap_ci_rejects_empty_input() -> None:
    with pytest.raises(ValueError, match="values"):
        bootstrap_ci([])

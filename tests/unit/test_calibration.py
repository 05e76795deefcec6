"""Calibration: fitting (temperature, isotonic), ECE, threshold mapping and the postprocessing transform."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from monai_app.calibration import (
    IDENTITY,
    ISOTONIC,
    TEMPERATURE,
    Calibration,
    OperatingPoint,
    load_calibration,
    logit,
    sigmoid,
)
from monai_app.evaluation.calibration import (
    choose_method,
    cross_validated_probabilities,
    decisions_kept,
    expected_calibration_error,
    fit_calibration,
    fit_isotonic,
    fit_temperature,
    grouped_folds,
    reliability_bins,
)
from monai_app.transforms.calibration import CalibratedProbabilityd


def synthetic(n: int, temperature: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Margins and labels drawn so that sigmoid(z / temperature) is the true probability."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 4.0, n)
    return z, (rng.random(n) < sigmoid(z / temperature)).astype(int)


def test_fit_temperature_recovers_a_known_temperature() -> None:
    z, y = synthetic(20000, 2.0)
    assert fit_temperature(z, y) == pytest.approx(2.0, rel=0.05)
    z, y = synthetic(20000, 0.5, seed=1)
    assert fit_temperature(z, y) == pytest.approx(0.5, rel=0.05)


def test_fit_temperature_rejects_empty_input() -> None:
    with pytest.raises(ValueError, match="margins"):
        fit_temperature([], [])


def test_isotonic_map_is_monotone_and_fits_the_positive_rate() -> None:
    z, y = synthetic(3000, 1.5)
    knots_z, knots_p = fit_isotonic(z, y)
    assert np.all(np.diff(knots_z) > 0) and np.all(np.diff(knots_p) >= 0)
    calibration = Calibration(ISOTONIC, knots_z=knots_z, knots_p=knots_p)
    grid = np.linspace(-20, 20, 2001)
    assert np.all(np.diff(calibration.probability(grid)) >= 0)
    # Least squares under monotonicity keeps the mean: the mean probability equals the positive rate.
    assert float(np.mean(calibration.probability(z))) == pytest.approx(float(np.mean(y)), abs=0.02)


def test_isotonic_pools_equal_margins() -> None:
    knots_z, knots_p = fit_isotonic([1.0, 1.0, 2.0], [0, 1, 1])
    assert knots_z == (1.0, 2.0) and knots_p == (0.5, 1.0)


def test_ece_of_a_perfectly_calibrated_set_is_near_zero() -> None:
    rng = np.random.default_rng(3)
    p = rng.random(200000)
    y = (rng.random(p.size) < p).astype(int)
    assert expected_calibration_error(y, p) < 0.01


def test_ece_of_an_overconfident_set_is_large() -> None:
    z, y = synthetic(20000, 3.0)
    assert expected_calibration_error(y, sigmoid(z)) > 0.05
    assert expected_calibration_error(y, sigmoid(z / 3.0)) < 0.02


def test_reliability_bins_are_equal_width_with_the_last_closed() -> None:
    bins = reliability_bins([0, 0, 1, 1], [0.0, 0.1, 0.55, 1.0], n_bins=10)
    assert bins["edges"][:2] == [0.0, 0.1] and len(bins["count"]) == 10
    assert bins["count"][0] == 1 and bins["count"][1] == 1 and bins["count"][5] == 1 and bins["count"][9] == 1


@pytest.mark.parametrize("method", [TEMPERATURE, ISOTONIC, IDENTITY])
def test_mapped_threshold_keeps_every_decision(method: str) -> None:
    z, y = synthetic(2000, 2.5)
    calibration = fit_calibration(method, z, y, raw_threshold=0.13)
    assert decisions_kept(z, calibration)
    assert decisions_kept(np.linspace(-15, 15, 30001), calibration)  # also on margins it never saw
    assert calibration.raw_threshold == 0.13
    assert calibration.threshold == pytest.approx(float(calibration.probability(logit(0.13))))


def test_temperature_threshold_maps_through_the_temperature() -> None:
    calibration = fit_calibration(TEMPERATURE, *synthetic(5000, 2.0), raw_threshold=0.13)
    assert calibration.threshold == pytest.approx(float(sigmoid(logit(0.13) / calibration.temperature)))


def test_cross_validation_keeps_patients_in_one_fold() -> None:
    patients = [f"p{i // 3}" for i in range(60)]
    folds = grouped_folds(patients, n_folds=5)
    for patient in set(patients):
        assert len({int(f) for f, p in zip(folds, patients) if p == patient}) == 1
    z, y = synthetic(60, 2.0)
    assert cross_validated_probabilities(TEMPERATURE, z, y, patients).shape == (60,)


def test_choice_prefers_temperature_on_data_made_by_a_temperature() -> None:
    z, y = synthetic(1500, 2.0, seed=5)
    rows = [{"margin": m, "label": int(t), "patient_id": str(i)} for i, (m, t) in enumerate(zip(z, y))]
    method, table = choose_method(rows)
    assert method == TEMPERATURE
    assert table[TEMPERATURE]["nll"] < table[IDENTITY]["nll"]


def test_calibration_round_trips_through_json(tmp_path) -> None:
    point = OperatingPoint(0.88, 0.78, 94, "within_source")
    calibration = fit_calibration(ISOTONIC, *synthetic(500, 2.0), raw_threshold=0.13, operating_point=point)
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps(calibration.to_dict()))
    assert load_calibration(path) == calibration
    assert load_calibration(path).sha256 == calibration.sha256


def test_calibration_rejects_a_decreasing_table() -> None:
    with pytest.raises(ValueError, match="knots"):
        Calibration(ISOTONIC, knots_z=(0.0, 1.0), knots_p=(0.8, 0.2))
    with pytest.raises(ValueError, match="method"):
        Calibration("platt")


def test_transform_gives_the_calibrated_probability_of_two_logits() -> None:
    calibration = Calibration(TEMPERATURE, temperature=2.0)
    out = CalibratedProbabilityd("pred", calibration)({"pred": torch.tensor([1.0, 4.0])})["pred"]
    assert float(out[1]) == pytest.approx(float(sigmoid(3.0 / 2.0)))
    assert float(out.sum()) == pytest.approx(1.0)
    # No calibration: the softmax.
    plain = CalibratedProbabilityd("pred", None)({"pred": torch.tensor([1.0, 4.0])})["pred"]
    assert float(plain[1]) == pytest.approx(float(torch.softmax(torch.tensor([1.0, 4.0]), 0)[1]))

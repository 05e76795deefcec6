"""The classifier's probability calibration, as the serving node applies it: pure numpy, no fitting here.

The bundle ships ``models/calibration.json`` (written by ``run calibrating``,
:mod:`monai_app.evaluation.calibration`): the method (temperature scaling or isotonic
regression), its parameters, the decision threshold mapped onto the calibrated scale and the
validation operating point at that threshold. The calibration works on the classifier's
*logit margin* ``z = logit[covid] - logit[non_covid]``, so that for temperature scaling
``softmax(logits / T)[covid] = sigmoid(z / T)`` exactly. Both maps are monotone, so a threshold
mapped through the calibration keeps every decision (:meth:`Calibration.map_threshold`).

Pure numpy (no torch, no scikit-learn, no scipy): the report (:mod:`dicom_node.report.sr`)
reads the operating point from here, and the serving process forbids scikit-learn
(:mod:`dicom_node.serving_process`). The postprocessing transform that applies the map to the
network's logits is :class:`monai_app.transforms.calibration.CalibratedProbabilityd`.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

TEMPERATURE = "temperature"
LOGISTIC = "logistic"
ISOTONIC = "isotonic"
IDENTITY = "none"
METHODS = (TEMPERATURE, LOGISTIC, ISOTONIC, IDENTITY)
"""Calibration methods a bundle may name (``none``: the raw softmax)."""


def sigmoid(z: np.ndarray | float) -> np.ndarray:
    """Numerically stable logistic function, float64.

    >>> sigmoid(np.array([0.0, 1000.0, -1000.0])).tolist()
    [0.5, 1.0, 0.0]
    """
    z = np.asarray(z, dtype=np.float64)
    out = np.empty_like(z)
    positive = z >= 0
    out[positive] = 1.0 / (1.0 + np.exp(-z[positive]))
    e = np.exp(z[~positive])
    out[~positive] = e / (1.0 + e)
    return out


def logit(p: float) -> float:
    """``log(p / (1 - p))`` for ``0 < p < 1``.

    >>> logit(0.5)
    0.0
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f'Argument "p" must be in (0, 1), got {p}')
    return math.log(p) - math.log1p(-p)


@dataclass(frozen=True)
class OperatingPoint:
    """Sensitivity and specificity at the decision threshold, measured on the validation split."""

    sensitivity: float
    specificity: float
    n: int  # images they were measured on
    subset: str  # "within_source" (sources having both labels) or "all"
    split: str = "val"

    def __post_init__(self) -> None:
        for name in ("sensitivity", "specificity"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f'Argument "{name}" must be in [0, 1], got {value}')
        if self.n < 1:
            raise ValueError(f'Argument "n" must be positive, got {self.n}')


@dataclass(frozen=True)
class Calibration:
    """A monotone map from the classifier's logit margin to a calibrated COVID-19 probability.

    Parameters
    ----------
    method : str
        ``"temperature"`` (``p = sigmoid(z / T)``), ``"logistic"`` (Platt scaling,
        ``p = sigmoid(z / T + b)``: temperature scaling that may also shift), ``"isotonic"`` (piecewise-linear
        interpolation of the table ``(knots_z, knots_p)``, flat beyond its ends) or ``"none"``.
    temperature : float
        ``T`` of temperature scaling (1 for the other methods).
    knots_z, knots_p : tuple of float
        The isotonic table: increasing logit margins and non-decreasing probabilities.
    threshold : float
        Decision threshold on the calibrated probability.
    raw_threshold : float
        The same threshold on the uncalibrated softmax probability (the one it was mapped from).
    operating_point : OperatingPoint or None
        Validation sensitivity and specificity at the threshold.
    intercept : float
        ``b`` of the logistic map (0 for the other methods).
    """

    method: str = IDENTITY
    temperature: float = 1.0
    knots_z: tuple[float, ...] = ()
    knots_p: tuple[float, ...] = ()
    threshold: float = 0.5
    raw_threshold: float = 0.5
    operating_point: OperatingPoint | None = None
    intercept: float = 0.0

    def __post_init__(self) -> None:
        if not math.isfinite(self.intercept):
            raise ValueError(f'Argument "intercept" must be finite, got {self.intercept}')
        if self.method not in METHODS:
            raise ValueError(f'Argument "method" must be one of {METHODS}, got {self.method!r}')
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ValueError(f'Argument "temperature" must be positive, got {self.temperature}')
        if self.method == ISOTONIC:
            z, p = np.asarray(self.knots_z), np.asarray(self.knots_p)
            if z.size < 1 or z.shape != p.shape or np.any(np.diff(z) <= 0) or np.any(np.diff(p) < 0):
                raise ValueError('Arguments "knots_z" (increasing) and "knots_p" (non-decreasing) must be one table')
            if np.any((p < 0) | (p > 1)):
                raise ValueError('Argument "knots_p" must lie in [0, 1]')
        for name in ("threshold", "raw_threshold"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f'Argument "{name}" must be in [0, 1], got {value}')

    def probability(self, margin: np.ndarray | float) -> np.ndarray:
        """Calibrated COVID-19 probability of logit margins ``z = logit[covid] - logit[non_covid]``.

        >>> Calibration(TEMPERATURE, temperature=2.0).probability(np.array([0.0, 2.0])).round(4).tolist()
        [0.5, 0.7311]
        """
        z = np.asarray(margin, dtype=np.float64)
        if self.method == ISOTONIC:
            return np.interp(z, self.knots_z, self.knots_p)
        if self.method == LOGISTIC:
            return sigmoid(z / self.temperature + self.intercept)
        return sigmoid(z / self.temperature)

    def map_threshold(self, raw_threshold: float) -> float:
        """A threshold on the raw softmax probability, carried onto the calibrated scale.

        The calibration is monotone in the margin, so ``raw >= t`` implies
        ``calibrated >= map_threshold(t)``; for temperature scaling (strictly increasing) the
        converse holds too and every decision is kept.

        >>> round(Calibration(TEMPERATURE, temperature=2.0).map_threshold(sigmoid(2.0).item()), 4)
        0.7311
        """
        return float(self.probability(logit(raw_threshold)))

    @property
    def description(self) -> str:
        """The method and its parameters in a few words, for logs and reports.

        >>> Calibration(TEMPERATURE, temperature=1.7).description
        'temperature scaling, T = 1.70'
        """
        if self.method == TEMPERATURE:
            return f"temperature scaling, T = {self.temperature:.2f}"
        if self.method == LOGISTIC:
            return f"logistic (Platt) scaling, T = {self.temperature:.2f}, b = {self.intercept:+.2f}"
        if self.method == ISOTONIC:
            return f"isotonic regression, {len(self.knots_z)} knots"
        return "uncalibrated"

    @property
    def parameters(self) -> dict[str, Any]:
        """What defines the map (method and parameters), in a canonical order."""
        shift = {"intercept": self.intercept} if self.method == LOGISTIC else {}
        return {
            "method": self.method, "temperature": self.temperature, **shift,
            "knots_z": list(self.knots_z), "knots_p": list(self.knots_p),
        }

    @property
    def sha256(self) -> str:
        """SHA-256 of :attr:`parameters` (canonical JSON): which map made a probability."""
        return hashlib.sha256(json.dumps(self.parameters, sort_keys=True).encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        """The JSON form of ``models/calibration.json`` (also read by :meth:`from_dict`)."""
        point = self.operating_point
        return {
            **self.parameters,
            "threshold": self.threshold,
            "raw_threshold": self.raw_threshold,
            "operating_point": None if point is None else {
                "sensitivity": point.sensitivity, "specificity": point.specificity,
                "n": point.n, "subset": point.subset, "split": point.split,
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Calibration:
        """Read :meth:`to_dict`'s form (extra keys, e.g. the fit's figures, are ignored)."""
        point = data.get("operating_point")
        return cls(
            method=str(data["method"]),
            temperature=float(data.get("temperature", 1.0)),
            knots_z=tuple(float(v) for v in data.get("knots_z", ())),
            knots_p=tuple(float(v) for v in data.get("knots_p", ())),
            intercept=float(data.get("intercept", 0.0)),
            threshold=float(data["threshold"]),
            raw_threshold=float(data.get("raw_threshold", data["threshold"])),
            operating_point=None if not point else OperatingPoint(
                float(point["sensitivity"]), float(point["specificity"]), int(point["n"]),
                str(point["subset"]), str(point.get("split", "val")),
            ),
        )


def load_calibration(path: str | Path) -> Calibration:
    """The bundle's calibration from ``models/calibration.json``.

    Raises
    ------
    FileNotFoundError
        If the file is missing (a bundle without calibration names ``calibration: null`` instead).
    """
    return Calibration.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

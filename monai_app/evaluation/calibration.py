"""Fitting and checking the classifier's probability calibration (``run calibrating``).

Two candidate maps of the logit margin ``z = logit[covid] - logit[non_covid]`` are fitted on
the validation split: **temperature scaling** (one parameter, ``p = sigmoid(z / T)``, ``T``
minimising the negative log-likelihood) and **isotonic regression** (pool-adjacent-violators,
interpolated linearly between its blocks). The one kept is the one with the lower
*cross-validated* NLL within validation (patient-grouped folds: each image is scored by a map
fitted without its patient); the test split, never used to fit or choose, gives the honest
figures, reported separately.

Calibration is measured by the expected calibration error of the COVID-19 probability
(binary, not top-label): ``ECE = sum_b (n_b / n) |mean(y in b) - mean(p in b)|`` over
:data:`N_BINS` equal-width bins of ``p`` on [0, 1], with a patient-clustered bootstrap 95 %
interval. The fitted map, the threshold carried onto the calibrated scale and the validation
operating point go into the bundle's ``models/calibration.json``
(:class:`monai_app.calibration.Calibration`), which the node applies.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import DataLoader, Dataset

from monai_app.calibration import IDENTITY, ISOTONIC, LOGISTIC, TEMPERATURE, Calibration, OperatingPoint, sigmoid
from monai_app.data.sampling import sources_with_both_labels
from monai_app.evaluation.segmentation import update_metrics_file
from monai_app.metrics import patient_resamples
from monai_app.networks.classifier import CovidClassifier, load_classifier_weights

logger = logging.getLogger(__name__)

N_BINS = 10
"""Equal-width bins of the ECE and of the reliability diagrams."""
NLL_EPS = 1e-3
"""Probabilities are clipped to [eps, 1 - eps] in the NLL (isotonic maps reach 0 and 1)."""
SECTION = "calibration"
"""Section of ``metrics.json`` written by :class:`CalibrationRun`."""
FIGURE = "calibration_reliability.png"


# ---------------------------------------------------------------- fitting (pure)

def negative_log_likelihood(labels: Sequence[int] | np.ndarray, probabilities: Sequence[float] | np.ndarray) -> float:
    """Mean binary NLL, probabilities clipped to ``[NLL_EPS, 1 - NLL_EPS]``.

    >>> round(negative_log_likelihood([1, 0], [0.5, 0.5]), 4)
    0.6931
    """
    y = np.asarray(labels, dtype=np.float64)
    p = np.clip(np.asarray(probabilities, dtype=np.float64), NLL_EPS, 1 - NLL_EPS)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def fit_temperature(margins: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """The temperature ``T`` minimising the NLL of ``sigmoid(z / T)`` (Guo et al. 2017).

    The NLL is convex in ``1 / T``; a Newton iteration on ``a = 1 / T`` from ``a = 1`` converges
    in a few steps. ``T`` is kept in [0.05, 100].

    >>> rng = np.random.default_rng(0)
    >>> z = rng.normal(0, 3, 20000); y = rng.random(20000) < sigmoid(z / 2.5)
    >>> round(fit_temperature(z, y), 1)
    2.5
    """
    z = np.asarray(margins, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if z.size == 0 or z.shape != y.shape:
        raise ValueError('Arguments "margins" and "labels" must be non-empty and of one length')
    a = 1.0
    for _ in range(100):
        p = sigmoid(a * z)
        gradient = float(np.sum((p - y) * z))
        hessian = float(np.sum(p * (1 - p) * z * z))
        if hessian <= 1e-12:
            break
        step = gradient / hessian
        a = float(np.clip(a - step, 0.01, 20.0))
        if abs(step) < 1e-10:
            break
    return float(np.clip(1.0 / a, 0.05, 100.0))


def fit_logistic(margins: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray) -> tuple[float, float]:
    """``(T, b)`` minimising the NLL of ``sigmoid(z / T + b)`` (Platt scaling on the logit margin).

    Newton's method on ``(a = 1 / T, b)``: the NLL is convex in them. Unlike temperature
    scaling it can move the score, not only sharpen it; unlike isotonic regression it never
    reaches 0 or 1.

    >>> rng = np.random.default_rng(0)
    >>> z = rng.normal(0, 3, 20000); y = rng.random(20000) < sigmoid(z / 2.0 + 1.0)
    >>> [round(v) for v in fit_logistic(z, y)]
    [2, 1]
    """
    z = np.asarray(margins, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if z.size == 0 or z.shape != y.shape:
        raise ValueError('Arguments "margins" and "labels" must be non-empty and of one length')
    x = np.stack([z, np.ones_like(z)], axis=1)
    theta = np.array([1.0, 0.0])
    for _ in range(100):
        p = sigmoid(x @ theta)
        gradient = x.T @ (p - y)
        hessian = (x * (p * (1 - p))[:, None]).T @ x + 1e-9 * np.eye(2)
        step = np.linalg.solve(hessian, gradient)
        theta = theta - step
        theta[0] = float(np.clip(theta[0], 0.01, 20.0))
        if float(np.max(np.abs(step))) < 1e-10:
            break
    return float(np.clip(1.0 / theta[0], 0.05, 100.0)), float(theta[1])


def pool_adjacent_violators(values: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Isotonic (non-decreasing) least-squares fit of ``values`` in their order.

    Returns the blocks' means and their sizes (weights), left to right.

    >>> means, sizes = pool_adjacent_violators(np.array([1.0, 0.0, 1.0, 1.0]), np.ones(4))
    >>> means.tolist(), sizes.tolist()
    ([0.5, 1.0, 1.0], [2.0, 1.0, 1.0])
    """
    means: list[float] = []
    sizes: list[float] = []
    for value, weight in zip(values.astype(np.float64), weights.astype(np.float64)):
        means.append(float(value))
        sizes.append(float(weight))
        while len(means) > 1 and means[-2] > means[-1]:  # pool the violating pair
            total = sizes[-2] + sizes[-1]
            means[-2] = (means[-2] * sizes[-2] + means[-1] * sizes[-1]) / total
            sizes[-2] = total
            means.pop()
            sizes.pop()
    return np.asarray(means), np.asarray(sizes)


def fit_isotonic(
    margins: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Isotonic regression of the labels on the margins: the knots of :class:`Calibration`.

    Equal margins are pooled first; each pooled block becomes a knot at its images' mean
    margin with their positive rate, so the map (interpolated between knots) is
    non-decreasing.

    >>> fit_isotonic([-2.0, -1.0, 1.0, 2.0], [0, 1, 0, 1])
    ((-2.0, 0.0, 2.0), (0.0, 0.5, 1.0))
    """
    z = np.asarray(margins, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if z.size == 0 or z.shape != y.shape:
        raise ValueError('Arguments "margins" and "labels" must be non-empty and of one length')
    unique_z, inverse, counts = np.unique(z, return_inverse=True, return_counts=True)
    positives = np.bincount(inverse, weights=y)
    means, sizes = pool_adjacent_violators(positives / counts, counts.astype(np.float64))
    bounds = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
    # Knot position: mean margin of the block's images (cumulative counts index the unique margins).
    cumulative = np.concatenate([[0], np.cumsum(counts)])
    knots_z = []
    for start, stop in zip(bounds[:-1], bounds[1:]):
        block = slice(int(np.searchsorted(cumulative, start)), int(np.searchsorted(cumulative, stop)))
        knots_z.append(float(np.average(unique_z[block], weights=counts[block])))
    return tuple(knots_z), tuple(float(m) for m in means)


def fit_calibration(
    method: str, margins: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray, raw_threshold: float = 0.5,
    operating_point: OperatingPoint | None = None,
) -> Calibration:
    """Fit ``method`` on (margin, label) pairs; the threshold is ``raw_threshold`` carried through the map."""
    if method == TEMPERATURE:
        fitted = Calibration(TEMPERATURE, temperature=fit_temperature(margins, labels))
    elif method == LOGISTIC:
        temperature, intercept = fit_logistic(margins, labels)
        fitted = Calibration(LOGISTIC, temperature=temperature, intercept=intercept)
    elif method == ISOTONIC:
        knots_z, knots_p = fit_isotonic(margins, labels)
        fitted = Calibration(ISOTONIC, knots_z=knots_z, knots_p=knots_p)
    elif method == IDENTITY:
        fitted = Calibration(IDENTITY)
    else:
        raise ValueError(f'Argument "method" must be one of {(TEMPERATURE, LOGISTIC, ISOTONIC, IDENTITY)}, got {method!r}')
    return Calibration(
        fitted.method, fitted.temperature, fitted.knots_z, fitted.knots_p,
        threshold=fitted.map_threshold(raw_threshold), raw_threshold=raw_threshold, operating_point=operating_point,
        intercept=fitted.intercept,
    )


def decisions_kept(margins: Sequence[float] | np.ndarray, calibration: Calibration) -> bool:
    """Whether every image gets the same call calibrated (``p >= threshold``) as raw (``softmax >= raw_threshold``).

    >>> decisions_kept([-3.0, -1.0, 0.5, 2.0], Calibration(TEMPERATURE, 1.7, threshold=0.5, raw_threshold=0.5))
    True
    """
    z = np.asarray(margins, dtype=np.float64)
    raw = sigmoid(z) >= calibration.raw_threshold
    return bool(np.array_equal(raw, calibration.probability(z) >= calibration.threshold))


# ---------------------------------------------------------------- measuring (pure)

def reliability_bins(
    labels: Sequence[int] | np.ndarray, probabilities: Sequence[float] | np.ndarray, n_bins: int = N_BINS
) -> dict[str, list[Any]]:
    """The reliability diagram's data: per equal-width bin of ``p``, its count, mean ``p`` and positive rate.

    The last bin is closed (``p = 1`` falls in it); empty bins have ``None`` means.

    >>> bins = reliability_bins([0, 1, 1], [0.05, 0.95, 1.0], n_bins=2)
    >>> bins["count"], bins["mean_predicted"], bins["observed"]
    ([1, 2], [0.05, 0.975], [0.0, 1.0])
    """
    y = np.asarray(labels, dtype=np.float64)
    p = np.asarray(probabilities, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1], right=False), 0, n_bins - 1)
    count, mean_predicted, observed = [], [], []
    for b in range(n_bins):
        members = which == b
        n = int(members.sum())
        count.append(n)
        mean_predicted.append(float(p[members].mean()) if n else None)
        observed.append(float(y[members].mean()) if n else None)
    return {"edges": edges.tolist(), "count": count, "mean_predicted": mean_predicted, "observed": observed}


def expected_calibration_error(
    labels: Sequence[int] | np.ndarray, probabilities: Sequence[float] | np.ndarray, n_bins: int = N_BINS
) -> float:
    """ECE of the positive-class probability over ``n_bins`` equal-width bins.

    >>> round(expected_calibration_error([0, 1, 1, 0], [0.1, 0.9, 0.9, 0.1], n_bins=10), 6)
    0.1
    """
    bins = reliability_bins(labels, probabilities, n_bins)
    n = sum(bins["count"])
    if n == 0:
        raise ValueError("ECE of no images")
    return float(sum(
        c / n * abs(o - m) for c, m, o in zip(bins["count"], bins["mean_predicted"], bins["observed"]) if c
    ))


def ece_with_ci(
    labels: Sequence[int] | np.ndarray, probabilities: Sequence[float] | np.ndarray, patients: Sequence[str],
    n_resamples: int = 1000, seed: int = 0, n_bins: int = N_BINS,
) -> tuple[float, list[float]]:
    """ECE and its patient-clustered bootstrap 95 % interval."""
    y = np.asarray(labels, dtype=np.float64)
    p = np.asarray(probabilities, dtype=np.float64)
    group_of, draws = patient_resamples(patients, n_resamples, seed)
    members = [np.flatnonzero(group_of == g) for g in range(draws.shape[1])]
    values = [expected_calibration_error(y[idx], p[idx], n_bins)
              for idx in (np.concatenate([members[g] for g in row]) for row in draws)]
    return expected_calibration_error(y, p, n_bins), [float(q) for q in np.quantile(values, [0.025, 0.975])]


def grouped_folds(patients: Sequence[str], n_folds: int = 5, seed: int = 0) -> np.ndarray:
    """Fold index per image, all images of a patient in one fold (patients dealt at random).

    >>> grouped_folds(["a", "b", "a", "c"], n_folds=2).tolist()[0] == grouped_folds(["a", "b", "a", "c"], 2).tolist()[2]
    True
    """
    unique, inverse = np.unique(np.asarray(patients), return_inverse=True)
    order = np.random.default_rng(seed).permutation(unique.size)
    fold_of_patient = np.empty(unique.size, dtype=int)
    fold_of_patient[order] = np.arange(unique.size) % n_folds
    return fold_of_patient[inverse.reshape(-1)]


def cross_validated_probabilities(
    method: str, margins: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray, patients: Sequence[str],
    n_folds: int = 5, seed: int = 0,
) -> np.ndarray:
    """Each image's calibrated probability from ``method`` fitted on the other folds (patient-grouped)."""
    z = np.asarray(margins, dtype=np.float64)
    y = np.asarray(labels, dtype=int)
    folds = grouped_folds(patients, n_folds, seed)
    out = np.empty_like(z)
    for k in range(n_folds):
        held_out = folds == k
        if not held_out.any():
            continue
        out[held_out] = fit_calibration(method, z[~held_out], y[~held_out]).probability(z[held_out])
    return out


def operating_point(
    labels: Sequence[int] | np.ndarray, raw_probabilities: Sequence[float] | np.ndarray, threshold: float,
    subset: str, split: str = "val",
) -> OperatingPoint:
    """Sensitivity and specificity of ``raw_probabilities >= threshold``.

    >>> operating_point([0, 0, 1, 1], [0.1, 0.3, 0.2, 0.8], 0.25, "all")
    OperatingPoint(sensitivity=0.5, specificity=0.5, n=4, subset='all', split='val')
    """
    y = np.asarray(labels, dtype=int)
    called = np.asarray(raw_probabilities, dtype=np.float64) >= threshold
    if not 0 < y.sum() < y.size:
        raise ValueError("an operating point needs both labels")
    return OperatingPoint(
        float(called[y == 1].mean()), float((~called[y == 0]).mean()), int(y.size), subset, split,
    )


def subsets(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[int]]:
    """Row indices of the reported subsets: ``all``, ``within_source`` (if any) and each source."""
    out = {"all": list(range(len(rows)))}
    mixed = set(sources_with_both_labels(rows))
    if mixed:
        out["within_source"] = [i for i, r in enumerate(rows) if r["source"] in mixed]
    for source in sorted({str(r["source"]) for r in rows}):
        out[source] = [i for i, r in enumerate(rows) if r["source"] == source]
    return out


def calibration_figures(
    rows: Sequence[Mapping[str, Any]], scores: Mapping[str, np.ndarray], n_resamples: int = 1000, seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """ECE (with 95 % CI), NLL and Brier score of each set of probabilities, per subset.

    Parameters
    ----------
    rows : Sequence of dict
        Per image: ``label``, ``source``, ``patient_id``.
    scores : Mapping of str to numpy.ndarray
        Name (``"before"``, ``"after"``, ...) -> probability per row.
    """
    y = np.asarray([int(r["label"]) for r in rows])
    patients = [str(r["patient_id"]) for r in rows]
    out: dict[str, dict[str, Any]] = {}
    for name, idx in subsets(rows).items():
        entry: dict[str, Any] = {"n": len(idx), "n_positive": int(y[idx].sum())}
        for key, p in scores.items():
            ece, ci = ece_with_ci(y[idx], p[idx], [patients[i] for i in idx], n_resamples, seed)
            entry[key] = {
                "ece": ece, "ece_ci95": ci,
                "nll": negative_log_likelihood(y[idx], p[idx]),
                "brier": float(np.mean((p[idx] - y[idx]) ** 2)),
                "mean_probability": float(np.mean(p[idx])),
            }
        entry["positive_rate"] = float(y[idx].mean())
        out[name] = entry
    return out


# ---------------------------------------------------------------- the command (I/O at the edge)

def collect_margins(
    network: CovidClassifier, model_file: str | Path, datalist: Sequence[Mapping[str, Any]],
    transform: Callable[[Any], Any], batch_size: int = 16, device: torch.device | str = "cpu",
) -> list[dict[str, Any]]:
    """Run the classifier (weights ``model_file``) on a datalist: one row per image with its logit margin.

    Rows carry ``image_path``, ``patient_id``, ``source``, ``label`` and ``margin``
    (``logit[covid] - logit[non_covid]``), in datalist order.
    """
    network = load_classifier_weights(network, Path(model_file)).to(device).eval()
    loader = DataLoader(Dataset(list(datalist), transform=transform), batch_size=batch_size, shuffle=False, num_workers=0)
    margins: list[float] = []
    with torch.inference_mode():
        for batch in loader:
            logits = network(torch.as_tensor(batch["image"]).to(device)).double()
            margins.extend((logits[:, 1] - logits[:, 0]).cpu().tolist())
    return [
        {"image_path": str(item.get("image_path", "")), "patient_id": str(item.get("patient_id", "")),
         "source": str(item.get("source", "unknown")), "label": int(item["label"]), "margin": float(m)}
        for item, m in zip(datalist, margins)
    ]


def choose_method(
    rows: Sequence[Mapping[str, Any]], methods: Sequence[str] = (TEMPERATURE, LOGISTIC, ISOTONIC), n_folds: int = 5,
    seed: int = 0,
) -> tuple[str, dict[str, dict[str, float]]]:
    """The method with the lowest cross-validated NLL on ``rows`` (ties: the earlier in ``methods``).

    Returns the method and, per method (and ``none``, the raw softmax), the cross-validated
    NLL and ECE.
    """
    z = np.asarray([float(r["margin"]) for r in rows])
    y = np.asarray([int(r["label"]) for r in rows])
    patients = [str(r["patient_id"]) for r in rows]
    table = {IDENTITY: {"nll": negative_log_likelihood(y, sigmoid(z)), "ece": expected_calibration_error(y, sigmoid(z))}}
    for method in methods:
        p = cross_validated_probabilities(method, z, y, patients, n_folds, seed)
        table[method] = {"nll": negative_log_likelihood(y, p), "ece": expected_calibration_error(y, p)}
    best = min(methods, key=lambda m: (table[m]["nll"], list(methods).index(m)))
    return best, table


def write_margins_csv(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    """The per-image margins, without patient IDs."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["split", "image_path", "source", "label", "margin"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


class CalibrationRun:
    """``run calibrating``: fit the calibration on validation, check it on test, write it into the bundle.

    Parameters
    ----------
    network : CovidClassifier
        The classifier (``cls_network``).
    model_file : str or pathlib.Path
        Its shipped weights (``cls_model_file``).
    fit_datalist, check_datalist : Sequence of dict
        The validation split (fit and choice) and the test split (the honest check only).
    transform : callable
        The classifier's deterministic preprocessing (``cls_preprocessing``).
    raw_threshold : float
        The bundle's decision threshold on the raw softmax (``cls_threshold``).
    calibration_file : str or pathlib.Path
        Where the fitted calibration goes (``models/calibration.json``).
    report_dir : str or pathlib.Path
        Where ``metrics.json`` (section ``calibration``), :data:`FIGURE` and
        ``calibration_per_image.csv`` go.
    methods : Sequence of str
        Candidate methods.
    """

    def __init__(
        self, network: CovidClassifier, model_file: str | Path, fit_datalist: Sequence[Mapping[str, Any]],
        check_datalist: Sequence[Mapping[str, Any]], transform: Callable[[Any], Any], raw_threshold: float,
        calibration_file: str | Path, report_dir: str | Path, methods: Sequence[str] = (TEMPERATURE, LOGISTIC, ISOTONIC),
        batch_size: int = 16, device: torch.device | str = "cpu", n_resamples: int = 1000, seed: int = 0,
    ) -> None:
        self.network, self.model_file = network, Path(model_file)
        self.fit_datalist, self.check_datalist = list(fit_datalist), list(check_datalist)
        self.transform = transform
        self.raw_threshold = float(raw_threshold)
        self.calibration_file, self.report_dir = Path(calibration_file), Path(report_dir)
        self.methods = tuple(methods)
        self.batch_size, self.device = int(batch_size), device
        self.n_resamples, self.seed = int(n_resamples), int(seed)

    def run(self) -> Calibration:
        """Collect the margins, fit, check and write; returns the calibration written."""
        fit_rows = collect_margins(self.network, self.model_file, self.fit_datalist, self.transform, self.batch_size, self.device)
        check_rows = collect_margins(self.network, self.model_file, self.check_datalist, self.transform, self.batch_size, self.device)
        return self.fit_and_write(fit_rows, check_rows)

    def fit_and_write(self, fit_rows: Sequence[Mapping[str, Any]], check_rows: Sequence[Mapping[str, Any]]) -> Calibration:
        """Everything after inference: choice, fit, operating point, decisions check, report files."""
        from monai_app.evaluation.plots import plot_reliability

        method, comparison = choose_method(fit_rows, self.methods, seed=self.seed)
        z_fit = np.asarray([float(r["margin"]) for r in fit_rows])
        y_fit = np.asarray([int(r["label"]) for r in fit_rows])
        mixed = sources_with_both_labels(fit_rows)
        point_idx = [i for i, r in enumerate(fit_rows) if r["source"] in mixed] if mixed else list(range(len(fit_rows)))
        point = operating_point(y_fit[point_idx], sigmoid(z_fit[point_idx]), self.raw_threshold,
                                "within_source" if mixed else "all")
        calibration = fit_calibration(method, z_fit, y_fit, self.raw_threshold, point)
        z_check = np.asarray([float(r["margin"]) for r in check_rows])
        kept = {"val": decisions_kept(z_fit, calibration), "test": decisions_kept(z_check, calibration)}
        if not all(kept.values()):
            logger.warning("calibration %s changes decisions at the mapped threshold: %s", calibration.description, kept)
        patients = [str(r["patient_id"]) for r in fit_rows]
        cv = cross_validated_probabilities(method, z_fit, y_fit, patients, seed=self.seed)
        val = calibration_figures(
            fit_rows, {"before": sigmoid(z_fit), "after": calibration.probability(z_fit), "after_cross_validated": cv},
            self.n_resamples, self.seed,
        )
        test = calibration_figures(
            check_rows, {"before": sigmoid(z_check), "after": calibration.probability(z_check)}, self.n_resamples, self.seed,
        )
        section: dict[str, object] = {
            "method": method,
            "description": calibration.description,
            "parameters_sha256": calibration.sha256,
            "calibration": calibration.to_dict(),
            "choice": {"rule": "lowest 5-fold patient-grouped cross-validated NLL within the validation split",
                       "cross_validated": comparison},
            "decisions_kept": kept,
            "ece_bins": f"{N_BINS} equal-width bins of the COVID-19 probability on [0, 1]",
            "val": val,
            "test": test,
        }
        self.calibration_file.parent.mkdir(parents=True, exist_ok=True)
        self.calibration_file.write_text(json.dumps(calibration.to_dict(), indent=2) + "\n", encoding="utf-8")
        self.report_dir.mkdir(parents=True, exist_ok=True)
        update_metrics_file(self.report_dir / "metrics.json", SECTION, section)
        write_margins_csv([{**r, "split": "val"} for r in fit_rows] + [{**r, "split": "test"} for r in check_rows],
                          self.report_dir / "calibration_per_image.csv")
        panels = {}
        for split, rows, after, label in (
            ("val", fit_rows, cv, "after (cross-validated)"), ("test", check_rows, calibration.probability(z_check), "after"),
        ):
            z = np.asarray([float(r["margin"]) for r in rows])
            y = np.asarray([int(r["label"]) for r in rows])
            for name, idx in subsets(rows).items():
                panels[f"{split}: {name} (n={len(idx)})"] = (y[idx], {"before": sigmoid(z[idx]), label: after[idx]})
        plot_reliability(panels, self.report_dir / FIGURE, n_bins=N_BINS)
        logger.info(
            "calibration: %s, threshold %.4f -> %.4f, decisions kept %s; ECE val %.3f -> %.3f, test %.3f -> %.3f",
            calibration.description, self.raw_threshold, calibration.threshold, kept,
            val["all"]["before"]["ece"], val["all"]["after"]["ece"], test["all"]["before"]["ece"], test["all"]["after"]["ece"],
        )
        return calibration


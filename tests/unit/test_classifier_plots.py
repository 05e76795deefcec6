"""The classifier's evaluation figures and the embedding's source-shortcut probe, on synthetic arrays."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from monai_app.evaluation.classification import curve_subsets, write_classifier_figures
from monai_app.evaluation.plots import (
    plot_embedding_tsne,
    plot_pr_curves,
    plot_retrieval_example,
    plot_roc_curves,
    plot_score_histogram,
    tsne_coordinates,
)
from monai_app.evaluation.retrieval import retrieval_example_queries, shortcut_probe
from testkit.images import assert_valid_png


def _scores(n: int = 200, seed: int = 0) -> tuple[list[int], list[float]]:
    """Labels and scores as lists, as :func:`curve_subsets` hands them to the plots."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return y.tolist(), np.clip(0.3 * y + 0.35 + 0.2 * rng.normal(size=n), 0, 1).tolist()


def test_roc_and_pr_curves_draw_the_subsets_with_both_labels(tmp_path: Path) -> None:
    y, p = _scores()
    curves = {"all images": (y, p), "within source": (y[:50], p[:50]), "one label": ([1] * 5, p[:5])}
    assert plot_roc_curves(curves, tmp_path / "roc.png") == ["all images", "within source"]
    assert plot_pr_curves(curves, tmp_path / "pr.png") == ["all images", "within source"]
    assert_valid_png(tmp_path / "roc.png")
    assert_valid_png(tmp_path / "pr.png")
    assert plot_roc_curves({"one label": ([0] * 4, p[:4])}, tmp_path / "none.png") == []
    assert_valid_png(tmp_path / "none.png", min_bytes=4_000)  # still a figure, with a note
    with pytest.raises(ValueError, match="one length"):
        plot_roc_curves({"bad": (y, p[:-1])}, tmp_path / "bad.png")


def test_score_histogram(tmp_path: Path) -> None:
    y, p = _scores()
    plot_score_histogram(y, p, tmp_path / "hist.png", threshold=0.4)
    assert_valid_png(tmp_path / "hist.png")


def test_classifier_figures_use_the_within_source_subset(tmp_path: Path) -> None:
    rows = [{"label": i % 2, "score": 0.1 + 0.8 * (i % 2), "source": "mixed" if i < 4 else f"only{i % 2}"}
            for i in range(10)]
    subsets = curve_subsets(rows, ["mixed"])
    assert list(subsets) == ["all images", "within source (mixed)"]
    assert subsets["within source (mixed)"] == ([0, 1, 0, 1], [0.1, 0.9, 0.1, 0.9])
    assert list(curve_subsets(rows, None)) == ["all images"]
    written = write_classifier_figures(rows, ["mixed"], tmp_path)
    assert [p.name for p in written] == ["classifier_roc.png", "classifier_pr.png", "classifier_score_histogram.png"]
    for path in written:
        assert_valid_png(path)


@pytest.mark.parametrize("n", [2, 3, 6, 40])
def test_tsne_works_on_tiny_inputs_and_is_reproducible(n: int) -> None:
    x = np.random.default_rng(n).normal(size=(n, 8))
    xy = tsne_coordinates(x, seed=3)
    assert xy.shape == (n, 2) and np.isfinite(xy).all()
    np.testing.assert_allclose(xy, tsne_coordinates(x, seed=3))


def test_tsne_single_point_and_bad_shapes() -> None:
    np.testing.assert_array_equal(tsne_coordinates(np.ones((1, 4))), np.zeros((1, 2)))
    with pytest.raises(ValueError):
        tsne_coordinates(np.ones(4))


def test_tsne_figure(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 8))
    labels = ["covid" if i % 2 else "non_covid" for i in range(30)]
    sources = [("a", "b", "c")[i % 3] for i in range(30)]
    assert plot_embedding_tsne(x, labels, sources, tmp_path / "tsne.png").shape == (30, 2)
    assert_valid_png(tmp_path / "tsne.png")
    with pytest.raises(ValueError, match="one length"):
        plot_embedding_tsne(x, labels[:-1], sources, tmp_path / "bad.png")


def test_retrieval_example_figure(tmp_path: Path) -> None:
    ramp = np.tile(np.linspace(0, 1, 300, dtype=np.float32), (400, 1))
    plot_retrieval_example(ramp, "covid", [ramp.T, None, ramp[::2]], ["covid", "non_covid", "covid"],
                           [0.1, 0.25, 0.5], tmp_path / "example.png")
    assert_valid_png(tmp_path / "example.png")
    with pytest.raises(ValueError, match="one length"):
        plot_retrieval_example(ramp, "covid", [ramp], ["covid", "covid"], [0.1], tmp_path / "bad.png")
    with pytest.raises(ValueError, match="2-D"):
        plot_retrieval_example(ramp[None], "covid", [ramp], ["covid"], [0.1], tmp_path / "bad.png")


def test_retrieval_examples_are_the_first_covid_and_first_non_covid_queries() -> None:
    assert retrieval_example_queries([0, 0, 1, 0, 1]) == [2, 0]
    assert retrieval_example_queries([1, 0]) == [0, 1]
    assert retrieval_example_queries([0, 0, 0]) == [0, 1]
    assert retrieval_example_queries([1]) == [0]


def _sources_and_patients(n: int, n_sources: int, seed: int) -> tuple[list[str], list[str]]:
    """Two images per patient; each patient belongs to one source."""
    rng = np.random.default_rng(seed)
    patient_source = rng.integers(0, n_sources, n // 2)
    sources = [f"src{patient_source[i // 2]}" for i in range(n)]
    return sources, [f"patient{i // 2}" for i in range(n)]


def test_shortcut_probe_finds_embeddings_separable_by_source() -> None:
    sources, patients = _sources_and_patients(60, 3, seed=1)
    rng = np.random.default_rng(2)
    centres = 10.0 * np.eye(3, 16)
    x = np.stack([centres[int(s[-1])] for s in sources]) + 0.1 * rng.normal(size=(60, 16))
    probe: dict[str, Any] = shortcut_probe(x, sources, patients)
    assert probe["accuracy"] == 1.0 and probe["balanced_accuracy"] == 1.0
    assert probe["n_splits"] == 5 and probe["n_groups"] == 30 and probe["n_classes"] == 3 and probe["note"] is None
    counts = np.unique(sources, return_counts=True)[1]
    assert probe["majority_baseline_accuracy"] == pytest.approx(counts.max() / 60)
    assert probe["majority_baseline_balanced_accuracy"] == pytest.approx(1 / 3)


def test_shortcut_probe_on_random_embeddings_stays_near_the_baseline() -> None:
    sources, patients = _sources_and_patients(300, 3, seed=3)
    x = np.random.default_rng(4).normal(size=(300, 16))
    probe: dict[str, Any] = shortcut_probe(x, sources, patients)
    assert abs(probe["accuracy"] - probe["majority_baseline_accuracy"]) < 0.12
    assert abs(probe["balanced_accuracy"] - 1 / 3) < 0.12


def test_shortcut_probe_never_puts_a_patient_on_both_sides() -> None:
    # Each patient's two images are identical and the source is random per patient: a probe
    # whose folds split patients would memorise them and score well above chance.
    sources, patients = _sources_and_patients(200, 2, seed=5)
    rng = np.random.default_rng(6)
    per_patient = rng.normal(size=(100, 64))
    x = np.repeat(per_patient, 2, axis=0)
    probe: dict[str, Any] = shortcut_probe(x, sources, patients)
    assert probe["balanced_accuracy"] < 0.65


def test_shortcut_probe_falls_back_with_a_reason() -> None:
    x = np.random.default_rng(0).normal(size=(4, 3))
    one_source: dict[str, Any] = shortcut_probe(x, ["a"] * 4, ["p1", "p2", "p3", "p4"])
    assert one_source["accuracy"] is None and "one source" in one_source["note"]
    assert one_source["majority_baseline_accuracy"] == 1.0
    one_patient: dict[str, Any] = shortcut_probe(x, ["a", "b", "a", "b"], ["p"] * 4)
    assert one_patient["accuracy"] is None and "patient" in one_patient["note"]
    tiny: dict[str, Any] = shortcut_probe(x, ["a", "a", "a", "b"], ["p1", "p2", "p3", "p4"])  # a fold fitted on one source
    assert tiny["n_splits"] == 4 and 0.0 <= tiny["accuracy"] <= 1.0
    with pytest.raises(ValueError, match="one length"):
        shortcut_probe(x, ["a"] * 3, ["p"] * 4)

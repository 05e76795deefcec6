"""The similar-study index: build, save/load, deterministic queries, recall against brute force."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from monai_app.retrieval.index import (
    ReferenceItem,
    SimilarityIndex,
    exact_neighbours,
    pseudonymous_patient_key,
    recall_at_k,
    reference_uids,
)


def _items(n: int) -> list[ReferenceItem]:
    items = []
    for i in range(n):
        study, series, sop = reference_uids(f"images/x/{i}.png")
        items.append(ReferenceItem(study, series, sop, "1.2.840.10008.5.1.4.1.1.7",
                                   "covid" if i % 2 else "non_covid", "x", pseudonymous_patient_key(f"p{i}", "salt")))
    return items


@pytest.fixture(scope="module")
def embeddings() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(300, 32)).astype(np.float32)


def test_a_reference_item_is_its_own_nearest_neighbour(embeddings: np.ndarray) -> None:
    index = SimilarityIndex.build(embeddings, _items(len(embeddings)))
    for i in (0, 17, 299):
        nearest = index.query(embeddings[i], k=4)[0]
        assert nearest.position == i and nearest.distance == pytest.approx(0, abs=1e-3)


def test_queries_are_deterministic_across_builds_and_reloads(embeddings: np.ndarray, tmp_path: Path) -> None:
    items = _items(len(embeddings))
    first = SimilarityIndex.build(embeddings, items, seed=7)
    first.save(tmp_path / "index")
    again = SimilarityIndex.load(tmp_path / "index")
    query = embeddings[5] + 0.1
    assert first.query(query, 4) == again.query(query, 4) == SimilarityIndex.build(embeddings, items, seed=7).query(query, 4)
    assert again.items == tuple(items) and again.metric == "angular"


def test_annoy_recall_against_exact_search_grows_with_trees(embeddings: np.ndarray) -> None:
    # Unstructured Gaussian vectors are Annoy's hardest case; real embeddings cluster.
    queries = np.random.default_rng(1).normal(size=(30, 32))
    few, many = (SimilarityIndex.build(embeddings, _items(len(embeddings)), n_trees=n) for n in (5, 100))
    assert recall_at_k(few, embeddings, queries, k=4) < recall_at_k(many, embeddings, queries, k=4)
    assert recall_at_k(many, embeddings, queries, k=4) >= 0.95


def test_exact_neighbours_match_brute_force_angular_distance() -> None:
    x = np.array([[1, 0], [0, 1], [1, 1]], dtype=float)
    assert exact_neighbours(x, np.array([2, 0.1]), k=3).tolist() == [0, 2, 1]
    assert exact_neighbours(x, np.array([2, 0.1]), k=1, metric="euclidean").tolist() == [0]


def test_reference_uids_are_deterministic_distinct_and_valid() -> None:
    a, b = reference_uids("images/a.png"), reference_uids("images/b.png")
    assert a == reference_uids("images/a.png") and len(set(a + b)) == 6
    assert all(uid.is_valid for uid in a)


def test_patient_key_hides_the_id_but_groups_the_patient() -> None:
    key = pseudonymous_patient_key("ieee8023_2", "s")
    assert key == pseudonymous_patient_key("ieee8023_2", "s") != pseudonymous_patient_key("ieee8023_3", "s")
    assert "ieee8023" not in key and len(key) == 16


def test_bad_inputs_are_refused(embeddings: np.ndarray) -> None:
    with pytest.raises(ValueError, match='"metric"'):
        SimilarityIndex.build(embeddings, _items(len(embeddings)), metric="cosine")
    with pytest.raises(ValueError, match='"embeddings"'):
        SimilarityIndex.build(embeddings[:10], _items(11))
    index = SimilarityIndex.build(embeddings, _items(len(embeddings)))
    with pytest.raises(ValueError, match='"embedding" must have 32 values'):
        index.query(np.zeros(31))

"""The classifier's bundle workflows (training, evaluation, index, retrieval, the whole run) on tiny real data.

The config checks that need no training are in ``tests/unit/test_classifier_configs.py``.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from monai_app.retrieval.index import SimilarityIndex
from testkit.bundle import (
    BUILD_INDEX,
    CLASSIFIER,
    CLASSIFIER_PROPERTIES,
    EVALUATE,
    INFERENCE_CLASSIFIER,
    METADATA,
    TRAIN,
    parser,
    workflow,
    write_tiny_full_dataset,
)
from testkit.bundle import CLASSIFIER_TINY as TINY
from testkit.images import assert_valid_png


@pytest.fixture(scope="module")
def trained(tiny_classification_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Output folder of one epoch of classifier training on the tiny data set."""
    out = tmp_path_factory.mktemp("cls_train_out")
    wf = workflow(
        CLASSIFIER, "train", "training_classifier", CLASSIFIER_PROPERTIES, dataset_dir=str(tiny_classification_dataset), cls_output_dir=str(out), **TINY
    )
    wf.initialize()
    assert wf.check_properties() == []
    wf.run()
    wf.finalize()
    yield out
    shutil.rmtree(out, ignore_errors=True)  # 0.4 GB of checkpoints; CI disks can be small


def test_classifier_training_runs_one_epoch_and_exports_fp16_weights(trained: Path) -> None:
    history = [json.loads(line) for line in (trained / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1]
    assert {"train_loss", "val_auc", "lr"} <= set(history[0])
    assert 0.0 <= history[0]["val_auc"] <= 1.0
    state = torch.load(trained / "classifier.pt", weights_only=True)
    assert state["fc3.weight"].shape == (2, 8) and state["fc3.weight"].dtype == torch.float16
    assert (trained / "classifier_best.pt").is_file() and list(trained.glob("*checkpoint_epoch=1.pt"))


def test_classifier_evaluation_writes_metrics_per_source_and_within_source(
    tiny_classification_dataset: Path, trained: Path, tmp_path: Path
) -> None:
    (tmp_path / "metrics.json").write_text(json.dumps({"segmentation": {"dice_mean": 0.9}}))
    wf = workflow(
        EVALUATE, "eval", "evaluating_classifier", CLASSIFIER_PROPERTIES, dataset_dir=str(tiny_classification_dataset),
        output_dir=str(tmp_path), cls_model_file=str(trained / "classifier.pt"),
        bootstrap_resamples=50, **TINY,
    )
    wf.initialize()
    assert wf.check_properties() == []
    wf.run()
    wf.finalize()
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics) == {"segmentation", "classifier"}
    cls = metrics["classifier"]
    assert cls["n"] == 6 and cls["n_positive"] == 3 and cls["n_negative"] == 3
    assert sum(map(sum, cls["confusion_matrix"])) == 6
    for name in ("accuracy", "sensitivity", "specificity", "roc_auc", "pr_auc"):
        assert 0.0 <= cls[name] <= 1.0
        assert cls[f"{name}_ci95"] is None or cls[f"{name}_ci95"][0] <= cls[f"{name}_ci95"][1]
    assert set(cls["per_source"]) == {"actualmed", "ieee8023", "nih_cxr14"}
    assert cls["per_source"]["nih_cxr14"]["roc_auc"] is None  # one label only: no AUC
    assert cls["within_source"]["sources"] == ["actualmed"] and cls["within_source"]["n"] == 2
    assert len((tmp_path / "classifier_per_image.csv").read_text().splitlines()) == 7
    for name in ("classifier_roc.png", "classifier_pr.png", "classifier_score_histogram.png"):
        assert_valid_png(tmp_path / name)


def test_ablation_without_the_lung_channel_goes_to_its_own_section(
    tiny_classification_dataset: Path, trained: Path, tmp_path: Path
) -> None:
    wf = workflow(
        EVALUATE, "eval", "evaluating_classifier", CLASSIFIER_PROPERTIES, dataset_dir=str(tiny_classification_dataset),
        output_dir=str(tmp_path), cls_model_file=str(trained / "classifier.pt"), cls_lung_channel="false",  # as the CLI passes it
        cls_report_section="ablation", bootstrap_resamples=50, **TINY,
    )
    wf.initialize()
    wf.run()
    wf.finalize()
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics) == {"ablation"} and metrics["ablation"]["n"] == 6
    assert_valid_png(tmp_path / "ablation_roc.png")
    assert (tmp_path / "ablation_per_image.csv").is_file()


def test_classifier_metadata_matches_the_network_and_loads_the_trained_weights(trained: Path) -> None:
    meta = json.loads(Path(METADATA).read_text())["classifier_network_data_format"]
    image, pred, embedding = meta["inputs"]["image"], meta["outputs"]["pred"], meta["outputs"]["embedding"]
    assert image["num_channels"] == 3 and set(image["channel_def"]) == {"0", "1", "2"}
    assert "lung" in image["channel_def"]["1"] and image["channel_def"]["2"] == "zeros"
    p = parser(INFERENCE_CLASSIFIER)
    assert p["cls_spatial_size"] == image["spatial_shape"] and p["cls_embedding_dim"] == embedding["num_channels"]
    net = p.get_parsed_content("network_def").eval()
    x = torch.rand(1, image["num_channels"], *image["spatial_shape"])
    with torch.no_grad():
        assert tuple(net(x).shape) == (1, pred["num_channels"])
        assert tuple(net.embed(x).shape) == (1, embedding["num_channels"])
    tiny = parser(INFERENCE_CLASSIFIER, cls_hidden_dim=TINY["cls_hidden_dim"], cls_embedding_dim=TINY["cls_embedding_dim"])
    small_net = tiny.get_parsed_content("network_def")
    state = torch.load(trained / "classifier.pt", weights_only=True)
    small_net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})


@pytest.fixture(scope="module")
def built_index(tiny_classification_dataset: Path, trained: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Index folder made by the bundle's `build_index` on the tiny training split."""
    out = tmp_path_factory.mktemp("cls_index")
    wf = workflow(
        BUILD_INDEX, "train", "build_index", CLASSIFIER_PROPERTIES, dataset_dir=str(tiny_classification_dataset),
        cls_output_dir=str(trained), cls_index_dir=str(out), cls_index_salt="test-salt", **TINY,
    )
    wf.initialize()
    wf.run()
    wf.finalize()
    return out


def _embeddings_of_training_images(tiny_classification_dataset: Path, trained: Path) -> tuple[list[dict], np.ndarray]:
    from monai_app.networks.classifier import load_classifier_weights
    from monai_app.retrieval.reference_set import compute_embeddings

    p = parser(TRAIN, dataset_dir=str(tiny_classification_dataset), **TINY)
    datalist = p.get_parsed_content("cls_index_datalist")
    net = load_classifier_weights(p.get_parsed_content("cls_network_def"), trained / "classifier.pt")
    return datalist, compute_embeddings(net, datalist, p.get_parsed_content("cls_preprocessing"))


def test_index_has_the_labelled_training_images_with_deterministic_uids(
    tiny_classification_dataset: Path, built_index: Path
) -> None:
    from monai_app.retrieval.index import SimilarityIndex, pseudonymous_patient_key, reference_uids

    index = SimilarityIndex.load(built_index)
    datalist = parser(TRAIN, dataset_dir=str(tiny_classification_dataset)).get_parsed_content("cls_index_datalist")
    assert len(index.items) == len(datalist) == 8  # the `unknown` training row is not indexed
    assert index.dimension == TINY["cls_embedding_dim"] and index.metric == "angular"
    for item, entry in zip(index.items, datalist):
        assert (item.study_instance_uid, item.series_instance_uid, item.sop_instance_uid) == tuple(
            reference_uids(entry["image_path"]))
        assert item.label == ("covid" if entry["label"] == 1 else "non_covid")
        assert item.source == entry["source"]
        assert item.patient_key == pseudonymous_patient_key(entry["patient_id"], "test-salt") != entry["patient_id"]


def test_a_training_image_is_its_own_nearest_neighbour_and_queries_are_deterministic(
    tiny_classification_dataset: Path, trained: Path, built_index: Path
) -> None:
    from monai_app.retrieval.index import SimilarityIndex

    index = SimilarityIndex.load(built_index)
    datalist, embeddings = _embeddings_of_training_images(tiny_classification_dataset, trained)
    assert len(np.unique(embeddings.round(5), axis=0)) == len(embeddings), "embeddings must tell images apart"
    for position, embedding in enumerate(embeddings):
        found = index.query(embedding, k=4)
        assert found[0].position == position and found[0].distance == pytest.approx(0.0, abs=1e-3)
        assert [n.distance for n in found] == sorted(n.distance for n in found)
    again = SimilarityIndex.load(built_index)
    assert [(n.position, n.distance) for n in again.query(embeddings[3], k=4)] == [
        (n.position, n.distance) for n in index.query(embeddings[3], k=4)]


def test_build_index_is_reproducible_and_needs_a_salt(
    tiny_classification_dataset: Path, trained: Path, built_index: Path, tmp_path: Path
) -> None:
    wf = workflow(
        BUILD_INDEX, "train", "build_index", CLASSIFIER_PROPERTIES, dataset_dir=str(tiny_classification_dataset),
        cls_output_dir=str(trained), cls_index_dir=str(tmp_path), cls_index_salt="test-salt", **TINY,
    )
    wf.initialize()
    wf.run()
    for name in ("index.ann", "items.csv", "index.json"):
        assert (tmp_path / name).read_bytes() == (built_index / name).read_bytes()
    unsalted = workflow(
        BUILD_INDEX, "train", "build_index", CLASSIFIER_PROPERTIES, dataset_dir=str(tiny_classification_dataset),
        cls_output_dir=str(trained), cls_index_dir=str(tmp_path / "x"), cls_index_salt="", **TINY,
    )
    unsalted.initialize()
    with pytest.raises(RuntimeError) as failure:
        unsalted.run()
    assert "salt" in repr(failure.value.__cause__)
    assert not (tmp_path / "x").exists()


def test_retrieval_evaluation_writes_its_section(
    tiny_classification_dataset: Path, trained: Path, built_index: Path, tmp_path: Path
) -> None:
    (tmp_path / "metrics.json").write_text(json.dumps({"classifier": {"n": 6}}))
    wf = workflow(
        EVALUATE, "eval", "evaluating_retrieval", CLASSIFIER_PROPERTIES, dataset_dir=str(tiny_classification_dataset),
        output_dir=str(tmp_path), cls_model_file=str(trained / "classifier.pt"), cls_index_dir=str(built_index),
        **TINY,
    )
    wf.initialize()
    wf.run()
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics) == {"classifier", "retrieval"}
    r = metrics["retrieval"]
    assert (r["k"], r["n"], r["n_reference"], r["metric"]) == (4, 6, 8, "angular")
    assert 0.0 <= r["vote_accuracy"] <= 1.0 and 0.0 <= r["recall_at_k"] <= 1.0
    assert r["query_ms_mean"] > 0.0
    probe = r["shortcut_probe"]
    assert set(probe) == {"target", "n", "n_classes", "n_groups", "n_splits", "accuracy", "balanced_accuracy",
                          "majority_baseline_accuracy", "majority_baseline_balanced_accuracy", "note"}
    assert (probe["target"], probe["n"], probe["n_classes"], probe["note"]) == ("source", 6, 3, None)
    assert 2 <= probe["n_splits"] <= probe["n_groups"] <= 6
    for name in ("accuracy", "balanced_accuracy", "majority_baseline_accuracy", "majority_baseline_balanced_accuracy"):
        assert 0.0 <= probe[name] <= 1.0
    assert probe["majority_baseline_accuracy"] == pytest.approx(1 / 3)  # 2 test images per source
    for name in ("embeddings_tsne.png", "retrieval_example_1.png", "retrieval_example_2.png"):
        assert_valid_png(tmp_path / name)
    assert not list(tmp_path.glob("retrieval_example_3.png"))
    report = (tmp_path / "metrics.json").read_text()
    with (tiny_classification_dataset / "manifest.csv").open(newline="") as handle:
        assert not [row for row in csv.DictReader(handle) if row["patient_id"] in report]


def test_retrieval_examples_find_every_indexed_image_in_the_reference_datalist(
    tiny_classification_dataset: Path, built_index: Path
) -> None:
    from monai_app.evaluation.retrieval import reference_image_paths
    from monai_app.retrieval.index import SimilarityIndex

    index = SimilarityIndex.load(built_index)
    datalist = parser(TRAIN, dataset_dir=str(tiny_classification_dataset)).get_parsed_content("cls_index_datalist")
    paths = reference_image_paths(datalist)
    assert set(paths) == {item.sop_instance_uid for item in index.items}
    assert all(Path(p).is_file() for p in paths.values())
    assert parser(EVALUATE)["retrieval_reference_datalist"] == "@cls_index_datalist"


def test_retrieval_vote_counts_neighbour_labels(tiny_classification_dataset: Path, trained: Path, built_index: Path) -> None:
    from monai_app.evaluation.retrieval import retrieval_metrics
    from monai_app.retrieval.index import SimilarityIndex

    index = SimilarityIndex.load(built_index)
    datalist, embeddings = _embeddings_of_training_images(tiny_classification_dataset, trained)
    r: dict[str, Any] = retrieval_metrics(index, embeddings, [d["label"] for d in datalist], k=1, reference_embeddings=embeddings)
    assert r["vote_accuracy"] == 1.0 and r["recall_at_k"] == 1.0  # each image finds itself
    flipped = retrieval_metrics(index, embeddings, [1 - d["label"] for d in datalist], k=1)
    assert flipped["vote_accuracy"] == 0.0
    assert r["mean_distance_other_label"] is None and r["mean_distance_same_label"] < 1e-3  # itself, at 0
    assert flipped["mean_distance_same_label"] is None


def test_run_training_trains_unet_then_classifier_on_its_lung_maps_then_builds_the_index(
    shared_data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    write_tiny_full_dataset(shared_data, data)
    unet_out, ssl_out, cls_out = tmp_path / "unet", tmp_path / "ssl", tmp_path / "cls"
    wf = workflow(
        TRAIN, "train", "training", dataset_dir=str(data), output_dir=str(unet_out), cls_output_dir=str(cls_out),
        ssl_output_dir=str(ssl_out), cls_index_salt="test-salt", spatial_size=[64, 64], num_epochs=1, batch_size=2,
        **TINY,
    )
    wf.initialize()
    with caplog.at_level(logging.INFO, logger="monai_app.networks.classifier"):
        wf.run()
    wf.finalize()
    assert (unet_out / "lung_unet.pt").is_file() and (cls_out / "classifier.pt").is_file()
    assert f"lung channel: U-Net weights {unet_out / 'lung_unet.pt'}" in caplog.text, "the classifier must use the new U-Net"
    assert "backbone initialised from backbone.pt" in caplog.text, "the classifier must start from the new backbone"
    assert (ssl_out / "backbone.pt").is_file()
    assert SimilarityIndex.load(cls_out / "index").items, "the index of the new classifier's embeddings"


def test_run_training_without_index_salt_stops_before_training(shared_data: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_tiny_full_dataset(shared_data, data)
    wf = workflow(TRAIN, "train", "training", dataset_dir=str(data), output_dir=str(tmp_path / "unet"),
                  cls_output_dir=str(tmp_path / "cls"), cls_index_salt="", **TINY)
    wf.initialize()
    with pytest.raises(RuntimeError) as failure:
        wf.run()
    assert "CXR_INDEX_SALT" in str(failure.value.__cause__)
    assert not (tmp_path / "unet" / "history.jsonl").exists()

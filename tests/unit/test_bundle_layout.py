"""The bundle's configs stay wiring only: one file per stage, standard inference IDs, no logic.

The choices the configs used to make in expressions live in :mod:`monai_app.workflows` and
:mod:`monai_app.handlers`; these tests pin both the layout and those choices.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from monai_app.workflows import INDEX_SALT_ENV, backbone_if_present, index_salt, trained_or_shipped
from testkit.bundle import (
    BUILD_INDEX,
    CALIBRATE,
    CLASSIFIER,
    CONFIGS,
    CROSS_VALIDATE,
    EVALUATE,
    INFERENCE,
    INFERENCE_CLASSIFIER,
    METADATA,
    PRETRAIN,
    SEGMENTATION,
    STAGE_FILES,
    TRAIN,
    parser,
)

RUN_KEYS = [  # (stacking, run key) of every documented command
    (SEGMENTATION, "training_segmentation"),
    (PRETRAIN, "pretraining"),
    (CLASSIFIER, "training_classifier"),
    (BUILD_INDEX, "build_index"),
    (TRAIN, "training"),
    (EVALUATE, "evaluating"),
    (EVALUATE, "evaluating_classifier"),
    (EVALUATE, "calibrating_threshold"),
    (EVALUATE, "evaluating_retrieval"),
    (CALIBRATE, "calibrating"),
    (CROSS_VALIDATE, "cross_validating"),
    (INFERENCE, "run"),
    (INFERENCE_CLASSIFIER, "run"),
]
FORBIDDEN = ("lambda", "os.path", "os.environ", "import os", "exists(")


def _config_text(path: Path) -> str:
    """A config without its comments (they may name what the code does)."""
    return "\n".join(line.split("#", 1)[0] if line.lstrip().startswith("#") else line
                     for line in path.read_text().splitlines())


def test_the_configs_are_one_file_per_stage_over_common() -> None:
    names = {p.name for p in STAGE_FILES}
    assert names == {"common.yaml", "train_segmentation.yaml", "pretrain.yaml", "train_classifier.yaml",
                     "build_index.yaml", "train.yaml", "evaluate.yaml", "calibrate.yaml", "cross_validate.yaml", "inference.yaml",
                     "inference_classifier.yaml"}


@pytest.mark.parametrize("path", STAGE_FILES, ids=lambda p: p.name)
def test_no_logic_creeps_back_into_a_config(path: Path) -> None:
    text = _config_text(path)
    for word in FORBIDDEN:
        assert word not in text, f"{path.name} has {word!r}: move the choice into monai_app"
    assert "ResumeFromCheckpoint" not in text and "save_interval" not in text, (
        "checkpoint + resume is one handler: monai_app.handlers.TrainingCheckpoint")
    for call in re.findall(r"\$[\w.@#]+\((.*)\)", text):
        assert call.count("=") <= 3, f"{path.name}: a long call; make it a component with keys"


@pytest.mark.parametrize(("stack", "run_key"), RUN_KEYS, ids=lambda v: v if isinstance(v, str) else Path(v[-1]).stem)
def test_each_stage_parses_and_has_its_run_key(stack: list[str], run_key: str) -> None:
    p = parser(stack)
    assert run_key in p.get(), f"{Path(stack[-1]).name} lacks {run_key}"
    run_keys = {key for _, key in RUN_KEYS}
    for step in p[run_key]:
        called = re.findall(r"@(\w+)", str(step))
        assert not run_keys & set(called), f"{run_key} calls another run list: {step}"


def test_each_training_stage_lists_its_checkpoint_once() -> None:
    for stack, section in ((SEGMENTATION, "train"), (PRETRAIN, "ssl_train"), (CLASSIFIER, "cls_train")):
        targets = [h["_target_"] for h in parser(stack)[f"{section}#handlers"]]
        assert targets.count("monai_app.handlers.TrainingCheckpoint") == 1, section
        assert "CheckpointSaver" not in targets and "CheckpointLoader" not in targets


@pytest.mark.parametrize("stack", [INFERENCE, INFERENCE_CLASSIFIER], ids=["inference", "inference_classifier"])
def test_inference_configs_have_monai_standard_ids(stack: list[str]) -> None:
    """The IDs MONAI Deploy's MonaiBundleInferenceOperator and ``monai.bundle`` commands read."""
    p = parser(stack)
    for key in ("network_def", "network", "preprocessing", "inferer", "postprocessing", "device", "bundle_root",
                "dataset", "evaluator"):
        assert key in p.get(), key
    assert type(p.get_parsed_content("preprocessing")).__name__ == "Compose"
    assert type(p.get_parsed_content("postprocessing")).__name__ == "Compose"


def test_the_node_reads_the_classifier_threshold_from_its_inference_config() -> None:
    p = parser(INFERENCE_CLASSIFIER)
    calibration = p.get_parsed_content("calibration")
    assert calibration.raw_threshold == p.get_parsed_content("cls_threshold") == 0.13
    assert p.get_parsed_content("threshold") == calibration.threshold == calibration.map_threshold(0.13)
    assert Path(p.get_parsed_content("model_file")).name == "classifier.int8.xz"
    assert Path(p.get_parsed_content("cls_lung_model_file")).name == "lung_unet.pt"


def test_trained_unet_is_used_when_present_else_the_shipped_one(tmp_path: Path) -> None:
    trained, shipped = tmp_path / "lung_unet.pt", tmp_path / "shipped.pt"
    assert trained_or_shipped(trained, shipped) == str(shipped)
    trained.write_bytes(b"weights")
    assert trained_or_shipped(trained, shipped) == str(trained)
    p = parser(CLASSIFIER, output_dir=str(tmp_path))
    assert p.get_parsed_content("cls_lung_model_file") == str(trained)
    assert parser(CLASSIFIER, output_dir=str(tmp_path / "none")).get_parsed_content("cls_lung_model_file").endswith(
        "models/lung_unet.pt")
    assert parser(PRETRAIN, output_dir=str(tmp_path)).get_parsed_content("cls_lung_model_file") == str(trained)


def test_ssl_backbone_is_the_start_only_when_present(tmp_path: Path) -> None:
    backbone = tmp_path / "backbone.pt"
    assert backbone_if_present(backbone) is None
    backbone.write_bytes(b"weights")
    assert backbone_if_present(backbone) == str(backbone)


def test_index_salt_comes_from_the_environment_unless_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(INDEX_SALT_ENV, raising=False)
    with pytest.raises(ValueError, match=INDEX_SALT_ENV):
        index_salt()
    with pytest.raises(ValueError, match="salt"):
        index_salt("")
    monkeypatch.setenv(INDEX_SALT_ENV, "from-env")
    assert index_salt() == "from-env" and index_salt("given") == "given"
    assert parser(BUILD_INDEX)["cls_index_salt"] is None, "the config leaves the salt to the environment"


def test_clamp_transform_is_the_old_lambda_clamp() -> None:
    from monai.data import MetaTensor

    from monai_app.transforms.dictionary import ClampIntensityd

    torch.manual_seed(0)
    x = MetaTensor(torch.randn(1, 8, 8) * 2, meta={"filename_or_obj": "x.png"})
    out = ClampIntensityd("image")({"image": x})["image"]
    assert isinstance(out, MetaTensor)
    assert torch.equal(out.as_tensor(), x.as_tensor().clamp(0.0, 1.0))
    assert out.meta["filename_or_obj"] == "x.png"


def test_step_loss_is_the_loss_of_the_step() -> None:
    from monai_app.handlers import step_loss

    assert step_loss({"loss": torch.tensor(0.5), "pred": torch.zeros(1)}) == 0.5


def test_metadata_lists_the_bundles_packages_and_this_version() -> None:
    meta = json.loads(Path(METADATA).read_text())
    packages = meta["required_packages_version"]
    assert {"annoy": "1.17.3", "scikit-learn": "1.9.1", "pillow": "13.0.0"}.items() <= packages.items()
    assert "highdicom" not in packages
    assert meta["version"] in meta["changelog"] and meta["version"] == "0.10.0"
    ConfigParser.load_config_file(CONFIGS / "metadata.json")  # valid JSON for monai.bundle


def test_classifier_inference_runs_and_writes_predictions(shared_data: Path, tmp_path: Path) -> None:
    import csv

    from testkit.bundle import workflow

    image = sorted((shared_data / "images/nih_cxr14").iterdir())[0]
    wf = workflow(INFERENCE_CLASSIFIER, "infer", "run", dataset_dir=str(image), output_dir=str(tmp_path))
    wf.initialize()
    wf.run()
    wf.finalize()
    with (tmp_path / "predictions.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["image"] for r in rows] == [image.name]
    assert 0.0 <= float(rows[0]["covid_probability"]) <= 1.0
    threshold = parser(INFERENCE_CLASSIFIER).get_parsed_content("threshold")  # on the calibrated probability
    assert rows[0]["positive"] == str(int(float(rows[0]["covid_probability"]) >= threshold))

"""The classifier's bundle configs, parsed (no training): splits, augmentations, train/inference agreement.

The workflows themselves run in ``tests/integration/test_classifier_bundle.py``.
"""

from __future__ import annotations

from collections.abc import Hashable
from pathlib import Path

import torch

from testkit.bundle import INFERENCE_CLASSIFIER, TRAIN, parser


def test_lung_channel_switch_puts_zeros_in_place_of_the_lung_map() -> None:
    from monai_app.transforms.classifier_input import ClassifierInputd

    data: dict[Hashable, object] = {"image": torch.full((1, 4, 4), 0.5), "lung": torch.ones(1, 4, 4)}
    with_lung = ClassifierInputd("image", use_lung=True)(data)["image"]
    without = ClassifierInputd("image", use_lung=False)(data)["image"]
    assert isinstance(with_lung, torch.Tensor) and isinstance(without, torch.Tensor)
    assert with_lung[1].sum() == 16 and without[1].sum() == 0 and torch.equal(with_lung[0], without[0])


def test_classifier_training_never_selects_on_test_rows() -> None:
    p = parser(TRAIN)
    assert "test" not in p["cls_train_splits"] and p["cls_val_split"] == "val"
    assert "within_source_items" in p["cls_val_datalist"], "the checkpoint is chosen within source"


def test_augmentations_follow_the_paper() -> None:
    p = parser(TRAIN)
    probs = {k: p[k] for k in p.get().keys() if k.startswith("cls_aug_") and k.endswith("_prob")}
    assert probs == {
        "cls_aug_brighten_prob": 0.4, "cls_aug_gamma_prob": 0.3, "cls_aug_clahe_prob": 0.4,
        "cls_aug_rotate_prob": 0.4, "cls_aug_shear_prob": 0.4, "cls_aug_scale_prob": 0.4,
        "cls_aug_flip_prob": 0.5, "cls_aug_sharpen_prob": 0.2, "cls_aug_blur_prob": 0.2,
    }
    assert p["cls_weight_decay"] == 0.01
    steps = [t.__class__.__name__ for t in p.get_parsed_content("cls_augmentation_transforms", instantiate=True)]
    assert steps[:7] == ["RandScaleIntensityd", "RandAdjustContrastd", "RandClahed", "RandRotated",
                         "RandAffined", "RandZoomd", "RandFlipd"]


def test_train_and_inference_configs_define_the_same_classifier() -> None:
    keys = ("cls_spatial_size", "cls_lung_spatial_size", "cls_hidden_dim", "cls_embedding_dim",
            "cls_dropout", "cls_clahe", "cls_clahe_clip_limit", "lung_channels", "lung_num_res_units")
    train, infer = parser(TRAIN), parser(INFERENCE_CLASSIFIER)
    assert {k: train[k] for k in keys} == {k: infer[k] for k in keys}
    assert infer["network_def"] == "@cls_network_def" and infer["preprocessing"] == "@cls_preprocessing"


def test_train_and_inference_preprocessing_give_the_same_classifier_input(shared_data: Path) -> None:
    from monai.transforms import Compose

    image_path = str(sorted((shared_data / "images/actualmed").iterdir())[0])
    small = {"cls_spatial_size": [64, 64]}
    train = parser(TRAIN, **small)
    steps = Compose(train.get_parsed_content("cls_deterministic_transforms")
                    + train.get_parsed_content("cls_input_transforms"))
    served = parser(INFERENCE_CLASSIFIER, **small).get_parsed_content("preprocessing")
    trained_item, served_item = steps({"image": image_path}), served({"image": image_path})
    assert tuple(served_item["image"].shape) == (3, 64, 64)
    torch.testing.assert_close(torch.as_tensor(trained_item["image"]), torch.as_tensor(served_item["image"]))
    assert float(served_item["image"][1].max()) > 0.5, "the lung channel must show lungs"
    assert not served_item["image"][2].any()


def test_dicom_reference_keeps_its_own_uids(shared_data: Path) -> None:
    import pydicom

    from monai_app.retrieval.reference_set import reference_item

    path = shared_data / "dicom/fo-dicom/CR-MONO1-10-chest.dcm"
    header = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    item = reference_item({"image": str(path), "image_path": "x.dcm", "label": 1, "source": "hospital",
                           "patient_id": "P1"}, salt="s")
    assert (item.study_instance_uid, item.series_instance_uid, item.sop_instance_uid, item.sop_class_uid) == (
        header.StudyInstanceUID, header.SeriesInstanceUID, header.SOPInstanceUID, header.SOPClassUID)
    assert item.label == "covid" and item.source == "hospital"

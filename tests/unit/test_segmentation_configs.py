"""The bundle's segmentation configs, parsed (no training): metadata, and train/inference agreement.

The workflows themselves run in ``tests/integration/test_bundle_configs.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from PIL import Image

from testkit.bundle import INFERENCE, METADATA, TRAIN, parser


def test_metadata_matches_the_network_input_and_output() -> None:
    meta = json.loads(Path(METADATA).read_text())["network_data_format"]
    image, pred = meta["inputs"]["image"], meta["outputs"]["pred"]
    p = parser(INFERENCE)
    assert p["spatial_size"] == image["spatial_shape"] == parser(TRAIN)["spatial_size"]
    net = p.get_parsed_content("network_def").eval()
    x = torch.zeros(1, image["num_channels"], *image["spatial_shape"], dtype=getattr(torch, image["dtype"]))
    with torch.no_grad():
        y = net(x)
    assert tuple(y.shape) == (1, pred["num_channels"], *pred["spatial_shape"])
    assert y.dtype == getattr(torch, pred["dtype"])


def test_train_and_inference_configs_define_the_same_network() -> None:
    keys = ("lung_channels", "lung_num_res_units", "spatial_size", "clahe", "clahe_clip_limit")
    train, infer = parser(TRAIN), parser(INFERENCE)
    assert {k: train[k] for k in keys} == {k: infer[k] for k in keys}
    assert train["network_def"] == infer["network_def"] == "@lung_network_def"


def test_train_and_inference_preprocessing_give_the_same_image(
    shared_data: Path, tmp_path: Path
) -> None:
    from monai.transforms import Compose

    image_path = sorted((shared_data / "images/ieee8023").iterdir())[3]
    Image.new("L", Image.open(image_path).size).save(tmp_path / "mask.png")
    train_steps = Compose(parser(TRAIN).get_parsed_content("lung_deterministic_transforms"))
    infer_steps = parser(INFERENCE).get_parsed_content("preprocessing")
    trained_item = train_steps({"image": str(image_path), "label": str(tmp_path / "mask.png")})
    served_item = infer_steps({"image": str(image_path)})
    assert tuple(served_item["image"].shape) == (1, 256, 256)
    torch.testing.assert_close(trained_item["image"].as_tensor(), served_item["image"].as_tensor())


def test_monai_verify_net_in_out_accepts_the_metadata() -> None:
    from monai.bundle import verify_net_in_out

    verify_net_in_out(
        net_id="network_def", meta_file=METADATA, config_file=INFERENCE,
        bundle_root=str(Path(METADATA).parents[1]),
    )


def test_node_can_drop_the_loader_and_feed_a_decoded_array(shared_data: Path) -> None:
    """As MONAI Deploy's bundle operator does: everything after the loader works on arrays."""
    from monai.transforms import Compose

    from monai_app.data.dicom_image import read_dicom_image
    from monai_app.transforms.dictionary import LoadChestXrayd

    path = shared_data / "dicom/fo-dicom/CR-MONO1-10-chest.dcm"
    steps = parser(INFERENCE).get_parsed_content("preprocessing")
    assert isinstance(steps.transforms[0], LoadChestXrayd)
    without_loader = Compose(steps.transforms[1:])
    fed = without_loader({"image": torch.from_numpy(read_dicom_image(path)[None])})
    loaded = steps({"image": str(path)})
    torch.testing.assert_close(torch.as_tensor(fed["image"]), loaded["image"].as_tensor())

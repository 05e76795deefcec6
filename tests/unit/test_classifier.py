"""The COVID-19 classifier network and the transforms that build its 3-channel input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from monai.data import CacheDataset, MetaTensor
from monai.transforms import Compose, Resized

from monai_app.data.manifest import classification_datalist
from monai_app.networks.classifier import CovidClassifier
from monai_app.networks.lung_unet import load_lung_network
from monai_app.transforms.classifier_input import ClassifierInputd, LungProbabilityd, RandClahed
from monai_app.transforms.dictionary import CropBordersd, LoadChestXrayd, PadToSquared
from testkit.bundle import BUNDLE

LUNG_WEIGHTS = BUNDLE / "models" / "lung_unet.pt"


@pytest.fixture(scope="module")
def classifier() -> CovidClassifier:
    torch.manual_seed(0)
    return CovidClassifier(hidden_dim=64, embedding_dim=16).eval()


def test_forward_gives_two_logits_and_embed_the_last_hidden_layer(classifier: CovidClassifier) -> None:
    x = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        logits, embedding = classifier(x), classifier.embed(x)
        expected = classifier.fc3(embedding)
    assert logits.shape == (3, 2)
    assert embedding.shape == (3, 16) and (embedding >= 0).all()
    torch.testing.assert_close(logits, expected)


def test_backbone_returns_pooled_2048_features(classifier: CovidClassifier) -> None:
    with torch.no_grad():
        assert classifier.backbone(torch.rand(2, 3, 64, 64)).shape == (2, 2048)
    assert classifier.backbone.fc is None


def test_eval_outputs_are_deterministic_and_training_mode_uses_dropout(classifier: CovidClassifier) -> None:
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(classifier.embed(x), classifier.embed(x))
    net = CovidClassifier(hidden_dim=64, embedding_dim=16, dropout=0.5)
    net.load_state_dict(classifier.state_dict())
    net.train()
    for module in net.modules():  # keep batch norm statistics fixed; only dropout differs
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eval()
    with torch.no_grad():
        assert not torch.allclose(net(x), net(x))


def test_default_sizes_and_argument_checks() -> None:
    net = CovidClassifier()
    assert (net.fc1.in_features, net.fc1.out_features, net.fc2.out_features, net.fc3.out_features) == (2048, 512, 128, 2)
    assert net.embedding_dim == 128
    with pytest.raises(ValueError, match="dropout"):
        CovidClassifier(dropout=1.0)
    with pytest.raises(ValueError, match="embedding_dim"):
        CovidClassifier(embedding_dim=0)


def test_lung_channel_is_the_unet_sigmoid_output(shared_data: Path) -> None:
    path = sorted((shared_data / "images/ieee8023").iterdir())[3]
    prepared = Compose([
        LoadChestXrayd(keys="image"), CropBordersd(keys="image"), PadToSquared(keys="image"),
        Resized(keys="image", spatial_size=(256, 256), mode="area"),
    ])({"image": str(path)})
    out = LungProbabilityd(keys="image", model_file=LUNG_WEIGHTS)(prepared)
    lung = out["lung"]
    assert isinstance(lung, MetaTensor)
    net = load_lung_network(LUNG_WEIGHTS)
    assert not any(p.requires_grad for p in net.parameters()) and not net.training
    with torch.no_grad():
        expected = torch.sigmoid(net(prepared["image"].as_tensor()[None].float()))[0]
    assert lung.shape == (1, 256, 256)
    torch.testing.assert_close(lung.as_tensor(), expected)
    lung_fraction = float((lung > 0.5).float().mean())
    assert 0.1 < lung_fraction < 0.7, "the shipped U-Net must find lungs on a real chest X-ray"


def test_classifier_input_stacks_image_lung_and_zeros() -> None:
    image, lung = torch.rand(1, 8, 8), torch.rand(1, 8, 8)
    out = ClassifierInputd(keys="image")({"image": image, "lung": lung, "label": 1})
    assert "lung" not in out and out["label"] == 1
    stacked = out["image"]
    assert isinstance(stacked, torch.Tensor)
    torch.testing.assert_close(stacked[0], image[0])
    torch.testing.assert_close(stacked[1], lung[0])
    assert stacked.shape == (3, 8, 8) and not stacked[2].any()
    with pytest.raises(ValueError, match="lung map"):
        ClassifierInputd(keys="image")({"image": image, "lung": torch.rand(1, 4, 4)})


def test_lung_map_is_cached_by_cache_dataset(shared_data: Path) -> None:
    items = classification_datalist(shared_data / "manifest.csv", shared_data, "train")[:2]
    lung = LungProbabilityd(keys="image", model_file=LUNG_WEIGHTS, spatial_size=(64, 64))
    steps = Compose([
        LoadChestXrayd(keys="image"), CropBordersd(keys="image"), PadToSquared(keys="image"),
        Resized(keys="image", spatial_size=(64, 64), mode="area"), lung,
        ClassifierInputd(keys="image"),
    ])
    dataset = CacheDataset(items, steps, cache_rate=1.0, num_workers=0, progress=False)
    lung._network = None  # a cached item must not need the network again
    lung.model_file = Path("/nonexistent/lung_unet.pt")
    first = dataset[0]
    assert first["image"].shape == (3, 64, 64) and first["label"] in (0, 1)


def test_rand_clahe_applies_with_its_probability() -> None:
    image = torch.linspace(0.2, 0.4, 64 * 64).reshape(1, 64, 64)
    always, never = RandClahed(keys="image", prob=1.0), RandClahed(keys="image", prob=0.0)
    assert not torch.allclose(torch.as_tensor(always({"image": image})["image"]), image)
    torch.testing.assert_close(torch.as_tensor(never({"image": image})["image"]), image)


def test_classification_datalist_skips_unknown_labels(shared_data: Path) -> None:
    items = classification_datalist(shared_data / "manifest.csv", shared_data, ["val", "test"])
    assert {i["label"] for i in items} == {0, 1}
    assert all(Path(str(i["image"])).is_file() for i in items[:5])
    assert {i["source"] for i in items} >= {"ieee8023", "nih_cxr14"}
    with pytest.raises(ValueError, match="split"):
        classification_datalist(shared_data / "manifest.csv", shared_data, "holdout")


def test_int8_form_reads_back_close_to_the_weights_and_any_form_loads(tmp_path) -> None:
    import torch

    from monai_app.weights import export_int8, read_weights

    torch.manual_seed(0)
    state = {"conv.weight": torch.randn(8, 3, 3, 3), "fc.weight": torch.randn(4, 16), "bn.bias": torch.randn(8),
             "bn.num_batches_tracked": torch.tensor(5)}
    torch.save({"model": state}, tmp_path / "checkpoint.pt")
    export_int8(tmp_path / "checkpoint.pt", tmp_path / "weights.int8.xz")
    back = read_weights(tmp_path / "weights.int8.xz")
    assert set(back) == set(state) and back["bn.num_batches_tracked"].item() == 5
    for name in ("conv.weight", "fc.weight"):
        per_channel_max = state[name].abs().flatten(1).amax(1)
        error = (back[name] - state[name]).abs().flatten(1).amax(1)
        assert (error <= per_channel_max / 254 + 1e-6).all(), "at most half a quantisation step per channel"
    assert torch.allclose(back["bn.bias"].float(), state["bn.bias"], atol=1e-2)
    assert set(read_weights(tmp_path / "checkpoint.pt")) == set(state)

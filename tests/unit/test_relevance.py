"""Grad-CAM of the classifier (random weights, small head) and the region of highest relevance."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.visualize import GradCAM

from monai_app.networks.classifier import CovidClassifier
from monai_app.relevance import TARGET_LAYER, GradCamRelevance, grad_cam_from_feature_maps, layer_output, unit_range
from monai_app.transforms.regions import relevance_region


@pytest.fixture(scope="module")
def network() -> CovidClassifier:
    torch.manual_seed(3)
    return CovidClassifier(hidden_dim=16, embedding_dim=8, dropout=0.0).eval()


@pytest.fixture(scope="module")
def relevance(network: CovidClassifier) -> GradCamRelevance:
    return GradCamRelevance(network)


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    """Two inputs: faint noise with a bright square, top left in one, bottom right in the other."""
    torch.manual_seed(4)
    x = 0.1 * torch.rand(2, 3, 224, 224)
    x[0, :, 20:80, 20:80] += 0.9
    x[1, :, 140:200, 130:190] += 0.9
    return x


def test_maps_have_the_input_grid_and_unit_range(relevance: GradCamRelevance, batch: torch.Tensor) -> None:
    maps = relevance(batch)
    assert maps.shape == (2, 224, 224) and maps.dtype == np.float32
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    assert all(m.max() == 1.0 for m in maps), "each map is scaled to its own maximum"


def test_maps_are_deterministic_and_per_image(relevance: GradCamRelevance, batch: torch.Tensor) -> None:
    maps = relevance(batch)
    np.testing.assert_array_equal(maps, relevance(batch))
    np.testing.assert_allclose(relevance(batch[1:2])[0], maps[1], atol=1e-5)


def test_a_map_depends_on_the_input(relevance: GradCamRelevance, batch: torch.Tensor) -> None:
    maps = relevance(batch)
    assert all(m.std() > 0.05 for m in maps), "not constant"
    assert np.abs(maps[0] - maps[1]).mean() > 0.05


def test_the_shortcut_gives_monai_s_plain_grad_cam(
    relevance: GradCamRelevance, network: CovidClassifier, batch: torch.Tensor
) -> None:
    # Frozen parameters and a leaf at the target layer only skip work: the same maps as
    # MONAI's GradCAM backpropagating through the whole network.
    fresh = CovidClassifier(hidden_dim=16, embedding_dim=8, dropout=0.0)  # a copy would share the hooks
    fresh.load_state_dict(network.state_dict())
    plain = GradCAM(fresh.eval(), target_layers=TARGET_LAYER, postprocessing=unit_range)
    expected = plain(batch, class_idx=1)[:, 0].detach().numpy()
    np.testing.assert_allclose(relevance(batch), expected, atol=1e-5)


def test_the_network_is_left_as_it_was(relevance: GradCamRelevance, network: CovidClassifier, batch: torch.Tensor) -> None:
    before = {k: v.clone() for k, v in network.state_dict().items()}
    flags = [p.requires_grad for p in network.parameters()]
    with torch.inference_mode():
        logits = network(batch[:1])
    layer = network.get_submodule(TARGET_LAYER)
    hooks = (len(layer._forward_hooks), len(layer._backward_hooks))
    relevance(batch[:1])
    assert all(torch.equal(before[k], v) for k, v in network.state_dict().items())
    assert [p.requires_grad for p in network.parameters()] == flags
    assert all(p.grad is None for p in network.parameters())
    assert (len(layer._forward_hooks), len(layer._backward_hooks)) == hooks, "no hooks added per call"
    assert not relevance._cam.nn_module.activations and not relevance._cam.nn_module.gradients
    with torch.inference_mode():
        assert torch.equal(network(batch[:1]), logits), "the hooks do not change a forward pass"


def test_inference_mode_is_refused(relevance: GradCamRelevance, batch: torch.Tensor) -> None:
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        relevance(batch)


def test_an_unknown_target_layer_is_refused(network: CovidClassifier) -> None:
    with pytest.raises(ValueError, match="no module"):
        GradCamRelevance(network, target_layer="backbone.layer9")


def test_unit_range_keeps_the_maximum_at_one_and_flat_maps_at_zero() -> None:
    maps = torch.tensor([[[0.0, 2.0], [4.0, 1.0]], [[3.0, 3.0], [3.0, 3.0]]])[:, None]
    expected = np.array([[[0.0, 0.5], [1.0, 0.25]], [[0.0, 0.0], [0.0, 0.0]]])
    np.testing.assert_allclose(unit_range(maps)[:, 0].numpy(), expected)


def _ellipse(shape: tuple[int, int], centre: tuple[float, float], semi: tuple[float, float], angle: float) -> np.ndarray:
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]] + 0.5
    dr, dc = rows - centre[0], cols - centre[1]
    u = dr * np.cos(angle) + dc * np.sin(angle)
    v = -dr * np.sin(angle) + dc * np.cos(angle)
    return ((u / semi[0]) ** 2 + (v / semi[1]) ** 2 <= 1.0).astype(np.float64)


def test_the_region_of_a_filled_ellipse_is_its_edge() -> None:
    centre, semi, angle = (100.0, 80.0), (40.0, 15.0), np.pi / 6
    outline = relevance_region(_ellipse((224, 224), centre, semi, angle), n_points=64)
    assert outline is not None and outline.shape == (65, 2)
    np.testing.assert_array_equal(outline[0], outline[-1])
    dr, dc = outline[:, 0] - centre[0], outline[:, 1] - centre[1]
    u = dr * np.cos(angle) + dc * np.sin(angle)
    v = -dr * np.sin(angle) + dc * np.cos(angle)
    radius = np.sqrt((u / semi[0]) ** 2 + (v / semi[1]) ** 2)
    np.testing.assert_allclose(radius, 1.0, atol=0.03)


def test_the_region_is_the_component_of_the_maximum() -> None:
    relevance = 0.6 * _ellipse((224, 224), (150, 150), (50, 50), 0.0)  # larger, weaker
    relevance += 0.9 * _ellipse((224, 224), (40, 40), (10, 10), 0.0)
    outline = relevance_region(relevance, level=0.5)
    assert outline is not None
    np.testing.assert_allclose(outline[:-1].mean(axis=0), [40, 40], atol=0.5)
    assert np.all(np.abs(outline - 40) <= 11)


def test_the_region_of_a_gaussian_is_its_half_maximum_circle() -> None:
    rows, cols = np.mgrid[0:224, 0:224] + 0.5
    sigma = 12.0
    relevance = np.exp(-((rows - 90) ** 2 + (cols - 130) ** 2) / (2 * sigma**2))
    outline = relevance_region(relevance)
    assert outline is not None
    half_maximum_radius = sigma * np.sqrt(2 * np.log(2))
    np.testing.assert_allclose(np.hypot(outline[:, 0] - 90, outline[:, 1] - 130), half_maximum_radius, rtol=0.03)


def test_the_region_is_clipped_to_the_grid_or_the_bounds() -> None:
    relevance = _ellipse((224, 224), (5, 112), (30, 30), 0.0)
    outline = relevance_region(relevance)
    assert outline is not None and outline[:, 0].min() == 0.0 and outline.max() <= 224.0
    bounded = relevance_region(relevance, bounds=(10.0, 224.0, 100.0, 124.0))
    assert bounded is not None
    assert bounded[:, 0].min() == 10.0 and bounded[:, 1].min() >= 100.0 and bounded[:, 1].max() <= 124.0


def test_a_single_pixel_gives_a_pixel_sized_region() -> None:
    relevance = np.zeros((224, 224))
    relevance[50, 60] = 1.0
    outline = relevance_region(relevance)
    assert outline is not None
    np.testing.assert_allclose(np.hypot(outline[:, 0] - 50.5, outline[:, 1] - 60.5), 2 * np.sqrt(1 / 12))


@pytest.mark.parametrize("relevance", [np.zeros((224, 224)), np.full((224, 224), 0.7), -np.ones((8, 8))])
def test_a_flat_or_empty_map_has_no_region(relevance: np.ndarray) -> None:
    assert relevance_region(relevance) is None


def test_bad_maps_and_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="2-D"):
        relevance_region(np.zeros((2, 8, 8)))
    with pytest.raises(ValueError, match="finite"):
        relevance_region(np.full((8, 8), np.nan))
    with pytest.raises(ValueError, match="level"):
        relevance_region(np.eye(8), level=0.0)
    with pytest.raises(ValueError, match="n_points"):
        relevance_region(np.eye(8), n_points=3)


def test_the_maps_from_the_forward_pass_feature_maps_are_grad_cam_s(
    relevance: GradCamRelevance, network: CovidClassifier, batch: torch.Tensor
) -> None:
    # The node's way: layer4's maps kept from the classification pass (under inference_mode),
    # then the head alone differentiated. The same maps as a full Grad-CAM pass.
    with torch.inference_mode(), layer_output(network) as outputs:
        network.embed(batch)
    assert len(outputs) == 1 and outputs[0].shape == (2, 2048, 7, 7)
    maps = grad_cam_from_feature_maps(network, outputs[0], (224, 224))
    expected = relevance(batch)
    assert maps.shape == expected.shape == (2, 224, 224) and maps.dtype == np.float32
    np.testing.assert_allclose(maps, expected, atol=1e-5)
    assert all(p.grad is None and p.requires_grad for p in network.parameters())
    other_class = grad_cam_from_feature_maps(network, outputs[0], (224, 224), class_index=0)
    assert np.abs(other_class - maps).max() > 0.1, "the class explained matters"

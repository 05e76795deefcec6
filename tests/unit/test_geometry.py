"""The model grid mapped back onto the source image: crop, square padding and resize undone."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import EnsureTyped, Resize, Resized

from monai_app.transforms.classifier_input import ClassifierInputd
from monai_app.transforms.dictionary import Clahed, CropBordersd, PadToSquared
from monai_app.transforms.geometry import (
    CONTENT_BOX_KEY,
    SOURCE_SHAPE_KEY,
    SQUARE_PADDING_KEY,
    GridMap,
    ModelGrid,
    grid_from_meta,
    model_grid,
)
from monai_app.transforms.normalisation import Box, content_box, crop_to_box, pad_to_square

MODEL = (224, 224)


def _framed(shape: tuple[int, int], box: Box, pattern: str = "ramp") -> np.ndarray:
    """A source image: black frame, a pattern inside ``box`` (all of it brighter than the crop's threshold)."""
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64) + 0.5  # pixel centres
    if pattern == "ramp":
        values = 0.2 + 0.5 * rows / shape[0] + 0.25 * cols / shape[1]
    else:
        values = 0.5 + 0.3 * np.sin(rows / 23.0) * np.cos(cols / 17.0)
    image = np.zeros(shape, np.float32)
    image[box.top : box.bottom, box.left : box.right] = values[box.top : box.bottom, box.left : box.right]
    return image


def _to_model(image: np.ndarray) -> tuple[np.ndarray, Box]:
    """The bundle's geometric steps with the real functions: content box, crop, square pad, area resize."""
    box = content_box(image)
    square = pad_to_square(crop_to_box(image, box))
    resized = Resize(MODEL, mode="area")(torch.from_numpy(np.ascontiguousarray(square))[None])
    return np.asarray(resized)[0], box


@pytest.mark.parametrize(("shape", "box", "pattern", "tolerance"), [
    # Square side 448 = 2 x 224: area resizing averages whole 2 x 2 blocks, so a linear ramp
    # comes back exactly; a half-pixel slip of the mapping would leave ~ 1e-3.
    ((500, 400), Box(20, 468, 30, 370), "ramp", 1e-5),  # taller than wide: padded left and right
    ((420, 520), Box(40, 380, 36, 484), "ramp", 1e-5),  # wider than tall: padded top and bottom
    # Side 350 and 444: torch's area mode averages whole pixels (windows of 1 or 2 of them), so
    # even a ramp is only reproduced to within its slope times a fraction of a pixel.
    ((400, 300), Box(30, 380, 20, 290), "waves", 0.02),
    ((300, 480), Box(10, 290, 18, 462), "waves", 0.02),
])
def test_a_source_pattern_survives_the_round_trip(shape: tuple[int, int], box: Box, pattern: str, tolerance: float) -> None:
    image = _framed(shape, box, pattern)
    model, found = _to_model(image)
    assert found == box
    grid = model_grid(shape, found, MODEL)
    back = grid.to_source(model)
    assert back.shape == shape and back.dtype == np.float32
    # Away from the box edges, where model pixels mix content with the black padding.
    margin = int(np.ceil(2 * max(grid.padded_shape) / MODEL[0]))
    inner = (slice(box.top + margin, box.bottom - margin), slice(box.left + margin, box.right - margin))
    error = np.abs(back[inner] - image[inner]).max()
    assert error < tolerance, error
    assert np.all(back[: box.top] == 0.0) and np.all(back[:, box.right :] == 0.0)


def test_corners_and_box_edges_map_exactly() -> None:
    grid = model_grid((500, 360), Box(20, 480, 30, 330), MODEL)  # crop 460 x 300: 80 columns of padding each side
    assert grid.padding == ((0, 0), (80, 80)) and grid.padded_shape == (460, 460)
    corners = grid.points_to_source(np.array([[0.0, 0.0], [224.0, 224.0], [224.0, 0.0]]))
    np.testing.assert_allclose(corners, [[20, 30 - 80], [480, 330 + 80], [480, -50]], atol=1e-9)
    top, bottom, left, right = grid.content_bounds()
    np.testing.assert_allclose(
        grid.points_to_source(np.array([[top, left], [bottom, right]])), [[20, 30], [480, 330]], atol=1e-9
    )
    assert (top, bottom) == pytest.approx((0.0, 224.0)) and left == pytest.approx(80 * 224 / 460)
    # A model pixel centre lands on the source pixel whose centre is nearest the same place.
    centre = grid.points_to_source(np.array([[0.5, 112.5]]))[0]
    np.testing.assert_allclose(centre, [20 + 0.5 * 460 / 224, 112.5 * 460 / 224 - 50], atol=1e-9)


@pytest.mark.parametrize(("shape", "box"), [((300, 200), Box(0, 300, 0, 200)), ((200, 300), Box(5, 195, 12, 290))])
def test_points_go_to_source_and_back(shape: tuple[int, int], box: Box) -> None:
    grid = model_grid(shape, box, MODEL)
    points = np.random.default_rng(1).uniform(0, 224, (50, 2))
    np.testing.assert_allclose(grid.points_to_model(grid.points_to_source(points)), points, atol=1e-9)
    # Uniform scale on both axes (a square is resized to a square): shapes keep their proportions.
    scale = np.diff(grid.points_to_source(np.array([[0.0, 0.0], [1.0, 1.0]])), axis=0)[0]
    assert scale[0] == pytest.approx(scale[1]) == pytest.approx(max(box.bottom - box.top, box.right - box.left) / 224)


def test_a_model_pixel_lights_the_source_pixels_under_it() -> None:
    grid = model_grid((1000, 700), Box(0, 1000, 0, 700), MODEL)
    spot = np.zeros(MODEL, np.float32)
    spot[100, 40] = 1.0
    back = grid.to_source(spot)
    peak = np.unravel_index(np.argmax(back), back.shape)
    expected = grid.points_to_source(np.array([[100.5, 40.5]]))[0]
    assert np.all(np.abs(np.asarray(peak) + 0.5 - expected) <= 0.5 * 1000 / 224 + 0.5)


def test_pixels_outside_the_box_get_the_fill_value() -> None:
    grid = model_grid((120, 90), Box(10, 100, 5, 80), MODEL)
    back = grid.to_source(np.ones(MODEL, np.float32), fill=-1.0)
    inside = np.zeros((120, 90), bool)
    inside[10:100, 5:80] = True
    assert np.all(back[inside] == 1.0) and np.all(back[~inside] == -1.0)


def test_invalid_geometry_and_maps_are_refused() -> None:
    with pytest.raises(ValueError, match="outside the source"):
        ModelGrid((100, 100), Box(0, 120, 0, 100), ((0, 0), (10, 10)), MODEL)
    with pytest.raises(ValueError, match="empty"):
        model_grid((100, 100), Box(50, 50, 0, 100), MODEL)
    with pytest.raises(ValueError, match="model grid"):
        model_grid((100, 100), Box(0, 100, 0, 100), MODEL).to_source(np.zeros((100, 100)))


def test_the_preprocessing_records_its_geometry_to_the_classifier_input() -> None:
    image = _framed((400, 300), Box(30, 380, 20, 290))
    data: Any = {"image": MetaTensor(torch.from_numpy(image[None]), meta={"filename_or_obj": "x.png"})}
    data = CropBordersd("image")(data)
    data = PadToSquared("image")(data)
    data["lung"] = MetaTensor(data["image"].as_tensor().clone(), meta=dict(data["image"].meta))  # as LungProbabilityd
    for transform in (Resized(["image", "lung"], MODEL, mode=["area", "area"]), Clahed("image"),
                      EnsureTyped(["image", "lung"], dtype=torch.float32), ClassifierInputd("image")):
        data = transform(data)
    meta = data["image"].meta
    assert meta[SOURCE_SHAPE_KEY] == (400, 300) and meta[CONTENT_BOX_KEY] == (30, 380, 20, 290)
    assert meta[SQUARE_PADDING_KEY] == ((0, 0), (40, 40))
    assert all(type(v) is int for v in (*meta[CONTENT_BOX_KEY], *meta[SOURCE_SHAPE_KEY]))
    grid = grid_from_meta(meta, data["image"].shape[-2:])
    assert grid == model_grid((400, 300), Box(30, 380, 20, 290), MODEL)
    assert grid_from_meta({"filename_or_obj": "x.png"}, MODEL) is None


def test_a_map_goes_straight_onto_a_coarser_grid_over_the_source() -> None:
    # A ramp along the model's rows is linear, so bilinear sampling gives each coarse pixel's
    # model coordinate exactly: the coarse grid's centres mapped through crop, pad and resize.
    grid = model_grid((400, 300), Box(20, 380, 30, 270), (50, 50))
    ramp = np.repeat(np.arange(50, dtype=np.float32)[:, None], 50, axis=1)
    coarse = grid.to_grid(ramp, (100, 75), fill=-1.0)
    centres = (np.arange(100) + 0.5) * 4.0  # source rows of the coarse rows' centres
    inside = (centres >= 20) & (centres < 380)
    expected = np.clip(grid.points_to_model(np.column_stack([centres, np.full(100, 150.0)]))[:, 0] - 0.5, 0, 49)
    np.testing.assert_allclose(coarse[inside, 40], expected[inside], atol=1e-4)
    assert (coarse[~inside] == -1.0).all() and (coarse[:, :7] == -1.0).all()  # outside the content box
    np.testing.assert_array_equal(grid.to_grid(ramp, (400, 300)), grid.to_source(ramp))
    gridded = GridMap(grid, ramp, fill=-1.0)
    assert gridded.shape == (400, 300)
    np.testing.assert_array_equal(gridded.on(), grid.to_source(ramp, fill=-1.0))
    np.testing.assert_array_equal(gridded.on((100, 75)), coarse)
    with pytest.raises(ValueError, match="model grid"):
        grid.to_grid(np.zeros((10, 10)), (100, 75))

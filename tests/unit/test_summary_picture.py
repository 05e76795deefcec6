"""The summary picture: radiograph, relevance heatmap, lung contour and banner (pure rendering)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from dicom_node.report.sr import AlgorithmInfo, Finding
from dicom_node.report.summary_picture import (
    BANNER_RGB,
    CONTOUR_RGB,
    DISCLAIMER,
    RELEVANCE_FLOOR,
    _boundary,
    banner_lines,
    render_summary,
)
from monai_app.calibration import OperatingPoint
from monai_app.transforms.geometry import GridMap, model_grid
from monai_app.transforms.normalisation import Box
from testkit.derived import display_pixels, ellipses, lung_probability, relevance_blob
from testkit.sr import ALGORITHM, CANON_DX

BANNER = ["COVID-19: SUGGESTED (probability 71 % >= threshold 50 %)", "Model: m 1", DISCLAIMER]


def gradient(rows: int, cols: int) -> np.ndarray:
    """A grey test film: varied values, no colour."""
    y, x = np.mgrid[0:rows, 0:cols]
    return (40 + (x * 7 + y * 3) % 180).astype(np.uint8)


def picture_part(picture: np.ndarray, image_rows: int) -> np.ndarray:
    """The radiograph part of a picture (the banner sits above it)."""
    return picture[picture.shape[0] - image_rows:]


def is_grey(rgb: np.ndarray) -> np.ndarray:
    return (rgb[..., 0] == rgb[..., 1]) & (rgb[..., 1] == rgb[..., 2])


# --- banner_lines ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("finding", "first_line"),
    [
        (Finding(0.0645, 0.13), "COVID-19: NOT SUGGESTED (probability 6.5 % < threshold 13 %)"),
        (Finding(0.712, 0.13), "COVID-19: SUGGESTED (probability 71.2 % >= threshold 13 %)"),
        (Finding(0.13, 0.13), "COVID-19: SUGGESTED (probability 13 % >= threshold 13 %)"),
        # One decimal would read "13 % < threshold 13 %": more are shown, never a contradiction.
        (Finding(0.12996, 0.13), "COVID-19: NOT SUGGESTED (probability 12.996 % < threshold 13 %)"),
        (Finding(0.0, 0.125), "COVID-19: NOT SUGGESTED (probability 0 % < threshold 12.5 %)"),
    ],
)
def test_banner_states_verdict_probability_and_threshold(finding: Finding, first_line: str) -> None:
    assert banner_lines(finding, ALGORITHM)[0] == first_line


def test_banner_names_the_model_and_says_not_for_diagnostic_use() -> None:
    algorithm = AlgorithmInfo("cxr_covid_classifier", "0.7.0", "ab" * 32, "CXR AI node project")

    lines = banner_lines(Finding(0.4), algorithm)

    assert lines[1:] == [
        "no validation figures for this threshold; uncalibrated",
        "Model: cxr_covid_classifier 0.7.0",
        "AI result, not for diagnostic use",
    ]


def test_banner_gives_the_validation_operating_point_and_the_calibration() -> None:
    finding = Finding(0.71, 0.5153, OperatingPoint(0.8816, 0.7778, 94, "within_source"), "logistic (Platt) scaling, T = 1.32, b = +1.50")

    assert banner_lines(finding, ALGORITHM)[1] == (
        "Validation at this threshold: sensitivity 0.88, specificity 0.78; logistic (Platt) scaling, T = 1.32, b = +1.50"
    )


# --- Size and layout -------------------------------------------------------------------------


@pytest.mark.parametrize(("rows", "cols", "max_size"), [(2500, 2000, 2048), (2000, 2500, 2048), (2128, 2000, 512), (300, 200, 2048)])
def test_picture_is_rgb_uint8_within_max_size_and_keeps_the_aspect(rows: int, cols: int, max_size: int) -> None:
    picture = render_summary(gradient(rows, cols), None, None, BANNER, max_size=max_size)

    assert picture.dtype == np.uint8
    assert picture.ndim == 3 and picture.shape[2] == 3
    assert max(picture.shape[:2]) <= max_size
    height, width = picture.shape[:2]
    assert width <= cols  # never upscaled
    image_rows = round(rows * width / cols)
    banner_rows = height - image_rows
    assert 0 < banner_rows < height / 3
    assert picture_part(picture, image_rows).shape[0] == image_rows


def test_small_film_that_fits_is_copied_pixel_for_pixel_below_the_banner() -> None:
    film = gradient(300, 200)

    picture = render_summary(film, None, None, BANNER)

    assert picture.shape[1] == 200
    np.testing.assert_array_equal(picture_part(picture, 300), np.repeat(film[:, :, None], 3, axis=2))


def test_without_banner_the_picture_is_the_film_only() -> None:
    film = gradient(300, 200)

    assert render_summary(film, None, None, []).shape == (300, 200, 3)


def test_banner_is_dark_with_bright_text_and_scales_with_the_width() -> None:
    heights = {}
    for max_size in (512, 2048):
        picture = render_summary(gradient(2500, 2000), None, None, BANNER, max_size=max_size)
        image_rows = round(2500 * picture.shape[1] / 2000)
        band = picture[: picture.shape[0] - image_rows]
        heights[max_size] = band.shape[0]
        assert np.median(band) <= max(BANNER_RGB) + 1  # dark
        bright = (band >= 200).all(axis=2)
        assert bright.sum() > 0.01 * bright.size  # white text
        # Three lines of text, one in each third of the band.
        for third in np.array_split(bright, 3, axis=0):
            assert third.any()
    assert heights[2048] / heights[512] == pytest.approx(2048 / 512, rel=0.2)


# --- Heatmap ---------------------------------------------------------------------------------


def test_heat_only_where_relevance_exceeds_the_floor_elsewhere_the_film_unchanged() -> None:
    rows, cols = 400, 300
    film = gradient(rows, cols)
    relevance = relevance_blob(rows, cols, centre=(0.5, 0.3), radius=0.2)

    picture = picture_part(render_summary(film, relevance, None, BANNER), rows)

    hot = relevance > RELEVANCE_FLOOR + 0.05
    cold = relevance <= RELEVANCE_FLOOR
    assert (~is_grey(picture[hot])).mean() > 0.95
    np.testing.assert_array_equal(picture[cold], np.repeat(film[cold][:, None], 3, axis=1))


def test_heat_grows_with_relevance() -> None:
    rows, cols = 400, 300
    film = np.full((rows, cols), 128, np.uint8)
    relevance = relevance_blob(rows, cols, centre=(0.5, 0.5), radius=0.4)

    picture = picture_part(render_summary(film, relevance, None, BANNER), rows).astype(int)

    colourfulness = picture.max(axis=2) - picture.min(axis=2)
    centre, rim = colourfulness[200, 150], colourfulness[200, 150 + 100]
    assert centre > rim > 0


def test_zero_relevance_draws_no_heat() -> None:
    film = gradient(200, 200)

    with_zero = render_summary(film, np.zeros((200, 200)), None, BANNER)

    np.testing.assert_array_equal(with_zero, render_summary(film, None, None, BANNER))


# --- Lung contour ----------------------------------------------------------------------------


def test_contour_is_drawn_on_the_lung_boundary_only() -> None:
    rows, cols = 600, 500
    film = gradient(rows, cols)
    lung = lung_probability(rows, cols)

    picture = picture_part(render_summary(film, None, lung, BANNER), rows)

    contour = (picture == CONTOUR_RGB).all(axis=2)
    inside = ellipses(rows, cols)
    expected = _boundary(inside, 2)
    np.testing.assert_array_equal(contour, expected)
    # A 2 px ring inside the boundary: every contour pixel is inside, next to an outside one.
    assert contour.sum() > 0 and not (contour & ~inside).any()
    # Away from the contour the film is untouched.
    np.testing.assert_array_equal(picture[~contour], np.repeat(film[~contour][:, None], 3, axis=1))


def test_contour_is_three_pixels_wide_on_a_2k_picture() -> None:
    mask = np.zeros((2000, 1600), bool)
    mask[500:1500, 400:1200] = True

    ring = _boundary(mask, 3)

    assert ring[1000, 399:404].tolist() == [False, True, True, True, False]


def test_lung_below_one_half_gives_no_contour() -> None:
    picture = render_summary(gradient(200, 200), None, np.full((200, 200), 0.49), BANNER)

    assert not (picture == CONTOUR_RGB).all(axis=2).any()


def test_real_radiograph_with_heat_and_contour() -> None:
    film = display_pixels(CANON_DX)
    rows, cols = film.shape

    picture = render_summary(film, relevance_blob(rows, cols), lung_probability(rows, cols), BANNER, max_size=512)

    assert max(picture.shape[:2]) <= 512
    image = picture_part(picture, round(rows * picture.shape[1] / cols))
    assert (image == CONTOUR_RGB).all(axis=2).any()
    assert (~is_grey(image)).mean() > 0.01  # heat and contour
    assert is_grey(image).mean() > 0.8  # most of the film is left as it is


# --- Arguments -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"source_image": np.zeros((10, 10), np.uint16)}, TypeError),
        ({"source_image": np.zeros((10, 10, 3), np.uint8)}, ValueError),
        ({"relevance": np.zeros((10, 11))}, ValueError),
        ({"relevance": np.full((10, 10), 1.5)}, ValueError),
        ({"lung": np.full((10, 10), np.nan)}, ValueError),
        ({"lung": np.zeros((10, 10), np.uint8)}, TypeError),
        ({"banner": "one string"}, TypeError),
        ({"max_size": 32}, ValueError),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict, error: type[Exception]) -> None:
    arguments: dict[str, Any] = {"source_image": np.zeros((10, 10), np.uint8), "relevance": None, "lung": None, "banner": BANNER}
    max_size = kwargs.pop("max_size", 2048)
    arguments.update(kwargs)

    with pytest.raises(error):
        render_summary(**arguments, max_size=max_size)


def test_without_dejavu_pillow_s_own_font_writes_the_banner(monkeypatch: pytest.MonkeyPatch) -> None:
    from dicom_node.report import summary_picture

    monkeypatch.setattr(summary_picture, "FONT_PATH", summary_picture.FONT_PATH.with_name("missing.ttf"))
    summary_picture._font.cache_clear()
    try:
        picture = render_summary(gradient(600, 500), None, None, BANNER)
    finally:
        summary_picture._font.cache_clear()

    band = picture[: picture.shape[0] - 600]
    assert band.shape[0] > 0 and (band >= 200).all(axis=2).any()


def test_maps_on_their_model_grid_draw_what_the_same_maps_on_the_source_draw() -> None:
    # The node's way: the maps go from the model grid straight onto the picture's 512-pixel
    # grid, not through the detector-size grid first. The picture must not change visibly.
    film = display_pixels(CANON_DX)
    rows, cols = film.shape
    grid = model_grid((rows, cols), Box(40, rows - 40, 60, cols - 60), (224, 224))
    yy, xx = np.mgrid[0:224, 0:224]
    relevance = np.exp(-((yy - 90.0) ** 2 + (xx - 70.0) ** 2) / (2 * 25.0**2)).astype(np.float32)
    lung = ((((yy - 112.0) / 80) ** 2 + ((xx - 112.0) / 90) ** 2) < 1).astype(np.float32)
    direct = render_summary(film, GridMap(grid, relevance), GridMap(grid, lung), BANNER, max_size=512)
    through_source = render_summary(film, grid.to_source(relevance), grid.to_source(lung), BANNER, max_size=512)
    assert direct.shape == through_source.shape
    assert np.abs(direct.astype(int) - through_source.astype(int)).mean() < 1.0  # grey levels, over RGB
    contour = lambda picture: (picture == CONTOUR_RGB).all(axis=2)  # noqa: E731
    assert abs(int(contour(direct).sum()) - int(contour(through_source).sum())) < 0.05 * contour(through_source).sum()
    with pytest.raises(ValueError, match="map of"):
        render_summary(film[:-1], GridMap(grid, relevance), None, BANNER)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        render_summary(film, GridMap(grid, relevance * 2), None, BANNER)

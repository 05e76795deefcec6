"""Crop of black borders and text-only margins, square padding, CLAHE."""

from __future__ import annotations

import numpy as np
import pytest

from monai_app.transforms.clahe import clahe
from monai_app.transforms.normalisation import Box, content_box, crop_to_box, pad_to_square, square_padding


def _radiograph(rows: int = 100, cols: int = 80) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.uniform(0.3, 0.9, (rows, cols)).astype(np.float32)


def test_black_borders_are_cropped() -> None:
    image = np.zeros((120, 100), np.float32)
    image[10:110, 15:95] = _radiograph()
    assert content_box(image) == Box(10, 110, 15, 95)


def test_text_only_margin_is_cropped() -> None:
    image = np.zeros((130, 80), np.float32)
    image[30:130] = _radiograph()
    image[10:20, 5:9] = 1.0  # a burnt-in letter on the black top margin
    image[12:18, 20:23] = 1.0
    assert content_box(image).top == 30


def test_crop_never_removes_more_than_the_cap_per_edge() -> None:
    image = np.zeros((100, 100), np.float32)
    image[60:, :] = 0.5
    assert content_box(image, max_crop_fraction=0.25).top == 25


def test_all_dark_image_is_kept_whole() -> None:
    assert content_box(np.zeros((7, 9), np.float32)) == Box(0, 7, 0, 9)


def test_content_box_rejects_non_2d_input() -> None:
    with pytest.raises(ValueError, match="image"):
        content_box(np.zeros((1, 4, 4)))


def test_crop_to_box_crops_the_last_two_axes() -> None:
    array = np.arange(2 * 5 * 6).reshape(2, 5, 6)
    out = crop_to_box(array, Box(1, 4, 2, 5))
    assert out.shape == (2, 3, 3) and out[1, 0, 0] == array[1, 1, 2]


def test_pad_to_square_centres_the_image_and_keeps_its_pixels() -> None:
    image = np.ones((1, 4, 7), np.float32)
    out = pad_to_square(image)
    assert out.shape == (1, 7, 7) and out.dtype == np.float32
    assert square_padding(4, 7) == ((1, 2), (0, 0))
    np.testing.assert_array_equal(out[0, 1:5], 1.0)
    assert out[0, 0].sum() == 0 and out[0, 5:].sum() == 0


def test_pad_to_square_leaves_a_square_unchanged() -> None:
    image = np.random.default_rng(1).uniform(size=(5, 5))
    np.testing.assert_array_equal(pad_to_square(image), image)


def test_clahe_keeps_shape_and_unit_range() -> None:
    image = np.random.default_rng(2).uniform(size=(70, 50)).astype(np.float32)
    out = clahe(image)
    assert out.shape == image.shape and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_clahe_raises_local_contrast_of_a_low_contrast_image() -> None:
    rng = np.random.default_rng(3)
    image = (0.45 + 0.1 * rng.uniform(size=(128, 128))).astype(np.float32)
    assert clahe(image, clip_limit=0.05).std() > 3 * image.std()


def test_clahe_with_tight_clip_limit_changes_less_than_a_loose_one() -> None:
    rng = np.random.default_rng(4)
    image = (0.45 + 0.1 * rng.uniform(size=(128, 128))).astype(np.float32)
    assert clahe(image, clip_limit=0.005).std() < clahe(image, clip_limit=0.05).std()


def test_clahe_preserves_order_within_a_single_tile() -> None:
    image = np.linspace(0.2, 0.6, 64).reshape(8, 8).astype(np.float32)
    out = clahe(image, clip_limit=1.0, grid=(1, 1))
    assert np.all(np.diff(out.ravel()) >= 0)


def test_clahe_rejects_a_non_positive_clip_limit() -> None:
    with pytest.raises(ValueError, match="clip_limit"):
        clahe(np.zeros((8, 8)), clip_limit=0)

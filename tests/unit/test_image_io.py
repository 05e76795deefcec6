"""PNG/JPEG files and masks load into the common intensity space / label values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from monai_app.data.image_io import is_dicom_file, load_chest_xray
from monai_app.data.masks import IGNORE, LUNG, mask_to_label
from monai_app.data.raster_image import read_mask
from monai_app.errors import UndecodableImageError


def test_grey_png_is_divided_by_255(tmp_path: Path) -> None:
    pixels = np.array([[0, 51], [204, 255]], np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    np.testing.assert_array_equal(load_chest_xray(tmp_path / "a.png"), pixels / np.float32(255))


def test_sixteen_bit_png_is_divided_by_65535(tmp_path: Path) -> None:
    pixels = np.array([[0, 65535], [32768, 1000]], np.uint16)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    np.testing.assert_allclose(load_chest_xray(tmp_path / "a.png"), pixels / 65535.0, atol=1e-7)


def test_rgba_png_is_composited_on_black(tmp_path: Path) -> None:
    rgba = np.zeros((1, 2, 4), np.uint8)
    rgba[0, 0] = (255, 255, 255, 255)
    rgba[0, 1] = (255, 255, 255, 0)  # fully transparent white becomes black
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    np.testing.assert_allclose(load_chest_xray(tmp_path / "a.png"), [[1.0, 0.0]])


def test_shared_jpeg_and_png_load_as_unit_range_grey(shared_data: Path) -> None:
    for name in ("images/ieee8023", "images/nih_cxr14"):
        path = sorted((shared_data / name).iterdir())[0]
        image = load_chest_xray(path)
        assert image.ndim == 2 and image.dtype == np.float32
        assert 0.0 <= image.min() and image.max() <= 1.0


def test_corrupt_png_raises_undecodable_image_error(tmp_path: Path) -> None:
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(UndecodableImageError):
        load_chest_xray(tmp_path / "bad.png")


def test_missing_file_raises_undecodable_image_error(tmp_path: Path) -> None:
    with pytest.raises(UndecodableImageError, match="no such image"):
        load_chest_xray(tmp_path / "missing.png")


def test_files_without_raster_suffix_are_read_as_dicom() -> None:
    assert is_dicom_file("x.dcm") and is_dicom_file("IM000001")
    assert not is_dicom_file("x.PNG") and not is_dicom_file("x.jpeg")


def test_mask_values_map_to_background_lung_and_ignore(tmp_path: Path) -> None:
    Image.fromarray(np.array([[0, 127, 255]], np.uint8)).save(tmp_path / "m.png")
    label = mask_to_label(read_mask(tmp_path / "m.png"))
    assert label.tolist() == [[0, IGNORE, LUNG]]


def test_shared_v7labs_masks_contain_lung_and_ignore_values(shared_data: Path) -> None:
    values: set[int] = set()
    for path in sorted((shared_data / "masks/ieee8023_v7labs").iterdir())[:60]:
        values |= set(np.unique(read_mask(path)).tolist())
    assert {0, 255} <= values and values <= {0, 127, 255}

"""A DICOM made from a shared PNG preprocesses to the same array as the PNG itself.

The node's preprocessing (the inference config's ``lung_preprocessing``) is applied to
both, so a model trained on the PNGs serves DICOM input unchanged.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from testkit.bundle import INFERENCE, parser
from testkit.dicom_factory import make_dx, save


@pytest.fixture(scope="module")
def preprocessing():
    """The inference config's lung preprocessing, loaded by ID as the node does."""
    return parser(INFERENCE).get_parsed_content("preprocessing")


@pytest.fixture(scope="module")
def shared_png(shared_data: Path) -> Path:
    """A real 8-bit grey PNG of the shared data."""
    return sorted((shared_data / "images/nih_cxr14").glob("*.png"))[0]


def _png_pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.mode == "L"
        return np.asarray(image)


def _preprocess(preprocessing, path: Path) -> torch.Tensor:
    return preprocessing({"image": str(path)})["image"].as_tensor()


@pytest.mark.parametrize(
    ("bits", "photometric", "window", "rle"),
    [
        (8, "MONOCHROME2", None, False),        # secondary-capture style: no VOI, 8 bit
        (8, "MONOCHROME1", None, False),        # inverted storage
        (16, "MONOCHROME2", (32768.0, 65536.0), False),  # 16 bit with a full-range window
        (16, "MONOCHROME2", (32768.0, 65536.0), True),   # same, RLE Lossless transfer syntax
    ],
)
def test_dicom_from_shared_png_preprocesses_like_the_png(
    preprocessing, shared_png: Path, tmp_path: Path, bits: int, photometric: str, window, rle: bool
) -> None:
    pixels = _png_pixels(shared_png).astype(np.uint16)
    if bits == 16:
        pixels = pixels * 257  # 0..255 -> 0..65535
    if photometric == "MONOCHROME1":
        pixels = (2**bits - 1) - pixels
    path = save(make_dx(pixels, bits, photometric, window), tmp_path / "from_png.dcm", rle=rle)
    from_png = _preprocess(preprocessing, shared_png)
    from_dicom = _preprocess(preprocessing, path)
    assert from_png.shape == from_dicom.shape == (1, 256, 256)
    torch.testing.assert_close(from_dicom, from_png, atol=1e-6, rtol=0)


def test_dicom_with_a_narrow_window_differs_from_the_png(
    preprocessing, shared_png: Path, tmp_path: Path
) -> None:
    """Control: the comparison above is sensitive to the VOI transform."""
    pixels = _png_pixels(shared_png)
    path = save(make_dx(pixels, 8, window=(128.0, 64.0)), tmp_path / "narrow.dcm")
    difference = (_preprocess(preprocessing, path) - _preprocess(preprocessing, shared_png)).abs()
    assert difference.max() > 0.1

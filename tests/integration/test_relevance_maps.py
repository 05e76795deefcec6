"""Relevance maps and the model grid on the shipped bundle and real chest DICOM radiographs.

The analyser is loaded as the node loads it; the maps and outlines are mapped back onto the
DICOM Pixel Data grid, the one an SR's SCOORD refers to.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian

from monai_app.data.dicom_image import decode_pixels
from monai_app.data.image_io import load_chest_xray
from monai_app.inference import BundleAnalyser, Prediction, PreparedImage, to_uint8
from monai_app.transforms.normalisation import Box
from monai_app.transforms.regions import relevance_region
from testkit.bundle import BUNDLE

NON_SQUARE_CHESTS = ("dicom/pydicom-data/RG1_J2KI.dcm", "dicom/pylibjpeg-data/DX_chest_Canon_966_fixed.dcm")
"""Real chest PA radiographs, 1955 x 1841 (CR, Philips) and 2128 x 2000 (DX, Canon)."""
EIGHT_BIT_CHEST = "dicom/torchxrayvision/SIIM-ACR_1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"


@pytest.fixture(scope="module")
def analyser() -> BundleAnalyser:
    return BundleAnalyser(BUNDLE, "cpu", load_index=False)


@pytest.fixture(scope="module")
def prepared(analyser: BundleAnalyser, shared_data: Path) -> list[PreparedImage]:
    return [analyser.prepare(shared_data / name) for name in NON_SQUARE_CHESTS]


@pytest.fixture(scope="module")
def predictions(analyser: BundleAnalyser, prepared: list[PreparedImage]) -> list[Prediction]:
    return analyser.predict(prepared, relevance=True)


def _pixel_shape(path: Path) -> tuple[int, int]:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return int(ds.Rows), int(ds.Columns)


def test_the_loaded_image_is_the_pixel_data_grid_unflipped(shared_data: Path) -> None:
    with (shared_data / "dicom" / "manifest.csv").open(newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["is_chest"] == "yes" and r["pixel_decode_pydicom_pylibjpeg"] == "ok"]
    assert len(rows) >= 4
    for row in rows:
        path = shared_data / row["dicom_path"]
        ds = pydicom.dcmread(path, force=True)
        stored = decode_pixels(ds).astype(np.float64).ravel()
        display = load_chest_xray(path)
        assert display.shape == (int(ds.Rows), int(ds.Columns)), row["dicom_path"]
        # Display values are a monotone function of the stored values at the same pixel
        # (window, MONOCHROME1 inverted): any transpose or flip would break the order.
        sign = -1.0 if row["photometric_interpretation"] == "MONOCHROME1" else 1.0
        ordered = display.ravel()[np.argsort(sign * stored, kind="stable")]
        assert np.all(np.diff(ordered) >= -1e-6), row["dicom_path"]


def test_relevance_leaves_probabilities_and_embeddings_unchanged(
    analyser: BundleAnalyser, prepared: list[PreparedImage], predictions: list[Prediction]
) -> None:
    plain = analyser.predict(prepared)
    assert [p.probability for p in plain] == [p.probability for p in predictions]
    assert all(np.array_equal(a.embedding, b.embedding) for a, b in zip(plain, predictions))
    assert all(p.relevance is None for p in plain)


def test_relevance_maps_are_on_the_model_grid_in_unit_range(predictions: list[Prediction]) -> None:
    for prediction in predictions:
        assert prediction.relevance is not None
        assert prediction.relevance.shape == (224, 224) and prediction.relevance.dtype == np.float32
        assert prediction.relevance.min() >= 0.0 and prediction.relevance.max() == 1.0


def test_the_grid_maps_onto_the_dicom_pixel_matrix(
    prepared: list[PreparedImage], predictions: list[Prediction], shared_data: Path
) -> None:
    for name, image, prediction in zip(NON_SQUARE_CHESTS, prepared, predictions):
        shape = _pixel_shape(shared_data / name)
        assert image.grid is not None and image.grid.source_shape == shape
        assert image.source_image is not None and image.source_image.dtype == np.uint8
        np.testing.assert_array_equal(image.source_image, to_uint8(load_chest_xray(shared_data / name)))
        assert prediction.relevance is not None and image.grid.to_source(prediction.relevance).shape == shape
        # The model's image channel (after CLAHE) drawn back on the source lines up with it,
        # better than with the source moved by 2 % of its width either way.
        back = image.grid.to_source(image.tensor[0].numpy()).astype(np.float64)
        source = image.source_image.astype(np.float64)
        shift = shape[1] // 50
        aligned = np.corrcoef(back.ravel(), source.ravel())[0, 1]
        moved = [np.corrcoef(back[:, shift:].ravel(), source[:, :-shift].ravel())[0, 1],
                 np.corrcoef(back[:, :-shift].ravel(), source[:, shift:].ravel())[0, 1]]
        assert aligned > 0.85 and aligned > max(moved) + 0.03, (name, aligned, moved)


def test_the_lung_map_falls_on_the_body_in_both_halves(prepared: list[PreparedImage]) -> None:
    for image in prepared:
        assert image.grid is not None and image.source_image is not None
        lung = image.grid.to_source(image.lung_probability)
        body = image.source_image > 10  # not the black of the detector outside the patient
        assert (lung * body).sum() / lung.sum() > 0.95
        half = lung.shape[1] // 2
        left, right = lung[:, :half].sum(), lung[:, half:].sum()
        assert min(left, right) / (left + right) > 0.3, "one lung field each side of the midline"


def test_the_relevance_outline_lies_inside_the_source_image(
    prepared: list[PreparedImage], predictions: list[Prediction]
) -> None:
    for image, prediction in zip(prepared, predictions):
        assert image.grid is not None and prediction.relevance is not None
        outline = relevance_region(prediction.relevance, bounds=image.grid.content_bounds())
        assert outline is not None
        points = image.grid.points_to_source(outline)
        rows, cols = image.grid.source_shape
        assert np.all((points >= 0.0) & (points <= [rows, cols])), points


def test_a_black_frame_is_cropped_and_mapped_back_exactly(
    analyser: BundleAnalyser, shared_data: Path, tmp_path: Path
) -> None:
    ds = pydicom.dcmread(shared_data / EIGHT_BIT_CHEST)
    pixels = ds.pixel_array
    framed = np.zeros((pixels.shape[0] + 60, pixels.shape[1] + 100), pixels.dtype)
    framed[40 : 40 + pixels.shape[0], 70 : 70 + pixels.shape[1]] = pixels
    ds.PixelData, ds.Rows, ds.Columns = framed.tobytes(), framed.shape[0], framed.shape[1]
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(tmp_path / "framed.dcm", enforce_file_format=True)

    plain, with_frame = analyser.prepare(shared_data / EIGHT_BIT_CHEST), analyser.prepare(tmp_path / "framed.dcm")
    assert plain.grid is not None and with_frame.grid is not None
    assert with_frame.grid.box == Box(40, 40 + pixels.shape[0], 70, 70 + pixels.shape[1])
    assert with_frame.grid.source_shape == framed.shape
    lung, framed_lung = plain.grid.to_source(plain.lung_probability), with_frame.grid.to_source(with_frame.lung_probability)
    np.testing.assert_allclose(framed_lung[40 : 40 + pixels.shape[0], 70 : 70 + pixels.shape[1]], lung, atol=1e-6)
    assert np.all(np.delete(np.delete(framed_lung, np.s_[40 : 40 + pixels.shape[0]], 0), np.s_[70 : 70 + pixels.shape[1]], 1) == 0)
    corner = np.array([[10.0, 20.0]])
    np.testing.assert_allclose(with_frame.grid.points_to_source(corner), plain.grid.points_to_source(corner) + [40, 70])

"""DICOM CR/DX instances land in the common intensity space ([0, 1], 1 = brightest)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from monai_app.data.dicom_image import (
    DEFAULT_PERCENTILES,
    decode_pixels,
    dicom_to_display,
    display_per_pixel,
    display_table,
    histogram_percentiles,
    percentile_window,
    read_dicom_image,
    window_to_unit,
)
from monai_app.errors import UndecodableImageError, UnsupportedImageError
from testkit.dicom_factory import make_dx, save
from testkit.shared_data import shared_data_dir

UNDECODABLE = {
    "dicom/pylibjpeg-data/DX_chest_Canon_966.dcm",
    "dicom/dicom-test-files/RG2_JPLY.dcm",
}


def _shared_dicom_files() -> list[str]:
    manifest = shared_data_dir() / "dicom" / "manifest.csv"
    if not manifest.is_file():
        return []
    with manifest.open(newline="") as handle:
        return sorted(row["dicom_path"] for row in csv.DictReader(handle))


@pytest.mark.parametrize("relative", [f for f in _shared_dicom_files() if f not in UNDECODABLE])
def test_every_decodable_shared_dicom_maps_to_unit_range(shared_data: Path, relative: str) -> None:
    image = read_dicom_image(shared_data / relative)
    assert image.dtype == np.float32 and image.ndim == 2
    assert image.min() >= 0.0 and image.max() <= 1.0
    assert image.std() > 0.05, "a real radiograph must not collapse to a flat image"


@pytest.mark.parametrize("relative", sorted(UNDECODABLE))
def test_undecodable_shared_dicoms_raise_undecodable_image_error(
    shared_data: Path, relative: str
) -> None:
    with pytest.raises(UndecodableImageError, match="cannot decode pixel data"):
        read_dicom_image(shared_data / relative)


def test_shared_dicom_set_has_eleven_files_two_undecodable(shared_data: Path) -> None:
    files = _shared_dicom_files()
    assert len(files) == 11 and UNDECODABLE <= set(files)


def test_monochrome1_chest_shows_lungs_darker_than_mediastinum(shared_data: Path) -> None:
    """After inversion of MONOCHROME1 the air-filled lungs are dark, the spine bright."""
    image = read_dicom_image(shared_data / "dicom/fo-dicom/CR-MONO1-10-chest.dcm")
    rows, cols = image.shape
    centre = image[rows // 3 : 2 * rows // 3, cols // 2 - cols // 20 : cols // 2 + cols // 20]
    right_lung = image[rows // 3 : 2 * rows // 3, cols // 4 - cols // 20 : cols // 4 + cols // 20]
    assert centre.mean() > right_lung.mean()


def test_same_image_in_two_encodings_gives_nearly_the_same_display(shared_data: Path) -> None:
    j2k = read_dicom_image(shared_data / "dicom/pydicom-data/RG1_J2KI.dcm")
    jls = read_dicom_image(shared_data / "dicom/dicom-test-files/RG1_JLSN.dcm")
    assert j2k.shape == jls.shape
    assert np.abs(j2k - jls).mean() < 0.01


def test_linear_window_follows_the_dicom_formula() -> None:
    values = np.array([-100.0, 0.0, 127.5, 255.0, 1000.0])
    out = window_to_unit(values, center=128, width=256)
    np.testing.assert_allclose(out, [0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-7)


def test_linear_exact_and_sigmoid_windows_centre_at_one_half() -> None:
    assert window_to_unit(np.array([40.0]), 40, 400, "LINEAR_EXACT")[0] == pytest.approx(0.5)
    assert window_to_unit(np.array([40.0]), 40, 400, "SIGMOID")[0] == pytest.approx(0.5)
    assert window_to_unit(np.array([240.0]), 40, 400, "LINEAR_EXACT")[0] == pytest.approx(1.0)


def test_unknown_voi_function_is_rejected() -> None:
    with pytest.raises(ValueError, match="function"):
        window_to_unit(np.zeros(3), 0, 10, "GAMMA")


def test_percentile_window_clips_outliers_to_the_range_ends() -> None:
    values = np.concatenate([np.linspace(100, 200, 1000), [0.0, 10_000.0]])
    out = percentile_window(values, (1.0, 99.0))
    assert out[-1] == 1.0 and out[-2] == 0.0 and 0.4 < np.median(out) < 0.6


def test_deep_image_without_voi_gets_the_percentile_window() -> None:
    pixels = np.tile(np.arange(1000, 1256, dtype=np.uint16), (4, 1))
    out = dicom_to_display(make_dx(pixels, bits_stored=12))
    np.testing.assert_allclose(out, percentile_window(pixels.astype(float)), atol=1e-6)


def test_rescale_slope_and_intercept_apply_before_the_window() -> None:
    ds = make_dx(np.array([[0, 10], [20, 30]], dtype=np.uint16), 12, window=(10.0, 41.0))
    ds.RescaleSlope, ds.RescaleIntercept = 2, -20
    out = dicom_to_display(ds)  # modality values -20, 0, 20, 40; LINEAR window 10/41
    np.testing.assert_allclose(out, [[0.0, 0.2625], [0.7625, 1.0]], atol=1e-6)


def test_modality_lut_sequence_is_applied() -> None:
    ds = make_dx(np.array([[0, 1], [2, 3]], dtype=np.uint16), 12, window=(150.0, 301.0))
    item = Dataset()
    item.LUTDescriptor = [4, 0, 16]
    item.ModalityLUTType = "US"
    item.LUTData = [0, 100, 200, 300]
    ds.ModalityLUTSequence = Sequence([item])
    out = dicom_to_display(ds)
    np.testing.assert_allclose(out.ravel(), window_to_unit(np.array([0, 100, 200, 300]), 150, 301))


def test_voi_lut_sequence_takes_precedence_over_the_window() -> None:
    ds = make_dx(np.array([[0, 1], [2, 3]], dtype=np.uint16), 12, window=(0.0, 2.0))
    item = Dataset()
    item.LUTDescriptor = [4, 0, 8]
    item.LUTData = [0, 51, 102, 255]
    ds.VOILUTSequence = Sequence([item])
    out = dicom_to_display(ds)
    np.testing.assert_allclose(out.ravel(), [0.0, 0.2, 0.4, 1.0], atol=1e-6)


def test_monochrome1_is_inverted() -> None:
    pixels = np.array([[0, 64], [128, 255]], dtype=np.uint8)
    mono2 = dicom_to_display(make_dx(pixels, 8, "MONOCHROME2"))
    mono1 = dicom_to_display(make_dx(255 - pixels, 8, "MONOCHROME1"))
    np.testing.assert_allclose(mono1, mono2, atol=1e-6)
    assert mono2[1, 1] == 1.0


def test_colour_images_are_rejected_with_a_typed_error() -> None:
    ds = make_dx(np.zeros((2, 2), np.uint8), 8)
    ds.PhotometricInterpretation = "RGB"
    with pytest.raises(UnsupportedImageError, match="RGB"):
        dicom_to_display(ds)


def test_dataset_without_pixel_data_raises_undecodable_image_error() -> None:
    ds = make_dx(np.zeros((2, 2), np.uint8), 8)
    del ds.PixelData
    with pytest.raises(UndecodableImageError, match="no Pixel Data"):
        dicom_to_display(ds)


def test_non_dicom_file_raises_undecodable_image_error(tmp_path: Path) -> None:
    path = tmp_path / "junk.dcm"
    path.write_bytes(b"not a dicom file at all")
    with pytest.raises(UndecodableImageError):
        read_dicom_image(path)


def test_truncated_compressed_pixel_data_raises_undecodable_image_error(tmp_path: Path) -> None:
    pixels = (np.arange(64 * 64).reshape(64, 64) % 251).astype(np.uint8)
    path = save(make_dx(pixels, 8), tmp_path / "rle.dcm", rle=True)
    ds = pydicom.dcmread(path)
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3]
    with pytest.raises(UndecodableImageError):
        dicom_to_display(ds)


def _random_dx(seed: int, bits: int, photometric: str = "MONOCHROME2", window: tuple[float, float] | None = None,
               signed: bool = False) -> Dataset:
    rng = np.random.default_rng(seed)
    pixels = rng.normal(2 ** (bits - 1), 2 ** (bits - 3), (61, 47)).clip(0, 2**bits - 1).astype(np.uint16)
    pixels[0, :5] = [0, 1, 2**bits - 1, 7, 7]  # the ends of the range and a repeated value
    ds = make_dx(pixels, bits, photometric, window)
    if signed:  # the same bits read as two's complement: negative stored values
        ds.PixelRepresentation = 1
        ds.PixelData = (pixels.astype(np.int32) - 2 ** (bits - 1)).astype(np.int16).tobytes()
    return ds


def _voi_variants() -> list[tuple[str, Dataset]]:
    variants = [
        ("window LINEAR", _random_dx(1, 12, window=(2100.0, 1500.0))),
        ("window MONOCHROME1", _random_dx(2, 12, "MONOCHROME1", window=(1800.0, 2500.0))),
        ("percentile window", _random_dx(3, 12)),
        ("percentile window, 16 bits", _random_dx(4, 16)),
        ("percentile window, signed", _random_dx(5, 12, signed=True)),
        ("8 bits, no VOI", _random_dx(6, 8)),
        ("rescale, negative slope", _random_dx(7, 12, window=(-900.0, 1200.0))),
        ("LINEAR_EXACT", _random_dx(8, 12, window=(2048.0, 1000.0))),
        ("SIGMOID", _random_dx(9, 10, window=(512.0, 300.0))),
        ("modality LUT sequence, percentile", _random_dx(10, 12)),
        ("VOI LUT sequence", _random_dx(11, 12, window=(0.0, 2.0))),
    ]
    by_name = dict(variants)
    by_name["rescale, negative slope"].RescaleSlope, by_name["rescale, negative slope"].RescaleIntercept = -0.5, 100
    by_name["LINEAR_EXACT"].VOILUTFunction = "LINEAR_EXACT"
    by_name["SIGMOID"].VOILUTFunction = "SIGMOID"
    modality = Dataset()  # a non-monotonic Modality LUT: the percentiles must sort its output, not the codes
    modality.LUTDescriptor, modality.ModalityLUTType = [4096, 0, 16], "US"
    modality.LUTData = [int(v) for v in (np.arange(4096) * 7919) % 4001]
    by_name["modality LUT sequence, percentile"].ModalityLUTSequence = Sequence([modality])
    voi = Dataset()
    voi.LUTDescriptor, voi.LUTData = [4096, 0, 8], [int(v) for v in np.arange(4096) * 255 // 4095]
    by_name["VOI LUT sequence"].VOILUTSequence = Sequence([voi])
    return variants


@pytest.mark.parametrize("name, ds", _voi_variants(), ids=[n for n, _ in _voi_variants()])
def test_the_table_lookup_gives_exactly_what_the_chain_gives_pixel_by_pixel(name: str, ds: Dataset) -> None:
    stored = decode_pixels(ds)
    lookup = display_table(stored, ds, DEFAULT_PERCENTILES)
    assert lookup is not None
    table, codes = lookup
    assert np.shares_memory(codes, stored), "the codes are a view of the stored values"
    expected = display_per_pixel(stored, ds, DEFAULT_PERCENTILES)
    assert np.array_equal(table[codes], expected) and dicom_to_display(ds).dtype == np.float32
    assert np.array_equal(dicom_to_display(ds), expected)
    assert expected.std() > 0.01, f"{name}: the variant must not be a flat image"


@pytest.mark.parametrize("relative", [f for f in _shared_dicom_files() if f not in UNDECODABLE])
def test_real_dicoms_display_the_same_through_the_table(shared_data: Path, relative: str) -> None:
    ds = pydicom.dcmread(shared_data / relative, force=True)  # decode_pixels fills a missing File Meta
    stored = decode_pixels(ds)
    assert np.array_equal(dicom_to_display(ds), display_per_pixel(stored, ds, DEFAULT_PERCENTILES))


def test_histogram_percentiles_match_numpy_on_large_images() -> None:
    rng = np.random.default_rng(0)
    for n, percentiles in ((1, (0.5, 99.5)), (2, (0.0, 100.0)), (5_000_003, (0.5, 99.5)), (999, (37.3, 62.9))):
        x = rng.integers(0, 4096, n)
        values, counts = np.unique(x, return_counts=True)
        assert np.array_equal(histogram_percentiles(values, counts, percentiles), np.percentile(x, percentiles))


def test_float_pixels_take_the_pixel_by_pixel_chain() -> None:
    ds = _random_dx(12, 12, window=(2048.0, 4000.0))
    assert display_table(np.zeros((2, 2), np.float32), ds, DEFAULT_PERCENTILES) is None
    assert display_table(np.zeros((2, 2), np.uint32), ds, DEFAULT_PERCENTILES) is None

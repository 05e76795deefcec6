"""Build small DX instances with pydicom for the tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    RLELossless,
    generate_uid,
)


def make_dx(
    pixels: np.ndarray,
    bits_stored: int,
    photometric: str = "MONOCHROME2",
    window: tuple[float, float] | None = None,
) -> Dataset:
    """A DX For Presentation dataset holding ``pixels`` (unsigned integers)."""
    if pixels.ndim != 2:
        raise ValueError("pixels must be 2-D")
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "DX"
    ds.PatientName, ds.PatientID = "Test^Synthetic", "TEST0001"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 8 if bits_stored <= 8 else 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PresentationLUTShape = "INVERSE" if photometric == "MONOCHROME1" else "IDENTITY"
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    dtype = np.uint8 if ds.BitsAllocated == 8 else np.uint16
    ds.PixelData = np.ascontiguousarray(pixels.astype(dtype)).tobytes()
    return ds


def save(ds: Dataset, path: Path, rle: bool = False) -> Path:
    """Write ``ds`` as a Part 10 file, RLE-compressed when asked."""
    if rle:
        ds.compress(RLELossless)
    ds.save_as(path, enforce_file_format=True)
    return path

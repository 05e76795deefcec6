"""Decode a CR/DX DICOM instance into the common intensity space of the project.

The pipeline follows the DICOM grayscale display chain (PS3.3 C.11 / PS3.4 N.2):

1. decode the pixel data (any transfer syntax with an installed pydicom decoder:
   native, RLE, JPEG baseline/extended/lossless, JPEG-LS, JPEG 2000);
2. Modality LUT: Rescale Slope/Intercept or the Modality LUT Sequence;
3. VOI: the VOI LUT Sequence if present, else the first Window Center/Width (LINEAR,
   LINEAR_EXACT or SIGMOID). Without either, **8-bit images** (already display values, e.g.
   secondary captures) are mapped linearly from ``[0, 255]`` and **deeper images** get a
   percentile window from the 0.5th to the 99.5th percentile of the modality values;
4. MONOCHROME1 is inverted, so that in the result 1 is always the brightest (bone white).

The result is a ``float32`` array in ``[0, 1]``: the same space as an 8-bit PNG divided
by 255, so that a model trained on the PNGs of the shared data serves DICOM input.

Steps 2-4 depend on each pixel's stored value alone (the percentile window on the image's
histogram), so for integer pixels of up to 16 bits, every CR/DX seen, they are computed once
per stored value and applied as one table lookup (:func:`display_table`): the same float32
values as mapping every pixel, bit for bit, at a fraction of the time and without the full
float64 copies of a detector-size image.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from monai_app.errors import UndecodableImageError, UnsupportedImageError

logger = logging.getLogger(__name__)

DEFAULT_PERCENTILES: tuple[float, float] = (0.5, 99.5)
"""Percentile window used when an image of more than 8 bits carries no VOI information."""


def window_to_unit(
    values: np.ndarray, center: float, width: float, function: str = "LINEAR"
) -> np.ndarray:
    """Apply a DICOM VOI window, mapping to ``[0, 1]`` instead of an output bit range.

    Parameters
    ----------
    values : numpy.ndarray
        Modality values (output of the Modality LUT).
    center, width : float
        Window Center and Window Width (PS3.3 C.11.2.1.2).
    function : str
        VOI LUT Function: ``"LINEAR"``, ``"LINEAR_EXACT"`` or ``"SIGMOID"``.

    Returns
    -------
    numpy.ndarray
        ``float32`` array in ``[0, 1]``.

    Raises
    ------
    ValueError
        If ``width`` is not valid for ``function`` or ``function`` is unknown.

    Examples
    --------
    >>> window_to_unit(np.array([0.0, 255.0]), center=128, width=256).tolist()
    [0.0, 1.0]
    """
    x = np.asarray(values, dtype=np.float64)
    function = function.upper()
    if function == "LINEAR":
        if width < 1:
            raise ValueError('Argument "width" must be >= 1 for a LINEAR window')
        out = (x - (center - 0.5)) / (width - 1) + 0.5 if width > 1 else (x > center - 0.5) * 1.0
    elif function == "LINEAR_EXACT":
        if width <= 0:
            raise ValueError('Argument "width" must be > 0 for a LINEAR_EXACT window')
        out = (x - center) / width + 0.5
    elif function == "SIGMOID":
        if width <= 0:
            raise ValueError('Argument "width" must be > 0 for a SIGMOID window')
        out = 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    else:
        raise ValueError(f'Argument "function" has unknown VOI LUT Function {function!r}')
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def histogram_percentiles(values: np.ndarray, counts: np.ndarray, percentiles: tuple[float, float]) -> np.ndarray:
    """``np.percentile`` (its default, linear method) of the values that ``values[i]`` stands for ``counts[i]`` times.

    >>> x = np.array([3, 1, 1, 7, 2, 2, 9])
    >>> v, c = np.unique(x, return_counts=True)
    >>> bool(np.array_equal(histogram_percentiles(v, c, (0.5, 99.5)), np.percentile(x, (0.5, 99.5))))
    True
    """
    order = np.argsort(values, kind="stable")
    ordered = np.asarray(values, dtype=np.float64)[order]
    cumulative = np.cumsum(np.asarray(counts, dtype=np.int64)[order])
    n = int(cumulative[-1])
    virtual = (n - 1) * (np.asarray(percentiles, dtype=np.float64) / 100)
    below = np.floor(virtual)
    gamma = virtual - below
    rank_below = below.astype(np.int64)
    # the value of each rank: the first entry whose running count passes it (empty entries skipped)
    a = ordered[np.searchsorted(cumulative, rank_below, side="right")]
    b = ordered[np.searchsorted(cumulative, np.minimum(rank_below + 1, n - 1), side="right")]
    diff = b - a
    return np.where(gamma >= 0.5, b - diff * (1 - gamma), a + diff * gamma)  # numpy's own lerp, both halves


def percentile_window(
    values: np.ndarray, percentiles: tuple[float, float] = DEFAULT_PERCENTILES, counts: np.ndarray | None = None,
) -> np.ndarray:
    """Linearly map the ``[p_low, p_high]`` percentile range of ``values`` to ``[0, 1]``.

    Parameters
    ----------
    values : numpy.ndarray
        Modality values.
    percentiles : tuple of float
        Lower and upper percentile (0-100).
    counts : numpy.ndarray, optional
        How many pixels each of ``values`` stands for (a table of distinct values), else one each.

    Returns
    -------
    numpy.ndarray
        ``float32`` array in ``[0, 1]``; all zeros for a constant image.
    """
    if counts is None:
        low, high = np.percentile(values, percentiles)
    else:
        low, high = histogram_percentiles(values, counts, percentiles)
    if high <= low:
        return np.zeros(np.shape(values), dtype=np.float32)
    return np.clip((np.asarray(values, dtype=np.float64) - low) / (high - low), 0, 1).astype(
        np.float32
    )


def _first(value: object) -> float:
    """Return the first item of a multi-valued DICOM number, or the number itself."""
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return float(value[0])
    return float(value)  # type: ignore[arg-type]


def _ensure_transfer_syntax(ds: Dataset) -> None:
    """Give a dataset read without File Meta its transfer syntax, from how it was encoded.

    Old files without a preamble or File Meta (read with ``force=True``) are still
    decodable: their encoding is known from parsing. Logs a warning (tolerant decoding).
    """
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return
    implicit, little = ds.original_encoding
    if implicit is None:
        implicit, little = True, True
    uid = (
        ImplicitVRLittleEndian
        if implicit
        else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    )
    logger.warning("dataset has no Transfer Syntax UID; using %s from its encoding", uid.name)
    if meta is None:
        ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = uid


def decode_pixels(ds: Dataset) -> np.ndarray:
    """Decode the stored pixel values of a single-frame grayscale instance.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        The instance.

    Returns
    -------
    numpy.ndarray
        Stored values, shape ``(Rows, Columns)``.

    Raises
    ------
    UndecodableImageError
        If there is no pixel data or no installed decoder can decode it.
    UnsupportedImageError
        If the image is not single-frame MONOCHROME1/MONOCHROME2.
    """
    if "PixelData" not in ds:
        raise UndecodableImageError("dataset has no Pixel Data")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        # A defined term is named; anything else is a value of the data set and stays out of the message.
        shown = photometric if photometric in _PHOTOMETRIC_TERMS else "another value"
        raise UnsupportedImageError(f"Photometric Interpretation {shown} is not MONOCHROME1/MONOCHROME2")
    if int(ds.get("NumberOfFrames", 1) or 1) != 1:
        raise UnsupportedImageError("multi-frame images are not accepted")
    _ensure_transfer_syntax(ds)
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # decoders raise RuntimeError, ValueError, OSError, ...
        syntax = ds.file_meta.TransferSyntaxUID
        raise UndecodableImageError(
            f"cannot decode pixel data ({syntax.name}): {type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:300]}"
        ) from exc
    if pixels.ndim != 2:
        raise UnsupportedImageError(f"decoded pixel array has shape {pixels.shape}, expected 2-D")
    return pixels


def _has_voi_lut(ds: Dataset) -> bool:
    return "VOILUTSequence" in ds and len(ds.VOILUTSequence) > 0


def _has_window(ds: Dataset) -> bool:
    return "WindowCenter" in ds and "WindowWidth" in ds


def _is_display_8_bit(ds: Dataset) -> bool:
    return int(ds.get("BitsStored", 16)) <= 8


def uses_percentile_window(ds: Dataset) -> bool:
    """Whether :func:`voi_to_unit` falls back to the percentile window (no VOI, more than 8 bits)."""
    return not (_has_voi_lut(ds) or _has_window(ds) or _is_display_8_bit(ds))


def voi_to_unit(
    values: np.ndarray, ds: Dataset, percentiles: tuple[float, float], counts: np.ndarray | None = None,
) -> np.ndarray:
    """Apply the dataset's VOI transform (or the documented fallback) into ``[0, 1]``.

    Parameters
    ----------
    values : numpy.ndarray
        Modality values.
    ds : pydicom.dataset.Dataset
        The instance, for its VOI LUT Sequence or Window Center/Width.
    percentiles : tuple of float
        Percentile window used when the image has no VOI and more than 8 bits stored.
    counts : numpy.ndarray, optional
        Pixels per entry of ``values`` when they are a table of distinct values (the window's percentiles).

    Returns
    -------
    numpy.ndarray
        ``float32`` array in ``[0, 1]``, before any MONOCHROME1 inversion.
    """
    if _has_voi_lut(ds):
        item = ds.VOILUTSequence[0]
        out_bits = int(item.LUTDescriptor[2])
        mapped = apply_voi(values, ds, index=0)
        return np.clip(np.asarray(mapped, np.float64) / (2**out_bits - 1), 0, 1).astype(
            np.float32
        )
    if _has_window(ds):
        function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR")
        return window_to_unit(values, _first(ds.WindowCenter), _first(ds.WindowWidth), function)
    if _is_display_8_bit(ds):
        return np.clip(np.asarray(values, np.float64) / 255.0, 0, 1).astype(np.float32)
    return percentile_window(values, percentiles, counts)


def display_table(stored: np.ndarray, ds: Dataset, percentiles: tuple[float, float]) -> tuple[np.ndarray, np.ndarray] | None:
    """Steps 2-4 of the chain as a table: ``(table, codes)`` with ``table[codes]`` the display image.

    ``codes`` are the stored values read as unsigned integers (a view, no copy), ``table`` holds
    the display value of every code up to the largest present. ``None`` when the pixels are
    not integers of at most 16 bits (the chain is then applied pixel by pixel).
    """
    if stored.dtype.kind not in "ui" or stored.dtype.itemsize > 2:
        return None
    codes = stored.view(np.dtype(f"u{stored.dtype.itemsize}"))
    size = int(codes.max()) + 1
    values = np.arange(size, dtype=codes.dtype).view(stored.dtype)
    counts = np.bincount(codes.ravel(), minlength=size) if uses_percentile_window(ds) else None
    table = voi_to_unit(apply_modality_lut(values, ds), ds, percentiles, counts)
    return _brightest_is_one(table, ds), codes


def display_per_pixel(stored: np.ndarray, ds: Dataset, percentiles: tuple[float, float]) -> np.ndarray:
    """Steps 2-4 of the chain applied to every pixel: for pixels :func:`display_table` cannot take."""
    return _brightest_is_one(voi_to_unit(apply_modality_lut(stored, ds), ds, percentiles), ds)


def _brightest_is_one(display: np.ndarray, ds: Dataset) -> np.ndarray:
    if str(ds.PhotometricInterpretation).strip() == "MONOCHROME1":
        return (1.0 - display).astype(np.float32)
    return display


_PHOTOMETRIC_TERMS = frozenset({
    "", "PALETTE COLOR", "RGB", "YBR_FULL", "YBR_FULL_422", "YBR_PARTIAL_420", "YBR_ICT", "YBR_RCT", "XYB",
})
"""Photometric Interpretation defined terms (PS3.3 C.7.6.3.1.2) that may be named in a message."""


def dicom_to_display(
    ds: Dataset, percentiles: tuple[float, float] = DEFAULT_PERCENTILES
) -> np.ndarray:
    """Map a CR/DX instance to the common intensity space (1 = brightest).

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        A single-frame grayscale instance. A missing File Meta transfer syntax is filled in
        from the dataset's encoding (the dataset is changed in place).
    percentiles : tuple of float
        Percentile window used when the image has no VOI and more than 8 bits stored.

    Returns
    -------
    numpy.ndarray
        ``float32`` array of shape ``(Rows, Columns)`` in ``[0, 1]``.

    Raises
    ------
    UndecodableImageError
        If the pixel data cannot be decoded.
    UnsupportedImageError
        If the image is colour or multi-frame.
    """
    stored = decode_pixels(ds)
    lookup = display_table(stored, ds, percentiles)
    if lookup is not None:
        table, codes = lookup
        return table[codes]
    return display_per_pixel(stored, ds, percentiles)


def read_dicom_image(
    path: str | Path, percentiles: tuple[float, float] = DEFAULT_PERCENTILES
) -> np.ndarray:
    """Read a DICOM file and map it to the common intensity space.

    Parameters
    ----------
    path : str or pathlib.Path
        Path of a DICOM file (Part 10, or a bare dataset without preamble and File Meta).
    percentiles : tuple of float
        See :func:`dicom_to_display`.

    Returns
    -------
    numpy.ndarray
        ``float32`` array of shape ``(Rows, Columns)`` in ``[0, 1]``.

    Raises
    ------
    UndecodableImageError
        If the file is not DICOM or its pixel data cannot be decoded.
    UnsupportedImageError
        If the image is colour or multi-frame.
    """
    try:
        ds = pydicom.dcmread(path, force=True)
    except (InvalidDicomError, OSError, EOFError, ValueError) as exc:
        raise UndecodableImageError(f"cannot read DICOM file {Path(path).name!r}: {exc}") from exc
    return dicom_to_display(ds, percentiles)

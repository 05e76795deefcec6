"""Render the AI result as one picture a radiologist can read in any viewer (pure, numpy + Pillow).

The picture is the radiograph, downscaled, with the classifier's relevance map blended
over it as a heatmap, the U-Net's lung contour drawn on it and a dark banner above it that
states the result in words. It becomes the pixel data of the summary Secondary Capture
(:mod:`dicom_node.report.summary_image`).

Layout::

    +--------------------------------------------+
    | COVID-19: NOT SUGGESTED (probability ...)  |  banner, dark, white text; prepended,
    | Model: <name> <version>                    |  so it hides no anatomy (the apices
    | AI result, not for diagnostic use          |  are at the top of the film)
    +--------------------------------------------+
    |                                            |
    |   radiograph (grey) + heatmap + contour    |  longest side of the whole picture
    |                                            |  <= max_size
    +--------------------------------------------+
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from monai_app.transforms.geometry import GridMap
from monai_app.transforms.lung_fields import LUNG_LEVEL

SourceMap = GridMap | np.ndarray
"""A map over the source image: on its model grid (resampled onto the picture's grid), or an array on the source grid."""

if TYPE_CHECKING:  # the value types only: rendering needs no highdicom
    from dicom_node.report.sr import AlgorithmInfo, Finding

DEFAULT_MAX_SIZE = 2048
# Relevance at or below the floor is noise of the Grad-CAM map: no heat drawn there.
RELEVANCE_FLOOR = 0.2
# Opacity of the heatmap at relevance 1; the radiograph stays visible under it.
MAX_HEAT_ALPHA = 0.55
CONTOUR_RGB = (0, 255, 255)  # cyan: absent from the heat colormap and from grey
BANNER_RGB = (16, 16, 16)
TEXT_RGB = (255, 255, 255)
DISCLAIMER = "AI result, not for diagnostic use"
FONT_PATH = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")  # Debian fonts-dejavu-core

# 'inferno' (perceptually uniform, monotonic in lightness), sampled every 0.1 from
# matplotlib's table. The lowest part is skipped (see _HEAT_LUT): near-black heat would
# only darken the film.
_INFERNO = np.array(
    [
        [0x00, 0x00, 0x04], [0x16, 0x0B, 0x39], [0x42, 0x0A, 0x68], [0x6A, 0x17, 0x6E],
        [0x93, 0x26, 0x67], [0xBC, 0x37, 0x54], [0xDD, 0x51, 0x3A], [0xF3, 0x78, 0x19],
        [0xFC, 0xA5, 0x0A], [0xF6, 0xD7, 0x46], [0xFC, 0xFF, 0xA4],
    ],
    dtype=np.float64,
)
_HEAT_LUT_START = 0.3  # purple-red: the first clearly visible colour on a radiograph


def _heat_lut(size: int = 256) -> np.ndarray:
    """(size, 3) float RGB: 'inferno' from :data:`_HEAT_LUT_START` to 1, linearly interpolated."""
    stops = np.linspace(0.0, 1.0, len(_INFERNO))
    t = np.linspace(_HEAT_LUT_START, 1.0, size)
    return np.stack([np.interp(t, stops, _INFERNO[:, channel]) for channel in range(3)], axis=1)


_HEAT_LUT = _heat_lut()


def legend_line(heatmap: bool, contour: bool) -> str | None:
    """What the colours mean, for the banner; ``None`` when nothing is drawn on the radiograph.

    >>> legend_line(True, True)
    'Heatmap: where the classifier looked (Grad-CAM). Cyan: lung fields (U-Net)'
    """
    parts = []
    if heatmap:
        parts.append("Heatmap: where the classifier looked (Grad-CAM)")
    if contour:
        parts.append("Cyan: lung fields (U-Net)")
    return ". ".join(parts) or None


def banner_lines(finding: Finding, algorithm: AlgorithmInfo, legend: str | None = None) -> list[str]:
    """The banner's text: the result, the model and the disclaimer.

    Parameters
    ----------
    finding : Finding
        Probability and threshold of COVID-19.
    algorithm : AlgorithmInfo
        The algorithm that produced it (name and version are shown).
    legend : str or None
        What the overlays mean (:func:`legend_line`), shown before the disclaimer.

    Returns
    -------
    list[str]
        Four lines (five with a legend), e.g.
        ``"COVID-19: SUGGESTED (probability 71.2 % >= threshold 13 %)"``, the operating point
        (:meth:`Finding.operating_point_line`), ``"Model: cxr_covid_classifier 0.3.1"``,
        ``"AI result, not for diagnostic use"``.

    Examples
    --------
    >>> from dicom_node.report.sr import AlgorithmInfo, Finding
    >>> algorithm = AlgorithmInfo("cxr_covid_classifier", "0.3.1", "ab" * 32, "CXR AI node project")
    >>> banner_lines(Finding(0.06, 0.13), algorithm)[0]
    'COVID-19: NOT SUGGESTED (probability 6 % < threshold 13 %)'
    """
    verdict, relation = ("SUGGESTED", ">=") if finding.is_present else ("NOT SUGGESTED", "<")
    # In percent, as in the report (Finding.probability_percent never contradicts the verdict).
    return [
        f"COVID-19: {verdict} (probability {finding.probability_percent:g} % {relation} "
        f"threshold {finding.threshold_percent:g} %)",
        finding.operating_point_line(),
        f"Model: {algorithm.name} {algorithm.version}",
        *([legend] if legend else []),
        DISCLAIMER,
    ]


def render_summary(
    source_image: np.ndarray,
    relevance: SourceMap | None,
    lung: SourceMap | None,
    banner: Sequence[str],
    *,
    max_size: int = DEFAULT_MAX_SIZE,
) -> np.ndarray:
    """Render the radiograph with heatmap, lung contour and banner as one RGB picture.

    Parameters
    ----------
    source_image : numpy.ndarray
        (rows, cols) uint8, the radiograph windowed for display (255 = white).
    relevance : GridMap, numpy.ndarray or None
        Float in [0, 1], the classifier's relevance map: a
        :class:`~monai_app.transforms.geometry.GridMap` of the source (resampled straight onto
        the picture's grid) or a (rows, cols) array on the source grid; heat is drawn where it
        exceeds :data:`RELEVANCE_FLOOR`. ``None``: no heatmap.
    lung : GridMap, numpy.ndarray or None
        Float lung probability in [0, 1], as ``relevance``; the boundary of ``lung >= 0.5`` is
        drawn in :data:`CONTOUR_RGB`. ``None``: no contour.
    banner : Sequence[str]
        Text lines of the banner, e.g. from :func:`banner_lines` (may be empty: no banner).
    max_size : int
        Longest side of the whole picture, banner included, in pixels (>= 64). The
        radiograph is only ever downscaled, keeping its aspect ratio.

    Returns
    -------
    numpy.ndarray
        (height, width, 3) uint8 RGB.

    Raises
    ------
    TypeError
        An array has the wrong type.
    ValueError
        An array has the wrong shape or values, or ``max_size`` is below 64.
    """
    _check_inputs(source_image, relevance, lung, banner, max_size)
    rows, cols = source_image.shape
    width, image_height, font, band_height = _layout(rows, cols, list(banner), max_size)

    grey = _resized(source_image, width, image_height)
    picture = np.repeat(grey[:, :, np.newaxis], 3, axis=2).astype(np.float32)
    if relevance is not None:
        heat = _map_on_picture(relevance, width, image_height, "relevance")
        picture = _blend_heat(picture, heat)
    rgb = np.clip(np.rint(picture), 0, 255).astype(np.uint8)
    if lung is not None:
        inside = _map_on_picture(lung, width, image_height, "lung") >= LUNG_LEVEL
        rgb[_boundary(inside, _line_width(width, image_height))] = CONTOUR_RGB
    if band_height == 0:
        return rgb
    return np.concatenate([_banner(list(banner), width, band_height, font), rgb], axis=0)


def _check_inputs(
    source_image: object, relevance: object, lung: object, banner: Sequence[str], max_size: int
) -> None:
    if not isinstance(source_image, np.ndarray) or source_image.dtype != np.uint8:
        raise TypeError('Argument "source_image" must be a uint8 numpy array.')
    if source_image.ndim != 2 or min(source_image.shape) < 1:
        raise ValueError('Argument "source_image" must have shape (rows, cols).')
    for argument, values in (("relevance", relevance), ("lung", lung)):
        if values is None:
            continue
        if isinstance(values, GridMap):
            if tuple(values.shape) != source_image.shape:
                raise ValueError(f'Argument "{argument}" must be a map of "source_image", {source_image.shape}.')
            continue  # its values are checked on the picture's grid (_map_on_picture)
        if not isinstance(values, np.ndarray) or not (
            np.issubdtype(values.dtype, np.floating) or values.dtype == np.bool_
        ):
            raise TypeError(f'Argument "{argument}" must be a GridMap, a float numpy array or None.')
        if values.shape != source_image.shape:
            raise ValueError(f'Argument "{argument}" must have the shape of "source_image", {source_image.shape}.')
        _check_unit_range(values, argument)
    if isinstance(banner, str) or not all(isinstance(line, str) for line in banner):
        raise TypeError('Argument "banner" must be a sequence of strings.')
    if isinstance(max_size, bool) or not isinstance(max_size, int):
        raise TypeError('Argument "max_size" must be an int.')
    if max_size < 64:
        raise ValueError('Argument "max_size" must be at least 64.')


def _layout(
    rows: int, cols: int, banner: list[str], max_size: int
) -> tuple[int, int, ImageFont.FreeTypeFont | ImageFont.ImageFont, int]:
    """Width, radiograph height, font and banner height that fit ``max_size``."""
    scale = min(1.0, max_size / max(rows, cols))
    while True:
        width = max(1, round(cols * scale))
        image_height = max(1, round(rows * scale))
        font, band_height = _banner_font(banner, width)
        total = image_height + band_height
        if max(width, total) <= max_size:
            return width, image_height, font, band_height
        # The banner's height follows the width, so shrink both and try again.
        scale *= (max_size - 1) / total


def _banner_font(banner: list[str], width: int) -> tuple[ImageFont.FreeTypeFont | ImageFont.ImageFont, int]:
    """The largest font up to width/40 px whose longest line fits ``width``, and the band height."""
    if not banner:
        return _font(10), 0
    size = max(8, width // 40)  # ~60 characters across: readable on a 512 and a 2k picture
    font = _font(size)
    longest = max(font.getlength(line) for line in banner) or 1.0
    usable = width * 0.96
    if longest > usable:
        size = max(8, math.floor(size * usable / longest))
        font = _font(size)
    line_height = math.ceil(size * 1.3)
    return font, line_height * len(banner) + math.ceil(size * 0.6)


@lru_cache(maxsize=32)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    if FONT_PATH.is_file():
        return ImageFont.truetype(str(FONT_PATH), size)
    return ImageFont.load_default(size=size)  # Pillow's own scalable font, without DejaVu


def _banner(banner: list[str], width: int, height: int, font: ImageFont.FreeTypeFont | ImageFont.ImageFont) -> np.ndarray:
    band = Image.new("RGB", (width, height), BANNER_RGB)
    draw = ImageDraw.Draw(band)
    size = getattr(font, "size", 10)
    line_height = math.ceil(size * 1.3)
    x, y = math.ceil(width * 0.02), math.ceil(size * 0.3)
    for line in banner:
        draw.text((x, y), line, fill=TEXT_RGB, font=font)
        y += line_height
    return np.asarray(band, dtype=np.uint8)


def _check_unit_range(values: np.ndarray, argument: str) -> None:
    if not np.all(np.isfinite(values)) or values.min() < 0 or values.max() > 1:
        raise ValueError(f'Argument "{argument}" must be finite and in [0, 1].')


def _map_on_picture(values: SourceMap, width: int, height: int, argument: str) -> np.ndarray:
    """A map on the picture's (height, width) grid: an array resized, a GridMap resampled from its model grid."""
    if isinstance(values, np.ndarray):
        return _resized(values.astype(np.float32), width, height)
    on_picture = values.on((height, width))
    _check_unit_range(on_picture, argument)
    return on_picture


def _resized(values: np.ndarray, width: int, height: int) -> np.ndarray:
    """``values`` resampled to (height, width): Lanczos for the film, bilinear for the maps."""
    if values.shape == (height, width):
        return values
    if values.dtype == np.uint8:
        # reducing_gap 1: a box reduction by the whole factor first (2 for a 2500-pixel film at
        # 1024), Lanczos for the rest: 2x faster than Lanczos alone, 0.2 grey levels apart on average.
        return np.asarray(Image.fromarray(values).resize((width, height), Image.Resampling.LANCZOS, reducing_gap=1.0))
    # Bilinear keeps the maps within [0, 1] (Lanczos overshoots); Pillow antialiases it.
    resized = Image.fromarray(np.ascontiguousarray(values, dtype=np.float32)).resize(
        (width, height), Image.Resampling.BILINEAR
    )
    return np.asarray(resized, dtype=np.float32)


def _blend_heat(picture: np.ndarray, relevance: np.ndarray) -> np.ndarray:
    """Blend the heat colour over ``picture`` with opacity growing from 0 at the floor."""
    strength = np.clip((relevance - RELEVANCE_FLOOR) / (1.0 - RELEVANCE_FLOOR), 0.0, 1.0)
    hot = strength > 0
    if not hot.any():
        return picture
    index = np.rint(strength[hot] * (len(_HEAT_LUT) - 1)).astype(np.intp)
    alpha = (MAX_HEAT_ALPHA * strength[hot])[:, np.newaxis]
    picture[hot] = (1.0 - alpha) * picture[hot] + alpha * _HEAT_LUT[index]
    return picture


def _line_width(width: int, height: int) -> int:
    """2 px on a 512 picture, 3 px on a 2k one."""
    return 2 if max(width, height) < 1400 else 3


def _boundary(mask: np.ndarray, width: int) -> np.ndarray:
    """Pixels of ``mask`` within ``width`` px of its outside: mask minus its erosion."""
    eroded = mask
    for _ in range(width):
        eroded = _eroded(eroded)
    return mask & ~eroded


def _eroded(mask: np.ndarray) -> np.ndarray:
    """3x3 binary erosion; outside the picture counts as background."""
    padded = np.pad(mask, 1, constant_values=False)
    rows, cols = mask.shape
    result = mask.copy()
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            result &= padded[dy:dy + rows, dx:dx + cols]
    return result

"""Every DICOM object of one analysed image: the SR report and the objects it references (pure).

Order matters twice: the summary image and the segmentation are built first, so the report
can list them as evidence, and they are sent first (see :meth:`Spool.put_result`), so a
viewer that opens the report finds them in the PACS. The key-image selection of the similar
images is sent before the report too, but the report does not list it: TID 1500 has no place
for it, and the report references each similar image itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset

from dicom_node.report.key_images import build_similar_images_selection
from dicom_node.report.segmentation import build_lung_segmentation
from dicom_node.report.source import checked_source
from dicom_node.report.sr import AlgorithmInfo, Finding, ImageRegion, SimilarStudy, build_report
from dicom_node.report.summary_image import build_summary_image
from dicom_node.report.summary_picture import SourceMap, banner_lines, legend_line, render_summary
from monai_app.transforms.lung_fields import LUNG_LEVEL

SUMMARY_MAX_SIZE = 1024
"""Longest side of the summary image, pixels: readable on any screen, about 2.5 MB uncompressed
(2048 would be 10 MB per study for a picture whose heatmap has the classifier's 224-pixel detail)."""


@dataclass(frozen=True)
class ImageEvidence:
    """What the models saw, on the source image's pixel grid.

    Parameters
    ----------
    source_image : numpy.ndarray
        (rows, columns) uint8, the radiograph as the model loaded it (windowed, 255 = white).
    relevance : GridMap, numpy.ndarray or None
        Float in [0, 1]: the classifier's relevance (``None``: not computed). A
        :class:`~monai_app.transforms.geometry.GridMap` is resampled only onto the grid it is
        drawn on; an array is already on the source grid, (rows, columns).
    lung : GridMap, numpy.ndarray or None
        Float in [0, 1]: the U-Net's lung probability, as ``relevance``.
    region : ImageRegion or None
        The outline the report draws on the source.
    """

    source_image: np.ndarray
    relevance: SourceMap | None
    lung: SourceMap | None
    region: ImageRegion | None


def on_source(values: SourceMap) -> np.ndarray:
    """A map on the source grid itself: as given, or resampled there from its model grid."""
    return values if isinstance(values, np.ndarray) else values.on()


@dataclass(frozen=True)
class ResultObjects:
    """The report and, in sending order before it, its companion objects (the ones it lists, then the KOS)."""

    report: Dataset
    # (kind, object): "sc" summary image, "seg" segmentation, "ko" key-image selection
    companions: tuple[tuple[str, Dataset], ...]


def build_result(
    source: Dataset,
    finding: Finding,
    similar: Sequence[SimilarStudy],
    algorithm: AlgorithmInfo,
    evidence: ImageEvidence | None,
    *,
    summary_image: bool = True,
    lung_segmentation: bool = False,
    key_images: bool = True,
) -> ResultObjects:
    """Build the report on ``source`` and, with ``evidence``, the summary image and segmentation.

    Parameters
    ----------
    source : pydicom.dataset.Dataset
        The analysed image's header (pixel data not needed).
    finding, similar, algorithm
        As for :func:`dicom_node.report.sr.build_report`.
    evidence : ImageEvidence or None
        Maps and region on the source grid; ``None`` gives a report without coordinates
        and no other object.
    summary_image : bool
        Add the Secondary Capture summary image.
    lung_segmentation : bool
        Add the DICOM Segmentation of the lung fields (needs ``evidence.lung``).
    key_images : bool
        Add the Key Object Selection of the similar images (when there are any; needs no
        ``evidence``).

    Returns
    -------
    ResultObjects
        Every object with a UID that is a function of the source, the algorithm and the
        threshold: a re-analysis rebuilds the same objects.
    """
    # Once for all objects: each builder would otherwise log the same blanked attributes.
    source = checked_source(source)
    companions: list[tuple[str, Dataset]] = []
    if evidence is not None and summary_image:
        legend = legend_line(evidence.relevance is not None, evidence.lung is not None)
        pixels = render_summary(
            evidence.source_image, evidence.relevance, evidence.lung, banner_lines(finding, algorithm, legend),
            max_size=SUMMARY_MAX_SIZE,
        )
        companions.append(("sc", build_summary_image(source, pixels, finding, algorithm)))
    if evidence is not None and lung_segmentation and evidence.lung is not None:
        mask = on_source(evidence.lung) >= LUNG_LEVEL
        if mask.any():  # a Segmentation needs a segment with pixels
            companions.append(("seg", build_lung_segmentation(source, mask, algorithm)))
    report = build_report(
        source, finding, similar, algorithm,
        region=None if evidence is None else evidence.region,
        companions=[dataset for _, dataset in companions],
    )
    if key_images and similar:
        companions.append(("ko", build_similar_images_selection(source, similar, algorithm)))
    return ResultObjects(report, tuple(companions))

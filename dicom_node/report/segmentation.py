"""Build the U-Net's lung mask as a DICOM Segmentation with highdicom (pure, no I/O).

One BINARY segment "Lung" on the source radiograph's pixel grid, in the source's study
and a series of its own. CR and DX images have no Frame of Reference and no plane
position (projection radiography); highdicom 0.28.2 accepts such a source for a single
frame that matches it pixel for pixel: it then writes no Frame of Reference, no Plane
Position or Orientation and indexes the one frame by segment number only (Dimension
Index "Referenced Segment Number"), with the source in the Derivation Image Sequence.

Transfer syntax: Explicit VR Little Endian, as the summary image and for the same reason
(the sender proposes only the file's own). A BINARY frame is 1 bit a pixel, so a
2128 x 2000 radiograph gives about 0.5 MB.
"""

from __future__ import annotations

import math

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian

from dicom_node.report import codes
from dicom_node.report.source import checked_source, source_instance_number, source_patient_orientation
from dicom_node.report.sr import AlgorithmInfo, ProcessingAlgorithmEquipment, _check_text
from dicom_node.report.uids import derived_uid

DEFAULT_SERIES_NUMBER = 9002  # after the report (9000) and the summary image (9001)
DEFAULT_SERIES_DESCRIPTION = "AI chest X-ray: lung segmentation"
CONTENT_LABEL = "LUNG"  # CS: upper case, digits, space and underscore only
CONTENT_DESCRIPTION = "Lung fields segmented by AI"
SEGMENT_LABEL = "Lung"
# Cyan, as the lung contour of the summary image: CIE L*a*b* of sRGB (0, 255, 255).
SEGMENT_COLOR = hd.color.CIELabColor(91.1, -48.1, -14.1)


def segmentation_series_instance_uid(source: Dataset, algorithm: AlgorithmInfo) -> UID:
    """Series Instance UID of the lung segmentations one algorithm makes for one source series."""
    return derived_uid(
        "seg-series", str(source.SeriesInstanceUID), algorithm.name, algorithm.version,
        algorithm.weights_sha256,
    )


def segmentation_sop_instance_uid(source: Dataset, algorithm: AlgorithmInfo) -> UID:
    """SOP Instance UID of the lung segmentation of ``source``: the same inputs give the same UID.

    No classification threshold here: the mask does not depend on it; new weights or a
    new version give a new segmentation.
    """
    return derived_uid(
        "seg-instance", str(source.SOPInstanceUID), algorithm.name, algorithm.version,
        algorithm.weights_sha256,
    )


def lung_segment_description(algorithm: AlgorithmInfo) -> hd.seg.SegmentDescription:
    """Segment 1, "Lung": an anatomical structure found automatically by ``algorithm``."""
    return hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=SEGMENT_LABEL,
        segmented_property_category=codes.ANATOMICAL_STRUCTURE,
        segmented_property_type=codes.LUNG,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=algorithm.name,
            family=codes.ARTIFICIAL_INTELLIGENCE,
            version=algorithm.version,
            source=algorithm.manufacturer,
        ),
        display_color=SEGMENT_COLOR,
    )


def build_lung_segmentation(
    source: Dataset,
    lung_mask: np.ndarray,
    algorithm: AlgorithmInfo,
    *,
    series_number: int = DEFAULT_SERIES_NUMBER,
    series_description: str = DEFAULT_SERIES_DESCRIPTION,
    institution_name: str | None = None,
) -> hd.seg.Segmentation:
    """Build the BINARY Segmentation of the lungs on ``source``.

    Parameters
    ----------
    source : pydicom.dataset.Dataset
        The segmented single-frame image (pixel data not needed); patient and study
        attributes are copied from it through
        :func:`~dicom_node.report.source.checked_source`.
    lung_mask : numpy.ndarray
        (Rows, Columns) bool on the source's pixel grid, True inside the lungs (e.g. the
        U-Net's probability ``>= 0.5``, mapped back to the source grid). May be empty:
        the frame is then kept, all zero, so that the object still says "no lung found".
    algorithm : AlgorithmInfo
        The segmentation algorithm (Algorithm Identification, Manufacturer, model,
        software versions, Contributing Equipment, UIDs). Its weights hash is the Device
        Serial Number.
    series_number : int
        Series Number of the segmentation series.
    series_description : str
        Series Description shown in the PACS worklist.
    institution_name : str or None
        Institution Name of the equipment that created the segmentation.

    Returns
    -------
    highdicom.seg.Segmentation
        One frame, one segment, Explicit VR Little Endian.

    Raises
    ------
    TypeError
        An argument has the wrong type.
    ValueError
        An argument has a wrong value (e.g. the mask does not match the source's Rows and
        Columns, the source is multi-frame or lacks its UIDs).
    """
    source = checked_source(source)
    if not isinstance(algorithm, AlgorithmInfo):
        raise TypeError('Argument "algorithm" must have type AlgorithmInfo.')
    if not isinstance(lung_mask, np.ndarray) or lung_mask.dtype != np.bool_:
        raise TypeError('Argument "lung_mask" must be a bool numpy array.')
    shape = (source.get("Rows"), source.get("Columns"))
    if lung_mask.shape != shape:
        raise ValueError(f'Argument "lung_mask" must have the source\'s shape (Rows, Columns) = {shape}.')
    if int(source.get("NumberOfFrames") or 1) != 1:
        raise ValueError('Argument "source" must be a single-frame image.')
    _check_text("series_description", series_description)

    segmentation = hd.seg.Segmentation(
        source_images=[_without_pixel_spacing(source)],
        pixel_array=lung_mask,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[lung_segment_description(algorithm)],
        series_instance_uid=segmentation_series_instance_uid(source, algorithm),
        series_number=series_number,
        sop_instance_uid=segmentation_sop_instance_uid(source, algorithm),
        instance_number=source_instance_number(source),
        manufacturer=algorithm.manufacturer,
        manufacturer_model_name=algorithm.manufacturer_model_name,
        software_versions=algorithm.version,
        device_serial_number=algorithm.weights_sha256,  # 64 hex digits: fits LO
        content_label=CONTENT_LABEL,
        content_description=CONTENT_DESCRIPTION,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        omit_empty_frames=False,  # an empty mask still gives one (empty) frame
        series_description=series_description,
        institution_name=institution_name,
        contributing_equipment=[ProcessingAlgorithmEquipment(algorithm)],
    )
    # General Image, Type 2C without a Frame of Reference (highdicom leaves it out): the
    # mask is on the source's grid, so the source's orientation; empty when unknown.
    orientation = source_patient_orientation(source)
    segmentation.PatientOrientation = list(orientation) if orientation else []
    spacing = _source_pixel_spacing(source)
    if spacing is not None and "PixelMeasuresSequence" not in segmentation.SharedFunctionalGroupsSequence[0]:
        # OHIF v3 reads the Pixel Measures of every SEG (its viewport fails without them);
        # the mask is on the source's grid, so the source's spacing, without Slice Thickness.
        measures = Dataset()
        measures.PixelSpacing = list(spacing)
        segmentation.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence = [measures]
    return segmentation


def _source_pixel_spacing(source: Dataset) -> tuple[float, float] | None:
    """The source's Pixel Spacing, else its Imager Pixel Spacing (mm, row then column); ``None`` if neither is valid."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        try:
            rows, columns = (float(v) for v in source.get(keyword) or ())
        except (TypeError, ValueError):
            continue
        if rows > 0 and columns > 0 and all(map(math.isfinite, (rows, columns))):
            return rows, columns
    return None


def _without_pixel_spacing(source: Dataset) -> Dataset:
    """``source``, or a copy without Pixel Spacing when it has no Frame of Reference.

    highdicom copies a projection radiograph's Pixel Spacing into the Pixel Measures
    Sequence without Slice Thickness (which a radiograph has not): dciodvfy accepts that,
    but highdicom 0.28.2's own reader (``segread``) refuses it, and zero spacings (seen in
    real CR files) are errors. :func:`build_lung_segmentation` adds the source's valid
    spacing afterwards, without Slice Thickness.
    """
    if "PixelSpacing" not in source or "FrameOfReferenceUID" in source:
        return source
    copy = Dataset()
    for element in source:
        if element.keyword != "PixelSpacing":
            copy.add(element)
    return copy

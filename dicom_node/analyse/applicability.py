"""Is a received image one the classifier was made for (a frontal chest radiograph)?

The model was trained, like the paper's, on frontal (PA/AP) chest radiographs only. Three
checks keep other images out: the header (SOP class and modality, body part, view) before
decoding; the share of lung the U-Net finds; and whether the picture looks like a frontal
chest at all (two plausible lung fields, and the chest appearance model), for images whose
header says nothing, as a panoramic dental film with an empty Body Part Examined.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.uid import SecondaryCaptureImageStorage

from dicom_node.analyse.analyser import PreparedImage

CHEST_BODY_PARTS = frozenset({"CHEST", "THORAX", "LUNG", "CHEST_TO_PELVIS", "CHESTABDOMEN", "CHESTABDPELV"})
"""Body Part Examined values (defined terms, PS3.16 Annex L) accepted as a chest."""
LATERAL_VIEW_POSITIONS = frozenset({"LL", "RL", "LAT", "LATERAL"})
"""View Position values of a lateral projection."""
RADIOGRAPH_MODALITIES = frozenset({"CR", "DX"})
"""Modalities of a Secondary Capture image that is analysed like a radiograph (a digitised or converted X-ray)."""
MIN_LUNG_FRACTION = 0.05
"""Below this fraction of the image in lung (U-Net probability >= 0.5), there is no chest to read."""


@dataclass(frozen=True)
class Applicability:
    """Whether to classify an image; ``reason`` (no patient data) says why not."""

    applicable: bool
    reason: str = ""

    @property
    def category(self) -> str:
        """The reason's category (before the first colon), for counting."""
        return self.reason.split(":", 1)[0]


APPLICABLE = Applicability(True)


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    return str(value).strip().upper() if value is not None else ""


def _view_code_meanings(ds: Dataset) -> list[str]:
    return [str(item.get("CodeMeaning", "")).lower() for item in ds.get("ViewCodeSequence", [])]


def check_header(ds: Dataset) -> Applicability:
    """Decide from the header alone; unknown (empty) body part or view counts as applicable.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        The image's data set (pixel data not needed).

    Returns
    -------
    Applicability
        Not applicable for a Secondary Capture image of a modality other than CR or DX,
        another body part or a lateral view.

    Examples
    --------
    >>> ds = Dataset(); ds.BodyPartExamined = "CHEST"; ds.ViewPosition = "PA"
    >>> check_header(ds).applicable
    True
    >>> ds.ViewPosition = "LL"
    >>> check_header(ds).reason
    'lateral view: View Position LL'
    >>> ds.BodyPartExamined = "HAND"
    >>> check_header(ds).reason
    'not a chest image: Body Part Examined HAND'
    >>> sc = Dataset(); sc.SOPClassUID = SecondaryCaptureImageStorage; sc.Modality = "OT"
    >>> check_header(sc).reason
    'not a radiograph: Secondary Capture of modality OT'
    >>> sc.Modality = "DX"; check_header(sc).applicable
    True
    """
    if str(ds.get("SOPClassUID", "")) == SecondaryCaptureImageStorage:
        # Converted and digitised X-rays arrive as SC with Modality CR/DX; other SC images are screenshots, scans, ...
        modality = _text(ds, "Modality")
        if modality not in RADIOGRAPH_MODALITIES:
            return Applicability(False, f"not a radiograph: Secondary Capture of modality {modality[:16] or '(none)'}")
    body_part = _text(ds, "BodyPartExamined")
    if body_part and body_part not in CHEST_BODY_PARTS:
        return Applicability(False, f"not a chest image: Body Part Examined {body_part[:16]}")
    view = _text(ds, "ViewPosition")
    if view in LATERAL_VIEW_POSITIONS:
        return Applicability(False, f"lateral view: View Position {view}")
    for meaning in _view_code_meanings(ds):
        if "lateral" in meaning and "decubitus" not in meaning:
            return Applicability(False, f"lateral view: View Code {meaning[:64]}")
    return APPLICABLE


def check_lung_fraction(lung_fraction: float, minimum: float = MIN_LUNG_FRACTION) -> Applicability:
    """Decide from the share of the image the U-Net calls lung.

    >>> check_lung_fraction(0.3).applicable
    True
    >>> check_lung_fraction(0.01).reason
    'no lung fields found: 1.0% of the image, 5.0% needed'
    """
    if lung_fraction < minimum:
        return Applicability(False, f"no lung fields found: {lung_fraction:.1%} of the image, {minimum:.1%} needed")
    return APPLICABLE


def check_frontal_chest(image: PreparedImage) -> Applicability:
    """Decide from what the U-Net and the appearance model make of the picture.

    Returns
    -------
    Applicability
        Not applicable, with the reason and the lung-field measurements, when the picture
        does not look like a frontal chest radiograph.
    """
    reason = image.not_chest_reason
    if reason:
        return Applicability(False, f"not a frontal chest radiograph: {reason} (lung fields: {image.lung_fields_summary})")
    return APPLICABLE


def check_image(image: PreparedImage) -> Applicability:
    """The node's checks of a prepared image, in order: lung fraction, then the frontal-chest picture.

    What the worker analyses and what a similar-study index built from the PACS takes
    (:mod:`dicom_node.pacs.prior_index`) are decided here, once.
    """
    for verdict in (check_lung_fraction(image.lung_fraction), check_frontal_chest(image)):
        if not verdict.applicable:
            return verdict
    return APPLICABLE

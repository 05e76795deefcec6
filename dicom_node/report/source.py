"""The source image's attributes, made fit to copy into a derived object (pure).

Every object the node makes (report, summary image, segmentation) copies the patient and
study attributes of the image it was made from; :func:`checked_source` makes sure what is
copied is valid.
"""

from __future__ import annotations

import logging
import re

from pydicom import config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.valuerep import validate_value

logger = logging.getLogger(__name__)

# Type 2 attributes of the Patient and General Study modules that highdicom reads
# from the source; a source without them gets them empty rather than refused.
_TYPE2_SOURCE_ATTRIBUTES = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
)
# Text VRs whose invalid values are copied as empty (see checked_source).
_BLANKABLE_VRS = frozenset({"AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM"})
_ORIENTATION = re.compile(r"[APRLHF]{1,3}")
_REQUIRED_SOURCE_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")


def checked_source(source: object) -> Dataset:
    """Return ``source``, or a copy fit to copy patient and study attributes from.

    Decode tolerantly (highdicom's rule): a Type 2 attribute the source lacks is added
    empty, and a text value invalid for its VR (de-identified test data carry hashes as
    birth dates and 56-character accession numbers) is copied as empty, so the report
    stays valid. UIDs are never blanked. The caller's data set is left untouched.
    """
    if not isinstance(source, Dataset):
        raise TypeError('Argument "source" must be a pydicom Dataset.')
    missing_uids = [keyword for keyword in _REQUIRED_SOURCE_UIDS if not source.get(keyword)]
    if missing_uids:
        raise ValueError(f'Argument "source" lacks {", ".join(missing_uids)}.')
    missing = [keyword for keyword in _TYPE2_SOURCE_ATTRIBUTES if keyword not in source]
    invalid = [element for element in source if _has_invalid_text_value(element)]
    if not missing and not invalid:
        return source
    # Names only: the values may be patient identifiers.
    logger.warning(
        "source image: %s copied empty into the report (missing or invalid for its VR)",
        ", ".join([*missing, *(element.keyword or str(element.tag) for element in invalid)]),
    )
    patched = Dataset()
    for element in source:
        patched.add(element)
    # New elements, never element.value = ...: the elements are shared with the source.
    for element in invalid:
        patched.add(DataElement(element.tag, element.VR, None))
    for keyword in missing:
        setattr(patched, keyword, None)
    return patched


def source_instance_number(source: Dataset) -> int:
    """The source's Instance Number for a derived object: a positive int, else 1.

    Parameters
    ----------
    source : pydicom.dataset.Dataset
        The image the object is made from.

    Returns
    -------
    int
        Its Instance Number if that is an integer >= 1, else 1 (Instance Number is Type 2
        in images and may be missing, empty or invalid).
    """
    try:
        number = int(source.get("InstanceNumber"))  # IS values arrive as IS (an int subclass) or str
    except (TypeError, ValueError):
        return 1
    return number if number >= 1 else 1


def source_patient_orientation(source: Dataset) -> tuple[str, str] | None:
    """The source's Patient Orientation when it is valid, else ``None`` (to be written empty).

    An object on the source's pixel grid, or a scaled copy of it, has the source's
    orientation. Valid: two values, each one to three of the biped direction letters
    ``A P R L H F`` (PS3.3 C.7.6.1.1.1); quadruped and empty values give ``None``.

    Parameters
    ----------
    source : pydicom.dataset.Dataset
        The image the object is made from.

    Returns
    -------
    tuple[str, str] or None
        The row and column directions, e.g. ``("L", "F")``.
    """
    values = source.get("PatientOrientation")
    if values is None or isinstance(values, str) or len(values) != 2:
        return None
    row, column = (str(value) for value in values)
    if all(_ORIENTATION.fullmatch(direction) for direction in (row, column)):
        return row, column
    return None


def _has_invalid_text_value(element: DataElement) -> bool:
    if element.VR not in _BLANKABLE_VRS or element.value is None:
        return False
    values = element.value if element.VM > 1 else [element.value]
    try:
        for value in values:
            validate_value(element.VR, str(value), config.RAISE)
    except ValueError:
        return True
    return False

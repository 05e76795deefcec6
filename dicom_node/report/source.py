"""The source image's attributes, made fit to copy into a derived object (pure).

Every object the node makes (report, summary image, segmentation) copies the patient and
study attributes of the image it was made from; :func:`checked_source` makes sure what is
copied is valid.
"""

from __future__ import annotations

import logging

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

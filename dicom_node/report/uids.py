"""Deterministic DICOM UIDs: the same inputs always name the same object (pure)."""

from __future__ import annotations

import uuid

from pydicom.uid import UID

# Name-based UIDs (ISO/IEC 9834-8 "2.25." form of a UUID v5) live in this namespace.
_UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:cxr-ai-node:dicom-uids")

def derived_uid(*names: str) -> UID:
    """Return a UID that is a pure function of ``names`` (``2.25.`` + UUID version 5).

    Parameters
    ----------
    *names : str
        The values the UID stands for, e.g. a source SOP Instance UID and an algorithm
        version. The same names always give the same UID; any change gives another.

    Returns
    -------
    pydicom.uid.UID
        A valid UID of at most 44 characters.

    Examples
    --------
    >>> derived_uid("a", "b") == derived_uid("a", "b") != derived_uid("a", "c")
    True
    """
    # The unit separator keeps ("ab", "c") and ("a", "bc") apart.
    return UID(f"2.25.{uuid.uuid5(_UID_NAMESPACE, chr(0x1F).join(names)).int}")

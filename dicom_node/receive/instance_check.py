"""Checking a received data set before it is stored: parseable, complete, identified.

The check walks every element header of the encoded data set as received, without
reading large values or decoding pixel data, so it costs milliseconds even for a 30 MB
radiograph.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass
from io import BytesIO
from typing import BinaryIO, cast

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.uid import UID

from dicom_node.errors import MissingIdentifierError, UnreadableDatasetError
from dicom_node.spool import is_valid_uid

_DEFER_SIZE = 64 * 1024  # values larger than this are skipped, not read, while checking


@dataclass(frozen=True)
class InstanceIdentity:
    """The UIDs that identify a received data set."""

    sop_class_uid: str
    sop_instance_uid: str


def read_instance_identity(dataset: BinaryIO, transfer_syntax: UID) -> InstanceIdentity:
    """Parse a received data set (no file meta) and return its UIDs.

    Every element header is walked, without reading large values or decoding pixels, so
    a garbage or truncated byte stream is refused here rather than found later by whoever
    reads the file. UIDs are checked tolerantly (digits and dots; real modalities emit
    leading zeros).

    Parameters
    ----------
    dataset : BinaryIO
        The encoded data set as received (seekable).
    transfer_syntax : pydicom.uid.UID
        The presentation context's transfer syntax.

    Raises
    ------
    UnreadableDatasetError
        The bytes are not a DICOM data set, or it ends before its Pixel Data is complete.
    MissingIdentifierError
        The data set lacks a SOP Class UID or SOP Instance UID.
    """
    size = dataset.seek(0, os.SEEK_END)
    dataset.seek(0)
    try:
        if transfer_syntax.is_deflated:
            dataset = BytesIO(zlib.decompress(dataset.read(), -zlib.MAX_WBITS))
            size = len(dataset.getbuffer())
        ds = read_dataset(
            dataset, transfer_syntax.is_implicit_VR, transfer_syntax.is_little_endian, defer_size=_DEFER_SIZE,
        )
        complete = _pixel_data_complete(ds, dataset, size)
    except Exception as exc:  # pydicom raises many types for corrupt input
        raise UnreadableDatasetError(f"data set cannot be parsed ({type(exc).__name__})") from exc
    finally:
        dataset.seek(0)
    if not complete:
        raise UnreadableDatasetError("data set is truncated: Pixel Data incomplete or missing")
    sop_class_uid = str(ds.get("SOPClassUID", "") or "")
    sop_instance_uid = str(ds.get("SOPInstanceUID", "") or "")
    if not is_valid_uid(sop_class_uid) or not is_valid_uid(sop_instance_uid):
        raise MissingIdentifierError("data set lacks a SOP Class UID or SOP Instance UID")
    return InstanceIdentity(sop_class_uid, sop_instance_uid)


def _pixel_data_complete(ds: Dataset, stream: BinaryIO, stream_size: int) -> bool:
    """Whether an image data set has all the Pixel Data it declares.

    pydicom silently drops a last element whose value is cut short, does not read a deferred
    value at all, and only warns when encapsulated Pixel Data lacks its delimiter, so each case
    is checked against the stream itself (no warnings state: the check runs in many threads).
    """
    if "PixelData" not in ds:
        return False
    raw = cast(RawDataElement | None, ds.get_item(0x7FE00010, keep_deferred=True))
    if raw is None:
        return True
    if raw.length == _UNDEFINED_LENGTH:
        return _fragments_delimited(stream, raw.value_tell, stream_size)
    if raw.value is not None:
        return True  # small and fully read
    return raw.value_tell + raw.length <= stream_size


_UNDEFINED_LENGTH = 0xFFFFFFFF
_ITEM = (0xFFFE, 0xE000)
_SEQUENCE_DELIMITER = (0xFFFE, 0xE0DD)


def _fragments_delimited(stream: BinaryIO, offset: int, stream_size: int) -> bool:
    """Whether encapsulated Pixel Data starting at ``offset`` runs through its Sequence
    Delimitation Item: every item (offset table, fragments) is whole (always little endian,
    PS3.5 A.4)."""
    while offset + 8 <= stream_size:
        stream.seek(offset)
        group, element, length = struct.unpack("<HHL", stream.read(8))
        if (group, element) == _SEQUENCE_DELIMITER:
            return True
        if (group, element) != _ITEM or length == _UNDEFINED_LENGTH:
            return False
        offset += 8 + length
    return False

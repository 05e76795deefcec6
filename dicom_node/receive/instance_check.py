"""Checking a received data set before it is stored: parseable, complete, identified.

The check walks every element header of the encoded data set as received, without
reading large values or decoding pixel data, so it costs milliseconds even for a 30 MB
radiograph.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass
from io import BytesIO
from typing import Any, BinaryIO, cast

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.tag import Tag
from pydicom.uid import UID
from pydicom.valuerep import BYTES_VR, VR

from dicom_node.errors import InvalidInstanceError, MissingIdentifierError, UnreadableDatasetError
from dicom_node.spool import is_valid_uid

_DEFER_SIZE = 64 * 1024  # values larger than this are skipped, not read, while checking


@dataclass(frozen=True)
class InstanceIdentity:
    """The UIDs that identify a received data set."""

    sop_class_uid: str
    sop_instance_uid: str


def read_instance_identity(
    dataset: BinaryIO, transfer_syntax: UID, *, start: int = 0, max_inflated_bytes: int = 2**31
) -> InstanceIdentity:
    """Parse a received data set (no file meta) and return its UIDs.

    Every element header is walked and every element but Pixel Data is decoded (known VR,
    value convertible, within the stream), without reading Pixel Data or decoding pixels, so
    a garbage or truncated byte stream is refused here rather than found later by whoever
    reads the file: an instance that passes reads back completely with pydicom. UIDs are
    checked tolerantly (digits and dots; real modalities emit leading zeros).

    Parameters
    ----------
    dataset : BinaryIO
        The encoded data set as received (seekable), from ``start`` to its end.
    transfer_syntax : pydicom.uid.UID
        The presentation context's transfer syntax.
    start : int
        Offset of the data set in ``dataset`` (after the file meta of a Part 10 file).
    max_inflated_bytes : int
        Largest size a deflated data set may inflate to (a small deflate bomb is refused).

    Raises
    ------
    UnreadableDatasetError
        The bytes are not a DICOM data set, an element cannot be decoded, or it ends before
        its Pixel Data is complete. The message names the element by tag, never a value.
    MissingIdentifierError
        The data set lacks a SOP Class UID or SOP Instance UID, or one is not a valid UID.
    """
    size = dataset.seek(0, os.SEEK_END) - start
    dataset.seek(start)
    stream: BinaryIO = dataset
    offset = start
    try:
        if transfer_syntax.is_deflated:
            stream = BytesIO(_inflate(dataset.read(), max_inflated_bytes))
            size, offset = len(stream.getbuffer()), 0
        view = cast(BinaryIO, _Window(stream, offset, size))
        ds = read_dataset(
            view, transfer_syntax.is_implicit_VR, transfer_syntax.is_little_endian, defer_size=_DEFER_SIZE,
        )
        _check_ends_at_last_element(ds, size)
        _decode_elements(ds, view, size, top_level=True)
        complete = _pixel_data_complete(ds, view, size)
        sop_class_uid = _uid_text(ds, 0x00080016)
        sop_instance_uid = _uid_text(ds, 0x00080018)
    except InvalidInstanceError:
        raise
    except Exception as exc:  # pydicom raises many types for corrupt input
        raise UnreadableDatasetError(f"data set cannot be parsed ({type(exc).__name__})") from exc
    finally:
        dataset.seek(start)
    if not complete:
        raise UnreadableDatasetError("data set is truncated: Pixel Data incomplete or missing")
    for name, value in (("SOP Class UID", sop_class_uid), ("SOP Instance UID", sop_instance_uid)):
        if value is None or not value.strip("\x00 "):
            raise MissingIdentifierError(f"data set lacks a {name}")
        if not is_valid_uid(value):
            raise MissingIdentifierError(f"data set {name} is not a valid UID")
    return InstanceIdentity(cast(str, sop_class_uid), cast(str, sop_instance_uid))


class _Window(io.RawIOBase):
    """The part of a seekable stream from ``offset`` on, as a stream of its own (no copy)."""

    def __init__(self, stream: BinaryIO, offset: int, size: int) -> None:
        super().__init__()
        self._stream, self._offset, self._size = stream, offset, size
        self._stream.seek(offset)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self.tell(), os.SEEK_END: self._size}[whence]
        return self._stream.seek(self._offset + base + pos) - self._offset

    def tell(self) -> int:
        return self._stream.tell() - self._offset

    def read(self, size: int = -1) -> bytes:
        return self._stream.read(size)

    def readinto(self, buffer: Any) -> int:
        data = self._stream.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _inflate(data: bytes, limit: int) -> bytes:
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    inflated = inflater.decompress(data, limit)
    if inflater.unconsumed_tail:
        raise UnreadableDatasetError(f"deflated data set inflates to more than {limit} bytes")
    return inflated


def _uid_text(ds: Dataset, tag: int) -> str | None:
    """A UID element's value as text; ``None`` when absent."""
    if tag not in ds:
        return None
    value = ds[tag].value
    if value is None:
        return ""
    if not isinstance(value, str):
        raise MissingIdentifierError(f"data set element {Tag(tag)} is not a single UID")
    return str(value)


_PIXEL_DATA = 0x7FE00010


def _check_ends_at_last_element(ds: Dataset, stream_size: int) -> None:
    """Refuse bytes after the last element: pydicom silently drops a last element cut short.

    Read before any value is converted, while every top-level element is still raw and knows
    where its value lies. A last element of undefined length (encapsulated Pixel Data, a
    sequence) is checked by its own delimiter instead.
    """
    last: RawDataElement | None = None
    for tag in ds.keys():
        raw = ds.get_item(tag, keep_deferred=True)
        if isinstance(raw, RawDataElement) and (last is None or raw.value_tell > last.value_tell):
            last = raw
    if last is None or last.length == _UNDEFINED_LENGTH:
        return
    end = last.value_tell + last.length
    if end > stream_size:
        raise UnreadableDatasetError(f"element {Tag(last.tag)} runs past the end of the data set")
    if end < stream_size:
        raise UnreadableDatasetError(f"data set is truncated or has {stream_size - end} stray bytes at its end")


def _decode_elements(ds: Dataset, stream: BinaryIO, stream_size: int, *, top_level: bool) -> None:
    """Decode every element of ``ds`` (recursively, sequences included) but top-level Pixel Data.

    pydicom reads element headers eagerly but converts values only when asked: an unknown VR
    (say ``NM``, a flipped byte) or an undecodable value would otherwise be found by whoever
    reads the stored file. Values deferred for their size are checked to lie inside the stream
    and, unless their VR is a byte VR (nothing to decode), read and decoded.
    """
    for tag in list(ds.keys()):
        if top_level and tag == _PIXEL_DATA:
            continue
        raw = ds.get_item(tag, keep_deferred=True)
        try:
            if isinstance(raw, RawDataElement) and raw.value is None and raw.length not in (0, _UNDEFINED_LENGTH):
                if raw.value_tell + raw.length > stream_size:
                    raise UnreadableDatasetError(f"element {Tag(tag)} runs past the end of the data set")
                if raw.VR in BYTES_VR:
                    continue
                stream.seek(raw.value_tell)
                ds[tag] = raw._replace(value=stream.read(raw.length))
            element = ds[tag]
            if element.VR == VR.SQ:
                for item in element.value:
                    if top_level:  # nested items know only their offset in their parent's value
                        _check_item_tag(item, stream, tag)
                    _decode_elements(item, stream, stream_size, top_level=False)
            else:
                str(element.value)  # multi-valued and person-name values convert lazily
        except InvalidInstanceError:
            raise
        except Exception as exc:
            raise UnreadableDatasetError(
                f"element {Tag(tag)} cannot be decoded ({type(exc).__name__})"
            ) from exc


_ITEM_TAG_BYTES = b"\xfe\xff\x00\xe0"  # (FFFE,E000), little endian: the node accepts no big endian


def _check_item_tag(item: Dataset, stream: BinaryIO, sequence_tag: int) -> None:
    """Refuse an item of a top-level sequence that does not start with the Item tag: pydicom
    reads it anyway (it only logs, when debugging), DCMTK does not. ``seq_item_tell`` is an
    offset in the data set only for top-level sequences."""
    tell = getattr(item, "seq_item_tell", None)
    if tell is None:
        return
    stream.seek(tell)
    if stream.read(4) != _ITEM_TAG_BYTES:
        raise UnreadableDatasetError(f"element {Tag(sequence_tag)} holds an item without the Item tag (FFFE,E000)")


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

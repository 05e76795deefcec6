"""A DICOM peer from raw bytes: association requests and PDUs built by hand, sent on a
plain socket, so tests can stall, truncate or garble them the way a broken or hostile
host does. Loopback only; every read has a timeout."""

from __future__ import annotations

import socket
import struct
import time

from pydicom.dataset import Dataset
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID
from pynetdicom.dsutils import encode
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, ImplementationClassUIDNotification, MaximumLengthNotification
from pynetdicom.presentation import build_context

VERIFICATION = "1.2.840.10008.1.1"
A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ABORT = 0x02, 0x03, 0x07


def association_request(
    calling_ae: str = "RAWSCU", called_ae: str = "CXR_AI", abstract_syntax: str = VERIFICATION
) -> bytes:
    """An A-ASSOCIATE-RQ PDU proposing one context (ID 1, Implicit VR Little Endian)."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    # pynetdicom refuses to encode a title with control characters; a hostile peer does not.
    primitive.calling_ae_title = "".join(c if c.isprintable() else "X" for c in calling_ae)
    primitive.called_ae_title = called_ae
    context = build_context(abstract_syntax, ImplicitVRLittleEndian)
    context.context_id = 1
    primitive.presentation_context_definition_list = [context]
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = 16384
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = PYNETDICOM_IMPLEMENTATION_UID
    primitive.user_information = [max_length, implementation]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    encoded = bytearray(pdu.encode())
    encoded[26:42] = calling_ae.encode("latin-1").ljust(16)[:16]  # the Calling AE Title field
    return bytes(encoded)


def p_data(context_id: int, control_header: int, fragment: bytes) -> bytes:
    """A P-DATA-TF PDU with one presentation data value item."""
    item = struct.pack(">LBB", len(fragment) + 2, context_id, control_header) + fragment
    return struct.pack(">BBL", 0x04, 0, len(item)) + item


def command_set_without_command_field() -> bytes:
    """An encoded command set (Implicit VR LE) that lacks (0000,0100) Command Field."""
    command = Dataset()
    command.MessageID = 1
    command.CommandDataSetType = 0x0101
    encoded = encode(command, True, True)
    assert encoded is not None
    return bytes(encoded)


def connect(port: int, source: str = "127.0.0.1", timeout: float = 10) -> socket.socket:
    """A TCP connection to the node on loopback, from ``source`` (any 127.x address)."""
    sock = socket.socket()
    sock.settimeout(timeout)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def read_pdu(sock: socket.socket, timeout: float = 10) -> tuple[int, bytes] | None:
    """The next PDU as ``(type, body)``, or ``None`` when the node closed the connection."""
    sock.settimeout(timeout)
    header = _read_exactly(sock, 6)
    if len(header) < 6:
        return None
    pdu_type, _, length = struct.unpack(">BBL", header)
    return pdu_type, _read_exactly(sock, length)


def associate(port: int, source: str = "127.0.0.1", calling_ae: str = "RAWSCU") -> socket.socket:
    """A raw connection with an accepted association (Verification, context ID 1)."""
    sock = connect(port, source)
    sock.sendall(association_request(calling_ae))
    answer = read_pdu(sock)
    assert answer is not None and answer[0] == A_ASSOCIATE_AC, f"association not accepted: {answer!r}"
    return sock


def seconds_until_closed(sock: socket.socket, timeout: float) -> tuple[float, list[int]]:
    """Read until the node closes the connection; return the seconds it took and the types
    of the PDUs it sent meanwhile (``inf`` when still open after ``timeout``)."""
    started = time.monotonic()
    types: list[int] = []
    while True:
        remaining = timeout - (time.monotonic() - started)
        if remaining <= 0:
            return float("inf"), types
        try:
            pdu = read_pdu(sock, remaining)
        except TimeoutError:
            return float("inf"), types
        except ConnectionResetError:
            return time.monotonic() - started, types
        if pdu is None:
            return time.monotonic() - started, types
        types.append(pdu[0])


def _read_exactly(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(min(65536, n - len(data)))
        if not chunk:
            break
        data += chunk
    return bytes(data)

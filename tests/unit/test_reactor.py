"""The association's reactors wait for their events: data on the socket, a send, a message."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_ECHO

from dicom_node.receive.reactor import WakeableDUL, next_message, wait_readable


@pytest.fixture
def dul() -> Iterator[WakeableDUL]:
    dul = WakeableDUL(Association(AE(), "acceptor"))
    yield dul
    dul.close_wake()


def test_data_waiting_on_the_socket_is_seen(dul: WakeableDUL) -> None:
    left, right = socket.socketpair()
    with left, right:
        assert not wait_readable(left, dul)
        right.sendall(b"\x04")
        assert wait_readable(left, dul)


def test_a_wake_ends_the_wait_and_is_used_up(dul: WakeableDUL) -> None:
    left, right = socket.socketpair()
    with left, right:
        dul.wake()
        dul.wake()
        assert not wait_readable(left, dul)  # woken: nothing to read, the loop looks at its queues
        with pytest.raises(BlockingIOError):
            os.read(dul.wake_read, 1)  # every pending wake was drained


def test_a_closed_wake_pipe_is_never_written(dul: WakeableDUL) -> None:
    dul.close_wake()
    dul.wake()  # no error, and no write to a descriptor that may belong to another file now
    assert (dul.wake_read, dul.wake_write) == (-1, -1)


def test_the_association_thread_gets_a_queued_message_or_none() -> None:
    assoc = Association(AE(), "acceptor")
    message = C_ECHO()
    assoc.dimse.msg_queue.put((1, message))
    assert next_message(assoc.dimse) == (1, message)
    assert next_message(assoc.dimse) == (None, None)

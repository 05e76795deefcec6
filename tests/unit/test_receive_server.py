"""The edge server's PDU read: every byte once, short on close, bounded by its deadline and its memory."""

from __future__ import annotations

import os
import socket
import threading
import time

from dicom_node.receive.server import _GROW_BYTES, _receive


def _send_in_pieces(sock: socket.socket, data: bytes, piece: int, then_close: bool = True) -> threading.Thread:
    def run() -> None:
        for start in range(0, len(data), piece):
            sock.sendall(data[start:start + piece])
        if then_close:
            sock.shutdown(socket.SHUT_WR)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_a_pdu_larger_than_one_allocation_step_arrives_byte_for_byte() -> None:
    payload = os.urandom(2 * _GROW_BYTES + 12345)
    left, right = socket.socketpair()
    with left, right:
        sender = _send_in_pieces(right, payload, 70_000, then_close=False)
        data, timed_out = _receive(left, len(payload), time.monotonic() + 10)
        sender.join()
    assert not timed_out
    assert bytes(data) == payload


def test_a_peer_that_closes_mid_pdu_gives_a_short_read() -> None:
    left, right = socket.socketpair()
    with left, right:
        _send_in_pieces(right, b"x" * 1000, 300).join()
        data, timed_out = _receive(left, 131072, time.monotonic() + 10)
    assert (bytes(data), timed_out) == (b"x" * 1000, False)


def test_a_stalled_pdu_ends_at_its_deadline_with_what_arrived() -> None:
    left, right = socket.socketpair()
    with left, right:
        right.sendall(b"abc")
        started = time.monotonic()
        data, timed_out = _receive(left, 100, started + 0.3)
        elapsed = time.monotonic() - started
    assert (bytes(data), timed_out) == (b"abc", True)
    assert 0.25 < elapsed < 2


def test_a_huge_announced_pdu_costs_no_more_memory_than_what_arrives() -> None:
    left, right = socket.socketpair()
    with left, right:
        _send_in_pieces(right, b"y" * 10, 10).join()
        data, timed_out = _receive(left, 2**32, time.monotonic() + 10)  # 4 GiB announced, 10 bytes sent
    assert (bytes(data), timed_out) == (b"y" * 10, False)

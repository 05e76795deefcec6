"""pynetdicom's two reactor loops of an association, woken by what they wait for.

pynetdicom's DUL thread checks its socket and its send queue, then sleeps 1 ms when there was
nothing; the association thread sleeps 1 ms between looks at its message queue. Each C-STORE
waits for both about three times (its request arriving, the request reaching the handler, the
response being sent), ~1.5 ms of an instance that takes a few ms, and the idle loops wake
2000 times a second per association, taking the GIL from the threads that work.

:class:`WakeableDUL` instead waits in ``select`` on its socket *and* a wake pipe that every
primitive queued for sending writes to (:func:`wait_readable`, called by the socket's
``ready``), so data and responses go at once and an idle association wakes 50 times a
second. :func:`next_message` lets the association thread wait on its message queue.
"""

from __future__ import annotations

import os
import queue
import select
import socket
import ssl
import threading
import time
from typing import TYPE_CHECKING, Any

from pynetdicom.dul import DULServiceProvider

if TYPE_CHECKING:
    from pynetdicom.association import Association
    from pynetdicom.dimse import DIMSEServiceProvider

# The longest the DUL thread waits in select: its timers (ARTIM) are checked this often.
IDLE_WAIT = 0.02
# The longest the association thread waits for a message before it checks for a release,
# an abort and its timers (its 1 ms sleep comes on top).
MESSAGE_WAIT = 0.005


class WakeableDUL(DULServiceProvider):
    """A DUL provider whose loop sleeps in :func:`wait_readable` instead of ``time.sleep``."""

    def __init__(self, assoc: Association) -> None:
        super().__init__(assoc)
        self._run_loop_delay = 0  # its wait is in the socket's ``ready`` (wait_readable)
        self.wake_read, self.wake_write = os.pipe()
        os.set_blocking(self.wake_read, False)
        os.set_blocking(self.wake_write, False)
        self._wake_lock = threading.Lock()  # no write to a closed (and maybe reused) descriptor

    def run_reactor(self) -> None:
        try:
            super().run_reactor()
        finally:
            self.close_wake()  # in this thread: nobody waits on the pipe any more

    def send_pdu(self, primitive: Any) -> None:
        super().send_pdu(primitive)
        self.wake()

    def kill_dul(self) -> None:
        super().kill_dul()
        self.wake()

    def wake(self) -> None:
        """End the loop's wait now (from any thread)."""
        with self._wake_lock:
            if self.wake_write < 0:
                return  # the loop has ended
            try:
                os.write(self.wake_write, b"\0")
            except OSError:
                pass  # full: a wake is pending anyway

    def close_wake(self) -> None:
        """Close the wake pipe (the loop has ended, or never started)."""
        with self._wake_lock:
            fds, self.wake_read, self.wake_write = (self.wake_read, self.wake_write), -1, -1
        for fd in fds:
            if fd >= 0:
                os.close(fd)


def wait_readable(sock: socket.socket, dul: DULServiceProvider) -> bool:
    """Whether ``sock`` has data, after waiting up to :data:`IDLE_WAIT` for it or for a wake
    of ``dul`` (not at all when ``dul`` has work queued).

    Raises :class:`OSError` or :class:`ValueError` on a closed socket, as ``select`` does.
    """
    fd = sock.fileno()
    if not isinstance(dul, WakeableDUL) or dul.wake_read < 0:
        time.sleep(0.001)  # pynetdicom's own pace
        readable, _, _ = select.select([fd], [], [], 0)
    else:
        busy = not dul.to_provider_queue.empty() or not dul.event_queue.empty()
        readable, _, _ = select.select([fd, dul.wake_read], [], [], 0 if busy else IDLE_WAIT)
        if dul.wake_read in readable:
            try:
                os.read(dul.wake_read, 4096)
            except OSError:
                pass
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return True  # decrypted bytes select cannot see (pynetdicom #528)
    return fd in readable


def next_message(dimse: DIMSEServiceProvider) -> tuple[Any, Any]:
    """The next complete DIMSE message, waiting up to :data:`MESSAGE_WAIT` for one;
    ``(None, None)`` if none came."""
    try:
        return dimse.msg_queue.get(timeout=MESSAGE_WAIT)
    except queue.Empty:
        return None, None

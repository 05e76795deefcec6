"""One owner per spool: the running ``serve`` holds an exclusive OS lock on it.

Two nodes on one spool would recover (and delete) each other's temp files, analyse the same
job twice and race on the job records. ``serve`` therefore takes ``fcntl.flock`` on
``<spool>/serve.lock`` for its whole life; the kernel releases it on any exit, ``kill -9``
included, so a crashed node never leaves the spool locked. The file holds the owner's PID,
for the message a second node prints.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

from dicom_node.errors import SpoolError

LOCK_FILE = "serve.lock"


class SpoolOwnership:
    """The exclusive lock of one spool, held from :meth:`acquire` to :meth:`release`.

    Parameters
    ----------
    root : pathlib.Path
        The spool directory (created if missing).
    """

    def __init__(self, root: Path) -> None:
        self.path = Path(root) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> SpoolOwnership:
        """Take the lock, or raise at once if another process holds it.

        Raises
        ------
        dicom_node.errors.SpoolError
            Another process owns the spool; the message names the spool and that process's PID.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise SpoolError(
                f"spool {self.path.parent.resolve()} is in use by another cxr-node serve (pid {owner}); "
                "one node per spool"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Give the lock up (also done by the kernel when the process ends)."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> SpoolOwnership:
        return self.acquire()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, trace: TracebackType | None) -> None:
        self.release()

"""Received data sets stream to a temp file in the spool as they arrive, up to a size limit.

pynetdicom can write a C-STORE data set to a file PDU by PDU instead of collecting it in
memory (``_config.STORE_RECV_CHUNKED_DATASET``; the handler finds it at
``event.dataset_path``). It opens that file with :func:`tempfile.NamedTemporaryFile` in the
system temp folder and without a limit. :class:`IncomingFiles` takes that place: the file is
created beside the spool's instances (so a stored instance is *renamed* into place, not
copied, and a crash leaves only a ``.tmp-`` file that :meth:`Spool.recover` removes), and a
data set that grows past ``max_bytes`` is no longer written (its file is emptied at once):
the handler then refuses it. Memory per association stays at one PDU, disk per association
at ``max_bytes``.

A connection that closes mid-transfer leaves its file open inside pynetdicom; the files each
association's reader thread opened are discarded when its connection closes.
"""

from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path
from typing import Any

from pynetdicom import _config, dimse_messages

from dicom_node.spool.durable import TEMP_PREFIX, start_writeback

# With fsync on, every this many bytes received are handed to the disk at once (see
# :func:`~dicom_node.spool.durable.start_writeback`), so writing overlaps receiving.
WRITEBACK_BYTES = 1024 * 1024


class CappedFile:
    """A write-only file that stops storing data past ``limit`` bytes.

    It offers what pynetdicom uses of a ``NamedTemporaryFile``: ``name``, ``write``,
    ``file.flush`` and ``close``.
    """

    def __init__(self, path: Path, limit: int, writeback: bool = False) -> None:
        self.name = str(path)
        self.limit = limit
        self.writeback = writeback  # start writing to disk while receiving (the node fsyncs)
        self.received = 0  # bytes offered, stored or not
        self._written_back = 0  # bytes handed to start_writeback
        self.error: OSError | None = None  # the first write error (ENOSPC): the rest is dropped
        self._f = open(path, "xb", buffering=0)  # PDU-sized writes: no user-space buffer
        self.file = self  # pynetdicom flushes ``file.file`` after each PDU

    @property
    def exceeded(self) -> bool:
        """Whether more than ``limit`` bytes were offered (the content is then gone)."""
        return self.received > self.limit

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Store ``data`` unless the limit was passed or a write failed; never raises.

        An exception here would end pynetdicom's reader thread and the association with no
        answer; a full disk is instead answered by the handler with its own status.
        """
        length = len(data)
        was_dropping = self.exceeded or self.error is not None
        self.received += length
        if was_dropping:
            return length
        try:
            if self.exceeded:
                self._f.truncate(0)  # give the disk space back now; the instance is refused anyway
                return length
            view = memoryview(data)
            done = 0
            while done < length:
                done += self._f.write(view[done:]) or 0
            if self.writeback and self.received - self._written_back >= WRITEBACK_BYTES:
                start_writeback(self._f.fileno(), self._written_back, self.received - self._written_back)
                self._written_back = self.received
        except OSError as exc:
            self.error = exc
            try:
                self._f.truncate(0)
            except OSError:
                pass
        return length

    def flush(self) -> None:
        """Nothing to do: writes are unbuffered."""

    def fileno(self) -> int:
        return self._f.fileno()

    def close(self) -> None:
        self._f.close()

    @property
    def closed(self) -> bool:
        return self._f.closed


class IncomingFiles:
    """Capped temp files for received data sets, in ``directory``.

    Parameters
    ----------
    directory : pathlib.Path
        Where the temp files go: the spool's instances folder (same file system as the final
        name, so storing is a rename).
    max_bytes : int
        Largest instance (preamble, file meta and data set) stored.
    writeback : bool
        Start writing each file to disk while it arrives (for a node that fsyncs before Success).
    """

    def __init__(self, directory: Path, max_bytes: int, writeback: bool = False) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.writeback = writeback
        self._lock = threading.Lock()
        self._open: dict[str, tuple[int, CappedFile]] = {}  # path -> (reader thread id, file)

    def install(self) -> None:
        """Make pynetdicom stream every received C-STORE data set into one of these files.

        pynetdicom's setting and its temp-file factory are process-wide: one node per process.
        """
        _config.STORE_RECV_CHUNKED_DATASET = True
        dimse_messages.NamedTemporaryFile = self.open  # type: ignore[assignment]  # same call, our file

    def open(self, *_args: Any, **_kwargs: Any) -> CappedFile:
        """Create the next temp file (called by pynetdicom's reader thread of an association)."""
        path = self.directory / f"{TEMP_PREFIX}{uuid.uuid4().hex}.incoming"
        capped = CappedFile(path, self.max_bytes, self.writeback)
        with self._lock:
            self._open[capped.name] = (threading.get_ident(), capped)
        return capped

    def claim(self, path: Path | str) -> CappedFile | None:
        """Take the file of a completely received data set out of the registry (the handler's now)."""
        with self._lock:
            entry = self._open.pop(str(path), None)
        return entry[1] if entry else None

    def discard_of_thread(self, thread_id: int | None) -> int:
        """Close and delete the files a reader thread opened and nobody claimed; return how many."""
        with self._lock:
            names = [name for name, (owner, _) in self._open.items() if owner == thread_id]
            files = [self._open.pop(name)[1] for name in names]
        for capped in files:
            capped.close()
            try:
                os.unlink(capped.name)
            except FileNotFoundError:
                pass
        return len(files)

    def pending(self) -> int:
        """Files being received now."""
        with self._lock:
            return len(self._open)

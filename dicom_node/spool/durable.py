"""Crash-safe file writes: temp file, fsync, atomic rename, directory fsync.

After :func:`write_atomically` returns, the file is complete under its final name and
survives a power cut (with ``fsync=True``); a crash before that leaves at most a temp file
that :func:`remove_temp_files` clears on the next start. Readers never see a half file.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO, cast

TEMP_PREFIX = ".tmp-"
_SYNC_FILE_RANGE_WRITE = 2  # <linux/fs.h>: start writeback of the range's dirty pages, do not wait


def _load_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """libc's ``sync_file_range`` (Linux; Python's ``os`` has none), ``None`` elsewhere."""
    try:
        function = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True).sync_file_range
    except (AttributeError, OSError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return cast(Callable[[int, int, int, int], int], function)


_sync_file_range = _load_sync_file_range()


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing ``length`` bytes from ``offset`` to disk now, without
    waiting: while a large instance is still arriving, its first megabytes reach the disk,
    and the ``fdatasync`` before Success waits only for the tail. A hint only (durability
    still comes from that ``fdatasync``): a no-op where the call is missing, errors ignored.
    """
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


def fsync_directory(directory: Path) -> None:
    """Persist a directory's entries (a rename is durable only once its directory is)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, chunks: Iterable[bytes | memoryview], *, fsync: bool = True) -> int:
    """Write ``chunks`` to ``path`` so that it appears complete or not at all.

    Parameters
    ----------
    path : pathlib.Path
        Final file name. Its directory must exist; the temp file is created beside it so the
        rename stays on one file system.
    chunks : Iterable[bytes | memoryview]
        The content, written in order.
    fsync : bool
        Flush file and directory to stable storage before returning.

    Returns
    -------
    int
        Number of bytes written.

    Raises
    ------
    OSError
        Any write error (``ENOSPC`` when the disk is full); the temp file is removed.
    """
    temp = path.with_name(f"{TEMP_PREFIX}{uuid.uuid4().hex}-{path.name}")
    written = 0
    try:
        with open(temp, "xb", buffering=0) as f:  # large chunks: skip the user-space buffer
            for chunk in chunks:
                written += _write_all(f, chunk)
            if fsync:
                os.fdatasync(f.fileno())  # a new file: its size is data, so this persists it
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    if fsync:
        fsync_directory(path.parent)
    return written


def move_into_place(temp: Path, path: Path, *, fsync: bool = True) -> int:
    """Make a complete file written elsewhere appear under ``path``, durably (rename, no copy).

    Parameters
    ----------
    temp : pathlib.Path
        The finished file, on the same file system as ``path`` (e.g. a received instance that
        was streamed to a temp file beside its final name).
    path : pathlib.Path
        Final file name; an existing file is replaced atomically.
    fsync : bool
        Flush the file's data and the directory to stable storage before returning.

    Returns
    -------
    int
        Size of the file in bytes.

    Raises
    ------
    OSError
        The file cannot be flushed or renamed (``ENOSPC``, ``EXDEV`` across file systems).
    """
    fd = os.open(temp, os.O_RDONLY)
    try:
        if fsync:
            os.fdatasync(fd)  # the writer may have closed it without: flush it before the rename
        size = os.fstat(fd).st_size
    finally:
        os.close(fd)
    os.replace(temp, path)
    if fsync:
        fsync_directory(path.parent)
    return size


def is_temp_file(path: Path) -> bool:
    """Whether ``path`` is a temp file of this module (in-flight or left by a crash)."""
    return path.name.startswith(TEMP_PREFIX)


def _write_all(f: BinaryIO, chunk: bytes | memoryview) -> int:
    """Write all of ``chunk``: an unbuffered write may take only part of it."""
    total = len(chunk)
    done = f.write(chunk) or 0
    while done < total:
        done += f.write(memoryview(chunk)[done:]) or 0
    return total


def remove_temp_files(directory: Path) -> int:
    """Delete temp files left by a crash in ``directory``; return how many were removed."""
    removed = 0
    for temp in directory.glob(f"{TEMP_PREFIX}*"):
        temp.unlink(missing_ok=True)
        removed += 1
    return removed

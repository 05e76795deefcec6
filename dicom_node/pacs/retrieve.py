"""Retrieval from the PACS into a folder, one file per SOP Instance UID: C-GET, or C-MOVE to a temporary SCP.

Each instance is asked for by its UIDs (IMAGE level), so only the images the query took come
over, and one that is already on disk is not asked for again: a retrieval stopped half-way
(killed, network gone) continues where it stopped when run again. Files are written as
they came off the wire (:meth:`pynetdicom.events.Event.encoded_dataset`) and atomically
(:func:`dicom_node.spool.durable.write_atomically`), so a file on disk is always complete.

C-GET needs nothing from the PACS but the right to C-GET: the instances come back on the same
association (the node takes the Storage SCP role for the image SOP classes). C-MOVE needs the
PACS to know the move destination (its AE title, host and port); the retrieval then starts a
temporary Storage SCP of its own under that AE title for the duration, never the node's
serving SCP, whose received images would be analysed and reported.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydicom.dataset import Dataset
from pynetdicom import build_role, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from dicom_node.errors import NodeError
from dicom_node.pacs.peer import PacsPeer, associate, scu_ae
from dicom_node.pacs.query import FoundInstance
from dicom_node.receive.dimse_status import OUT_OF_RESOURCES, SUCCESS
from dicom_node.receive.scp import STORAGE_SOP_CLASSES, TRANSFER_SYNTAXES
from dicom_node.spool.durable import remove_temp_files, write_atomically
from dicom_node.tcp import on_connection_open

logger = logging.getLogger(__name__)

Method = Literal["get", "move"]
RETRIEVE_METHODS: tuple[Method, ...] = ("get", "move")  # repeated in dicom_node.pacs.cli
_UNSAFE = re.compile(r"[^0-9.]")
CHUNK = 32
"""Instances retrieved per association."""


class RetrievalError(NodeError):
    """The PACS refused or broke off a retrieval."""


class InstanceFolder:
    """Retrieved instances, one file ``<SOP Instance UID>.dcm`` each.

    Parameters
    ----------
    directory : pathlib.Path
        Created if missing; temp files a crash left are removed.
    fsync : bool
        Flush each file to stable storage before it counts as retrieved.
    """

    def __init__(self, directory: Path, *, fsync: bool = True) -> None:
        self.directory = directory
        self.fsync = fsync
        directory.mkdir(parents=True, exist_ok=True)
        remove_temp_files(directory)

    def path(self, sop_instance_uid: str) -> Path:
        """Where the instance is (or will be); the UID is sanitised to digits and dots."""
        if not sop_instance_uid:
            raise ValueError('Argument "sop_instance_uid" must not be empty.')
        return self.directory / f"{_UNSAFE.sub('_', sop_instance_uid)}.dcm"

    def has(self, sop_instance_uid: str) -> bool:
        return self.path(sop_instance_uid).is_file()

    def write(self, sop_instance_uid: str, encoded: bytes | memoryview) -> Path:
        path = self.path(sop_instance_uid)
        write_atomically(path, [encoded], fsync=self.fsync)
        return path


def handle_store(event: Any, folder: InstanceFolder, received: set[str]) -> int:
    """Store one instance of a C-GET or C-MOVE sub-operation in ``folder``; return the C-STORE status."""
    try:
        sop_instance_uid = str(event.request.AffectedSOPInstanceUID)
        folder.write(sop_instance_uid, event.encoded_dataset())
    except OSError:
        logger.error("could not write a retrieved instance in %s", folder.directory)
        return OUT_OF_RESOURCES
    received.add(sop_instance_uid)
    return SUCCESS


def _image_identifier(instance: FoundInstance) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "IMAGE"
    ds.StudyInstanceUID = instance.study_instance_uid
    ds.SeriesInstanceUID = instance.series_instance_uid
    ds.SOPInstanceUID = instance.sop_instance_uid
    return ds


def _final_status(responses: Iterable[tuple[Dataset, Dataset | None]], what: str) -> int:
    """The last status of a C-GET/C-MOVE (pending answers skipped); an empty one means no answer."""
    code = None
    for status, _ in responses:
        if "Status" not in status:
            raise RetrievalError(f"{what} got no answer (timed out or aborted)")
        code = int(status.Status)
    if code is None:
        raise RetrievalError(f"{what} got no answer")
    return code


@dataclass
class RetrievalCounts:
    """Instances retrieved now, found on disk already, and not delivered by the PACS."""

    retrieved: int = 0
    on_disk: int = 0
    failed: list[str] = field(default_factory=list)  # SOP Instance UIDs


def chunks(items: Sequence[FoundInstance], size: int) -> Iterator[Sequence[FoundInstance]]:
    """``items`` in slices of ``size``.

    >>> [len(c) for c in chunks(list(range(5)), 2)]  # type: ignore[arg-type]
    [2, 2, 1]
    """
    for start in range(0, len(items), size):
        yield items[start: start + size]


class Retriever:
    """Brings instances from ``peer`` into ``folder`` by C-GET or C-MOVE.

    Parameters
    ----------
    peer : PacsPeer
        The PACS.
    folder : InstanceFolder
        Where the files go.
    calling_ae_title : str
        The node's AE title, as the PACS knows it.
    method : {"get", "move"}
        C-GET (default), or C-MOVE to ``move_ae_title`` at ``move_port`` (the PACS must know
        that AE title with this host and port).
    move_ae_title, move_port, move_bind
        The temporary Storage SCP of a C-MOVE.
    """

    def __init__(
        self,
        peer: PacsPeer,
        folder: InstanceFolder,
        calling_ae_title: str,
        method: Method = "get",
        *,
        move_ae_title: str | None = None,
        move_port: int | None = None,
        move_bind: str = "0.0.0.0",
        timeout: float = 60.0,
    ) -> None:
        if method not in RETRIEVE_METHODS:
            raise ValueError(f'Argument "method" must be one of {RETRIEVE_METHODS}, got {method!r}.')
        if method == "move" and not (move_ae_title and move_port):
            raise ValueError('C-MOVE needs "move_ae_title" and "move_port" (a destination the PACS knows).')
        self.peer, self.folder, self.method = peer, folder, method
        self.calling_ae_title = calling_ae_title
        self.move_ae_title, self.move_port, self.move_bind = move_ae_title, move_port, move_bind
        self.timeout = timeout

    def retrieve(
        self, instances: Sequence[FoundInstance], on_instance: Callable[[int], None] | None = None
    ) -> RetrievalCounts:
        """Retrieve the instances not on disk yet; ``on_instance(n)`` is called as they are done.

        Raises
        ------
        RetrievalError
            The association was refused or a request got no answer; what arrived stays on disk.
        """
        counts = RetrievalCounts()
        missing = []
        for instance in instances:
            if self.folder.has(instance.sop_instance_uid):
                counts.on_disk += 1
            else:
                missing.append(instance)
        if counts.on_disk and on_instance is not None:
            on_instance(counts.on_disk)
        received: set[str] = set()
        server = self._start_move_destination(received) if self.method == "move" and missing else None
        try:
            for chunk in chunks(missing, CHUNK):
                self._retrieve_chunk(chunk, received, on_instance)
        finally:
            if server is not None:
                server.shutdown()
        for instance in missing:
            if self.folder.has(instance.sop_instance_uid):
                counts.retrieved += 1
            else:
                counts.failed.append(instance.sop_instance_uid)
        if counts.failed:
            logger.warning("%s: %d instance(s) not delivered by %s", self.method, len(counts.failed), self.peer)
        return counts

    def _associate(self, received: set[str]) -> Association:
        ae = scu_ae(self.calling_ae_title, self.timeout)
        handlers: list[Any] = []
        roles: list[Any] = []
        if self.method == "get":
            ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
            for sop_class in STORAGE_SOP_CLASSES:  # the PACS sends them back on this association
                ae.add_requested_context(sop_class, list(TRANSFER_SYNTAXES))
                roles.append(build_role(sop_class, scp_role=True))
            handlers = [(evt.EVT_C_STORE, handle_store, [self.folder, received])]
        else:
            ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        assoc = associate(ae, self.peer, ext_neg=roles, evt_handlers=handlers)
        if not assoc.is_established:
            raise RetrievalError(f"C-{self.method.upper()} association to {self.peer} was not accepted")
        return assoc

    def _retrieve_chunk(
        self, chunk: Sequence[FoundInstance], received: set[str], on_instance: Callable[[int], None] | None
    ) -> None:
        assoc = self._associate(received)
        try:
            for instance in chunk:
                identifier = _image_identifier(instance)
                if self.method == "get":
                    responses = assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet)
                else:
                    assert self.move_ae_title is not None
                    responses = assoc.send_c_move(
                        identifier, self.move_ae_title, StudyRootQueryRetrieveInformationModelMove
                    )
                code = _final_status(responses, f"C-{self.method.upper()} to {self.peer}")
                if code not in (0x0000, 0xB000):
                    logger.warning("C-%s of %s: status 0x%04X", self.method.upper(), instance.sop_instance_uid, code)
                if on_instance is not None:
                    on_instance(1)
        finally:
            if assoc.is_established:
                assoc.release()

    def _start_move_destination(self, received: set[str]) -> Any:
        """The temporary Storage SCP of a C-MOVE (returns pynetdicom's server; shut it down after)."""
        assert self.move_ae_title is not None and self.move_port is not None
        ae = scu_ae(self.move_ae_title, self.timeout)
        ae.require_called_aet = True
        for sop_class in STORAGE_SOP_CLASSES:
            ae.add_supported_context(sop_class, list(TRANSFER_SYNTAXES))
        handlers: list[Any] = [
            (evt.EVT_C_STORE, handle_store, [self.folder, received]), (evt.EVT_CONN_OPEN, on_connection_open),
        ]
        return ae.start_server((self.move_bind, self.move_port), block=False, evt_handlers=handlers)

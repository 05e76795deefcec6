"""Fuzz the node over DICOM: mutated real files and raw PDU garbage, on loopback, seeded, bounded.

The script starts the node itself (``python -m dicom_node serve`` on a free loopback port,
analysing with the shipped bundle unless ``--no-analysis``), takes the real shared DICOM
files, writes a canary patient name (``CANARY^ZQXJ``) and ID into each, and sends ``--cases``
mutants: header byte flips, truncation, huge and undefined lengths, VR changes, renamed tags,
nested sequence garbage, off-by-some lengths, and raw PDU garbage over a plain socket. Then
it checks what the issue asks:

* the node stays up (``restarts`` must be 0; a dead node is restarted and counted);
* every instance answered Success reads back with pydicom (all elements but Pixel Data
  decode, Pixel Data complete) -- checked here independently of the node's own check;
* with analysis, each stored mutant reaches a final state (outbox, sent, not_analysed,
  failed) within ``--settle`` seconds;
* the canary appears in no line of the node's log;
* the node's peak RSS (``VmHWM``).

Usage (from the repository root)::

    python -m scripts.fuzz_node --cases 300 --seed 1 --no-analysis --out fuzz-out
    python -m scripts.fuzz_node --cases 10000 --seed 7 --out fuzz-long   # the long run

Prints a table of statuses per mutation and writes ``OUT/fuzz_report.json``; exits 1 when
an invariant fails. Everything stays on 127.0.0.1; mutants live under ``OUT``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import socket
import struct
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any, cast

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import _read_file_meta_info, read_dataset
from pydicom.uid import UID, ComputedRadiographyImageStorage, ExplicitVRLittleEndian

from testkit.peers import NodeProcess
from testkit.process_tree import status_sum
from testkit.shared_data import shared_data_dir

CANARY_NAME = "CANARY^ZQXJ"
CANARY_ID = "ZQXJ0CANARY"
CANARY_MARK = "ZQXJ"
"""What the log is searched for (case-insensitive): in both canary values."""

_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT"}
_VRS = [
    b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT", b"OB", b"OD", b"OF",
    b"OL", b"OV", b"OW", b"PN", b"SH", b"SL", b"SQ", b"SS", b"ST", b"SV", b"TM", b"UC", b"UI", b"UL", b"UN",
    b"UR", b"US", b"UT", b"UV",
]
_BAD_VRS = [b"NM", b"UM", b"XX", b"\x00\x00", b"  ", b"ox"]
FINAL_STATES = ("outbox", "sent", "not_analysed", "failed")
# A log line starts with its timestamp, or is part of a traceback the formatter wrote.
_FRAMED = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} |Traceback \(most recent call last\):$|  |nvImageCodec)")
_UID_PLACEHOLDER = "1.2.826.0.1.3680043.10.543." + "9" * 37


@dataclass(frozen=True)
class Element:
    """Where a top-level element of an explicit VR little endian data set lies."""

    offset: int  # of its tag
    header: int  # 8 or 12 bytes
    tag: int
    vr: bytes
    length: int


@dataclass
class Base:
    """A real shared file, canary in, ready to mutate."""

    name: str
    transfer_syntax: UID
    dataset: bytes  # encoded data set, explicit VR little endian (native or encapsulated)
    elements: list[Element]
    pixel_offset: int  # offset of the Pixel Data tag; mutations of the header stay before it


@dataclass
class Case:
    number: int
    mutation: str
    base: str
    sop_instance_uid: str
    outcome: str = ""
    comment: str = ""


@dataclass
class Report:
    cases: list[Case] = field(default_factory=list)
    restarts: int = 0
    unreadable_success: list[str] = field(default_factory=list)
    dcmdump_failures: list[str] = field(default_factory=list)
    not_final: list[str] = field(default_factory=list)
    canary_hits: int = 0
    unframed_lines: int = 0  # log lines that do not start with a timestamp (a forged or split line)
    rejected_retries: int = 0
    peak_rss_kib: int = 0
    rss_samples_kib: list[int] = field(default_factory=list)
    seconds: float = 0.0


# -- bases ------------------------------------------------------------------------------------


def load_bases(directory: Path) -> list[Base]:
    """Every readable shared file as an explicit VR little endian CR with the canary in."""
    bases = []
    for path in sorted(directory.rglob("*.dcm")):
        try:
            ds = pydicom.dcmread(path, force=True)
            syntax = UID(ds.file_meta.get("TransferSyntaxUID", ExplicitVRLittleEndian))
            if not syntax.is_little_endian or syntax.is_deflated:
                continue
            if not syntax.is_compressed:
                syntax = ExplicitVRLittleEndian
            ds.PatientName, ds.PatientID = CANARY_NAME, CANARY_ID
            ds.SOPInstanceUID = _UID_PLACEHOLDER  # 64 characters: every case's own UID fits in place
            ds.SOPClassUID = ComputedRadiographyImageStorage  # a class the node accepts
            ds.file_meta = FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = syntax
            ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            buffer = BytesIO()
            ds.save_as(buffer, implicit_vr=False, little_endian=True, enforce_file_format=True)
            buffer.seek(132)
            _read_file_meta_info(buffer)  # keep the data set only: the meta is written per case
            data = buffer.read()
        except Exception as exc:  # a shared file this script cannot re-encode: skip it
            print(f"skip {path.name}: {type(exc).__name__}", file=sys.stderr)
            continue
        elements = _walk(data)
        pixel = next((e.offset for e in elements if e.tag == 0x7FE00010), len(data))
        bases.append(Base(path.name, syntax, data, elements, pixel))
    if not bases:
        raise SystemExit(f"no usable DICOM file under {directory}")
    return bases


def _walk(data: bytes) -> list[Element]:
    ds = read_dataset(BytesIO(data), False, True, defer_size=256)
    elements = []
    for tag in ds.keys():
        raw = ds.get_item(tag, keep_deferred=True)
        vr = str(raw.VR).encode()
        header = 12 if vr in _LONG_VRS else 8
        if isinstance(raw, RawDataElement):
            offset, length = raw.value_tell - header, raw.length
        else:  # converted while reading (Specific Character Set): read its header from the bytes
            offset = int(raw.file_tell or 0)
            length = struct.unpack_from("<L" if header == 12 else "<H", data, offset + header - (4 if header == 12 else 2))[0]
        elements.append(Element(offset, header, int(tag), vr, length))
    return elements


# -- mutations --------------------------------------------------------------------------------


def _set_uid(base: Base, uid: str) -> bytes:
    """The base with a fresh SOP Instance UID (same length: padded, so offsets stay valid)."""
    element = next(e for e in base.elements if e.tag == 0x00080018)
    start = element.offset + element.header
    value = uid.encode()
    if len(value) > element.length:
        raise ValueError("UID too long for the base")
    value = value + b"\x00" * (element.length - len(value))
    return base.dataset[:start] + value + base.dataset[start + element.length :]


def _header_elements(base: Base) -> list[Element]:
    return [e for e in base.elements if e.offset < base.pixel_offset and e.tag not in (0x00080016, 0x00080018)]


def flip_bytes(rng: random.Random, base: Base, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        i = rng.randrange(0, max(1, base.pixel_offset + 12))
        buf[i] ^= 1 << rng.randrange(8)
    return bytes(buf)


def truncate(rng: random.Random, base: Base, data: bytes) -> bytes:
    return data[: rng.randrange(1, len(data))]


def huge_length(rng: random.Random, base: Base, data: bytes) -> bytes:
    element = rng.choice(_header_elements(base) + [e for e in base.elements if e.tag == 0x7FE00010])
    buf = bytearray(data)
    if element.header == 12:
        value = rng.choice([0xFFFFFFFF, 0xFFFFFFFE, 0x7FFFFFFF, 0x80000000, len(data) * 2])
        struct.pack_into("<L", buf, element.offset + 8, value)
    else:
        struct.pack_into("<H", buf, element.offset + 6, rng.choice([0xFFFF, 0xFFFE, 0x8001]))
    return bytes(buf)


def off_by_some(rng: random.Random, base: Base, data: bytes) -> bytes:
    element = rng.choice(_header_elements(base))
    buf = bytearray(data)
    delta = rng.choice([-4, -2, -1, 1, 2, 3, 8])
    if element.header == 12:
        struct.pack_into("<L", buf, element.offset + 8, max(0, element.length + delta) & 0xFFFFFFFF)
    else:
        struct.pack_into("<H", buf, element.offset + 6, max(0, element.length + delta) & 0xFFFF)
    return bytes(buf)


def change_vr(rng: random.Random, base: Base, data: bytes) -> bytes:
    element = rng.choice(_header_elements(base) + [e for e in base.elements if e.tag == 0x00080018])
    vr = rng.choice(_BAD_VRS if rng.random() < 0.5 else _VRS)
    return data[: element.offset + 4] + vr + data[element.offset + 6 :]


def rename_tag(rng: random.Random, base: Base, data: bytes) -> bytes:
    """Move the canary's element (or another) to another tag: (0010,0000), a UID, random."""
    names = [e for e in base.elements if e.tag in (0x00100010, 0x00100020)]
    element = rng.choice(names) if names and rng.random() < 0.7 else rng.choice(_header_elements(base))
    new_tag = rng.choice([0x00100000, 0x00080018, 0x00080016, 0x00180015, 0x00081030, rng.getrandbits(32)])
    buf = bytearray(data)
    struct.pack_into("<HH", buf, element.offset, new_tag >> 16, new_tag & 0xFFFF)
    return bytes(buf)


def sequence_garbage(rng: random.Random, base: Base, data: bytes) -> bytes:
    """Insert a sequence (in tag order, before (0008,1140)'s place) holding garbage items."""

    def item(depth: int) -> bytes:
        kind = rng.randrange(6)
        if kind == 0 or depth > 3:  # random bytes as an item of defined length
            body = rng.randbytes(rng.randrange(0, 40)) + CANARY_NAME.encode()
            return struct.pack("<HHL", 0xFFFE, 0xE000, len(body)) + body
        if kind == 1:  # an undefined-length item without its delimiter
            return struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF) + rng.randbytes(rng.randrange(0, 24))
        if kind == 2:  # an item claiming more than is there
            return struct.pack("<HHL", 0xFFFE, 0xE000, 0x7FFFFF00) + rng.randbytes(8)
        if kind == 3:  # a nested undefined-length sequence
            inner = b"".join(item(depth + 1) for _ in range(rng.randint(1, 3)))
            body = (
                struct.pack("<HH", 0x0040, 0xA730) + b"SQ\x00\x00" + struct.pack("<L", 0xFFFFFFFF)
                + inner + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
            )
            return struct.pack("<HHL", 0xFFFE, 0xE000, len(body)) + body
        if kind == 4:  # a well-formed item with the canary in a PN
            name = CANARY_NAME.encode()
            body = struct.pack("<HH", 0x0010, 0x0010) + b"PN" + struct.pack("<H", len(name) + 1) + name + b" "
            return struct.pack("<HHL", 0xFFFE, 0xE000, len(body)) + body
        return struct.pack("<HHL", 0xFFFE, rng.choice([0xE00D, 0xE0DD, 0x1234]), rng.getrandbits(32))

    items = b"".join(item(0) for _ in range(rng.randint(1, 4)))
    end = b"" if rng.random() < 0.2 else struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
    tag = 0x00081140
    seq = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + b"SQ\x00\x00" + struct.pack("<L", 0xFFFFFFFF) + items + end
    at = next((e.offset for e in base.elements if e.tag > tag), base.pixel_offset)
    return data[:at] + seq + data[at:]


def unmutated(rng: random.Random, base: Base, data: bytes) -> bytes:
    return data


MUTATIONS: dict[str, Callable[[random.Random, Base, bytes], bytes]] = {
    "none": unmutated,
    "byte_flip": flip_bytes,
    "truncate": truncate,
    "huge_length": huge_length,
    "off_by_some": off_by_some,
    "vr_change": change_vr,
    "tag_rename": rename_tag,
    "sequence_garbage": sequence_garbage,
}
WEIGHTS = {"none": 1, "byte_flip": 4, "truncate": 2, "huge_length": 2, "off_by_some": 2, "vr_change": 4,
           "tag_rename": 3, "sequence_garbage": 2, "pdu_garbage": 2}


# -- sending ----------------------------------------------------------------------------------


def write_part10(path: Path, base: Base, dataset: bytes, uid: str) -> None:
    from pydicom.filebase import DicomFileLike
    from pydicom.filewriter import write_file_meta_info

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(ComputedRadiographyImageStorage)
    meta.MediaStorageSOPInstanceUID = UID(uid)
    meta.TransferSyntaxUID = base.transfer_syntax
    with open(path, "wb") as f:
        f.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(DicomFileLike(f), meta)
        f.write(dataset)


def send_file(port: int, path: Path, syntax: UID) -> tuple[str, str]:
    """C-STORE the file's data set bytes as they are; return ``(outcome, error comment)``."""
    from pynetdicom import AE, _config

    _config.STORE_SEND_CHUNKED_DATASET = True  # send the bytes, never parse the mutant
    ae = AE(ae_title="FUZZSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    ae.add_requested_context(ComputedRadiographyImageStorage, syntax)
    assoc = ae.associate("127.0.0.1", port, ae_title="CXR_AI")
    if not assoc.is_established:
        if assoc.is_rejected:
            return "rejected", ""
        return ("association aborted" if assoc.is_aborted else "no association"), ""
    try:
        status = assoc.send_c_store(path)
    except Exception as exc:
        assoc.abort()
        return f"send error {type(exc).__name__}", ""
    if assoc.is_established:
        assoc.release()
    if "Status" not in status:
        return "no response", ""
    return f"0x{int(status.Status):04X}", str(status.get("ErrorComment", ""))


GARBAGE_HOST = "127.0.0.2"
"""Source address of the raw PDU garbage (loopback range)."""


def pdu_garbage(rng: random.Random, port: int) -> tuple[str, str]:
    """A raw socket: random bytes, or a PDU header of any type with a random length and body."""
    kind = rng.randrange(4)
    if kind == 0:
        payload = rng.randbytes(rng.randrange(1, 600))
    elif kind == 1:  # a PDU type 1-7 with a length that does not match its body
        body = rng.randbytes(rng.randrange(0, 300)) + CANARY_NAME.encode()
        payload = struct.pack(">BBL", rng.randint(1, 7), 0, rng.choice([len(body), len(body) + 50, 0xFFFFFFFF, 3])) + body
    elif kind == 2:  # an A-ASSOCIATE-RQ with garbage AE titles (a newline and the canary in one)
        called = b"CXR_AI".ljust(16)
        calling = b"EVIL\nFAKE LINE".ljust(16)  # a forged log line, if logged verbatim
        variable = rng.randbytes(rng.randrange(0, 120))
        body = struct.pack(">HH", 1, 0) + called + calling + b"\x00" * 32 + variable
        payload = struct.pack(">BBL", 1, 0, len(body)) + body
    else:  # P-DATA before any association
        pdv = b"\x01\x03" + rng.randbytes(rng.randrange(0, 200))
        body = struct.pack(">L", len(pdv)) + pdv
        payload = struct.pack(">BBL", 4, 0, len(body)) + body
    try:
        # From a second loopback address: garbage connections are another host, as on a
        # hospital network, and do not take the per-host connections of the mutants' sender.
        with socket.create_connection(("127.0.0.1", port), timeout=3, source_address=(GARBAGE_HOST, 0)) as s:
            # Never leave a stalled socket behind (stalled sockets are a connection-level
            # test): close with a reset, not a FIN the node may wait past.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.sendall(payload)
            s.settimeout(1)
            answer = s.recv(16)
    except TimeoutError:
        return "no answer (reset)", ""
    except OSError as exc:
        return f"socket {type(exc).__name__}", ""
    return (f"pdu 0x{answer[0]:02X}" if answer else "closed"), ""


# -- checks -----------------------------------------------------------------------------------


def reads_back(path: Path) -> bool:
    """Whether a stored file reads completely with pydicom: every element but Pixel Data
    decodes, and Pixel Data is all there (native: its declared size; encapsulated: its
    fragments end with the delimiter)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path)

            def walk(dataset: Dataset, top: bool) -> None:
                for element in dataset:
                    if top and element.tag == 0x7FE00010:
                        continue
                    if element.VR == "SQ":
                        for item in element.value:
                            walk(item, False)
                    else:
                        str(element.value)

            walk(ds, True)
        if "PixelData" not in ds:
            return False
        raw = cast(RawDataElement, pydicom.dcmread(path, defer_size=1024).get_item(0x7FE00010, keep_deferred=True))
        if raw.length != 0xFFFFFFFF:  # native: the value is all in the file
            return bool(raw.value_tell + raw.length <= path.stat().st_size)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # pydicom only warns about a missing delimiter
            fragments = list(pydicom.encaps.generate_fragments(ds.PixelData[8 + _bot_length(ds.PixelData):]))
        return bool(fragments)
    except Exception:
        return False


def _bot_length(pixel_data: bytes) -> int:
    tag, length = struct.unpack_from("<LL", pixel_data, 0)
    if tag != 0xE000FFFE:
        raise ValueError("no Basic Offset Table item")
    return int(length)


def dcmdump_ok(path: Path) -> bool | None:
    """Whether DCMTK's dcmdump reads the file without error (``None``: no DCMTK here)."""
    if not Path("/usr/bin/dcmdump").exists():
        return None
    result = subprocess.run(["/usr/bin/dcmdump", "-q", "+E", str(path)], capture_output=True, timeout=30)
    return result.returncode == 0 and b"E: " not in result.stderr


def rss_kib(pid: int, key: str = "VmRSS") -> int:
    """``key`` of the node's processes together (the receiver and an analysis process), KiB."""
    return status_sum(pid, (key,))[key]


def job_states(spool: Path) -> dict[str, str]:
    states = {}
    for state_dir in (spool / "jobs").iterdir():
        for record in state_dir.glob("*.json"):
            if not record.name.startswith(".tmp-"):
                states[record.stem] = state_dir.name
    return states


# -- the run ----------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> Report:
    rng = random.Random(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    mutants = out / "mutants"
    mutants.mkdir(exist_ok=True)
    bases = load_bases(Path(args.data))
    for stale in (out / "node.log", out / "fuzz_report.json"):  # a rerun into the same folder
        stale.unlink(missing_ok=True)
    node_args: tuple[str, ...] = ("--analysis",) if args.analysis else ()
    node = NodeProcess(out / "spool", out / "node.log", node_args).start(timeout=180 if args.analysis else 30)
    process = node.process
    assert process is not None
    report = Report()
    started = time.monotonic()
    kinds = list(WEIGHTS)
    weights = [WEIGHTS[k] for k in kinds]
    try:
        for number in range(args.cases):
            if time.monotonic() - started > args.time_limit:
                print(f"time limit reached after {number} cases", file=sys.stderr)
                break
            mutation = rng.choices(kinds, weights)[0]
            base = rng.choice(bases)
            uid = f"1.2.826.0.1.3680043.10.543.{args.seed}.{number + 1}.{rng.getrandbits(40)}"
            case = Case(number, mutation, base.name, uid)
            if mutation == "pdu_garbage":
                case.outcome, case.comment = pdu_garbage(rng, node.port)
            else:
                data = MUTATIONS[mutation](rng, base, _set_uid(base, uid))
                path = mutants / f"{number:05d}.dcm"
                write_part10(path, base, data, uid)
                case.outcome, case.comment = send_file(node.port, path, base.transfer_syntax)
                for _ in range(args.retries):  # all slots taken (a connection-level matter): wait, retry
                    if case.outcome not in ("rejected", "association aborted"):
                        break
                    report.rejected_retries += 1
                    time.sleep(1)
                    case.outcome, case.comment = send_file(node.port, path, base.transfer_syntax)
                if case.outcome != "0x0000" and not args.keep_mutants:
                    path.unlink()
            report.cases.append(case)
            if process.poll() is not None:  # the node died: count, keep its log, restart
                report.restarts += 1
                print(f"node died at case {number} ({mutation}); restarting", file=sys.stderr)
                node = NodeProcess(out / "spool", out / "node.log", node_args).start(timeout=180)
                assert node.process is not None
                process = node.process
            if number % 10 == 0:
                report.rss_samples_kib.append(rss_kib(process.pid))
        stored = [c for c in report.cases if c.outcome == "0x0000"]
        for case in stored:
            instance = out / "spool" / "instances" / f"{case.sop_instance_uid}.dcm"
            if not reads_back(instance):
                report.unreadable_success.append(f"{case.number}:{case.mutation}")
            elif args.dcmdump and dcmdump_ok(instance) is False:
                report.dcmdump_failures.append(f"{case.number}:{case.mutation}")
        if args.analysis:
            deadline = time.monotonic() + args.settle
            while True:
                states = job_states(out / "spool")
                pending = [c for c in stored if states.get(c.sop_instance_uid) not in FINAL_STATES]
                if not pending or time.monotonic() > deadline:
                    break
                time.sleep(1)
            report.not_final = [f"{c.number}:{c.mutation}:{states.get(c.sop_instance_uid)}" for c in pending]
        report.peak_rss_kib = rss_kib(process.pid, "VmHWM")
        report.rss_samples_kib.append(rss_kib(process.pid))
    finally:
        if node.process is not None and node.process.poll() is None:
            node.terminate(timeout=60)
    report.seconds = time.monotonic() - started
    mark = CANARY_MARK.lower()
    lines = node.log().splitlines()
    report.canary_hits = sum(mark in line.lower() for line in lines)
    report.unframed_lines = sum(not _FRAMED.match(line) for line in lines)
    return report


def print_report(report: Report, args: argparse.Namespace) -> None:
    by_mutation: dict[str, Counter[str]] = defaultdict(Counter)
    for case in report.cases:
        by_mutation[case.mutation][case.outcome] += 1
    outcomes = sorted({c.outcome for c in report.cases})
    print(f"fuzz run: seed={args.seed} cases={len(report.cases)} analysis={'on' if args.analysis else 'off'} "
          f"seconds={report.seconds:.0f}")
    print()
    print("| mutation | cases | " + " | ".join(outcomes) + " |")
    print("|---" * (len(outcomes) + 2) + "|")
    for mutation in sorted(by_mutation):
        row = by_mutation[mutation]
        print(f"| {mutation} | {sum(row.values())} | " + " | ".join(str(row.get(o, 0)) for o in outcomes) + " |")
    total = Counter(c.outcome for c in report.cases)
    print(f"| **all** | {len(report.cases)} | " + " | ".join(str(total.get(o, 0)) for o in outcomes) + " |")
    print()
    stored = total.get("0x0000", 0)
    print(f"node restarts:                 {report.restarts}")
    print(f"Success, not reading back:     {len(report.unreadable_success)} of {stored}")
    if args.dcmdump:
        print(f"Success, dcmdump errors:       {len(report.dcmdump_failures)} of {stored}")
    if args.analysis:
        print(f"stored, no final state:        {len(report.not_final)} of {stored} (after {args.settle:.0f} s)")
    print(f"canary hits in the node log:   {report.canary_hits}")
    print(f"log lines without timestamp:   {report.unframed_lines}")
    print(f"retries after 'rejected':      {report.rejected_retries}")
    print(f"node peak RSS (VmHWM):         {report.peak_rss_kib / 1024:.0f} MiB")


def passed(report: Report) -> bool:
    return not (
        report.restarts or report.unreadable_success or report.not_final or report.canary_hits or report.unframed_lines
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=300, help="mutants to send (default 300)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--analysis", action=argparse.BooleanOptionalAction, default=True,
                        help="the node analyses (shipped bundle, default) or only receives")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: a new temp folder)")
    parser.add_argument("--data", type=Path, default=shared_data_dir() / "dicom", help="real DICOM files to mutate")
    parser.add_argument("--time-limit", type=float, default=3600, help="stop sending after this many seconds")
    parser.add_argument("--settle", type=float, default=300, help="seconds the worker gets to finish stored mutants")
    parser.add_argument("--dcmdump", action=argparse.BooleanOptionalAction, default=True,
                        help="also read every stored mutant with DCMTK dcmdump (reported, not asserted)")
    parser.add_argument("--retries", type=int, default=3, help="retries (1 s apart) of a case whose association is rejected")
    parser.add_argument("--keep-mutants", action="store_true", help="keep refused mutants under OUT/mutants")
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = Path(tempfile.mkdtemp(prefix="fuzz-node-"))
    report = run(args)
    print_report(report, args)
    summary: dict[str, Any] = {
        "seed": args.seed, "analysis": args.analysis, "cases": len(report.cases), "seconds": round(report.seconds, 1),
        "outcomes": dict(Counter(c.outcome for c in report.cases)),
        "by_mutation": {m: dict(Counter(c.outcome for c in report.cases if c.mutation == m)) for m in WEIGHTS},
        "restarts": report.restarts, "unreadable_success": report.unreadable_success,
        "dcmdump_failures": report.dcmdump_failures, "not_final": report.not_final,
        "canary_hits": report.canary_hits, "unframed_lines": report.unframed_lines,
        "rejected_retries": report.rejected_retries, "peak_rss_kib": report.peak_rss_kib,
        "rss_samples_kib": report.rss_samples_kib,
        "comments": dict(Counter(f"{c.outcome} {c.comment}" for c in report.cases if c.comment)),
    }
    (Path(args.out) / "fuzz_report.json").write_text(json.dumps(summary, indent=1))
    print(f"report: {Path(args.out) / 'fuzz_report.json'}")
    return 0 if passed(report) else 1


if __name__ == "__main__":
    os.environ.setdefault("TCP_NODELAY", "1")
    sys.exit(main())

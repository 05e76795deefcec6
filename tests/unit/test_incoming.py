"""Streamed C-STORE data sets: stored byte for byte (writeback while receiving or not), capped."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dicom_node.receive.incoming import WRITEBACK_BYTES, IncomingFiles


@pytest.mark.parametrize("writeback", [False, True])
def test_a_data_set_arriving_in_pdus_is_stored_byte_for_byte(tmp_path: Path, writeback: bool) -> None:
    payload = os.urandom(3 * WRITEBACK_BYTES + 777)
    incoming = IncomingFiles(tmp_path, max_bytes=len(payload), writeback=writeback)
    capped = incoming.open()
    for start in range(0, len(payload), 131066):  # a 128 KiB PDU's data set fragment
        assert capped.write(payload[start:start + 131066]) == len(payload[start:start + 131066])
    capped.close()
    assert incoming.claim(capped.name) is capped
    assert not capped.exceeded and capped.error is None
    assert Path(capped.name).read_bytes() == payload


def test_a_data_set_past_the_limit_is_emptied_and_marked(tmp_path: Path) -> None:
    incoming = IncomingFiles(tmp_path, max_bytes=WRITEBACK_BYTES, writeback=True)
    capped = incoming.open()
    capped.write(b"z" * WRITEBACK_BYTES)
    capped.write(b"z")
    capped.close()
    assert capped.exceeded
    assert Path(capped.name).stat().st_size == 0

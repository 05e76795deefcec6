"""The node at the network's edge: stalled, hostile and broken peers cannot lock modalities
out, kill a thread, flood the log or hold up a shutdown (issue 12, defects 1, 6 and 8)."""

from __future__ import annotations

import re
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from testkit.peers import dcmtk, dcmtk_env, echo_ok, free_port
from testkit.rawdicom import (
    A_ABORT,
    A_ASSOCIATE_RJ,
    associate,
    association_request,
    command_set_without_command_field,
    connect,
    p_data,
    read_pdu,
    seconds_until_closed,
)
from testkit.shared_data import REPO_ROOT

ATTACKER = "127.0.0.2"  # a second host on loopback; modalities call from 127.0.0.1
HALF_REQUEST = association_request()[:40]
HUGE_PDU_HEADER = struct.pack(">BBL", 0x01, 0, 0xFFFFFFFF)
STALLS = {"one byte": b"\x01", "half an A-ASSOCIATE-RQ": HALF_REQUEST, "4 GiB PDU header": HUGE_PDU_HEADER, "idle": b""}


def _config(tmp_path: Path, network: str) -> str:
    path = tmp_path / "node.toml"
    path.write_text(f"[network]\n{network}\n")
    return str(path)


def _stall(port: int, payload: bytes, source: str = ATTACKER) -> socket.socket:
    sock = connect(port, source)
    if payload:
        sock.sendall(payload)
    return sock


def _timed(args: list[str]) -> tuple[int, float, str]:
    started = time.monotonic()
    result = subprocess.run(args, env=dcmtk_env(), capture_output=True, text=True, timeout=60)
    return result.returncode, time.monotonic() - started, result.stdout + result.stderr


def test_64_stalled_sockets_from_one_host_do_not_lock_a_modality_out(start_node, shared_data: Path) -> None:
    node = start_node()
    stalled = [_stall(node.port, list(STALLS.values())[i % 4]) for i in range(64)]
    try:
        time.sleep(0.5)
        code, echo_s, output = _timed(
            [dcmtk("echoscu"), "-aet", "MODALITY", "-aec", "CXR_AI", "-to", "5", "127.0.0.1", str(node.port)]
        )
        assert code == 0, output
        code, store_s, output = _timed([
            dcmtk("storescu"), "-aet", "MODALITY", "-aec", "CXR_AI", "-to", "5", "127.0.0.1", str(node.port),
            str(shared_data / "dicom" / "fo-dicom" / "CR-MONO1-10-chest.dcm"),
        ])
        assert code == 0, output
        print(f"\nwith 64 stalled sockets from {ATTACKER}: echoscu {echo_s:.2f} s, storescu {store_s:.2f} s")
        assert echo_s < 3 and store_s < 5
        # The host's connections over the per-host limit (4) were refused at once, with an
        # A-ASSOCIATE-RJ; the log says why, on a bounded number of lines.
        refused = 0
        for sock in stalled:
            sock.settimeout(0.2)
            try:
                if sock.recv(1) == bytes([A_ASSOCIATE_RJ]):
                    refused += 1
            except (TimeoutError, ConnectionResetError):
                pass
        assert refused >= 60 - 4
        log = node.log()
        assert "reason=local limit (per-host: 4 connections open from this address" in log
        assert len(re.findall(r"association rejected: peer=127\.0\.0\.2", log)) <= 3
    finally:
        for sock in stalled:
            sock.close()


@pytest.mark.parametrize("stall", list(STALLS))
def test_a_connection_without_association_request_is_closed_at_the_deadline(
    start_node, tmp_path: Path, stall: str
) -> None:
    node = start_node(None, "--config", _config(tmp_path, "association_request_timeout = 2"))
    sock = _stall(node.port, STALLS[stall])
    closed_after, pdus = seconds_until_closed(sock, timeout=10)
    sock.close()
    print(f"\n{stall}: closed after {closed_after:.2f} s, PDUs {pdus}")
    time.sleep(0.5)  # the line may follow the close
    if stall == "4 GiB PDU header":
        assert closed_after < 1.5 and pdus == [A_ABORT]  # refused before reading it
        assert "PDU of 4294967295 bytes announced" in node.log()
    else:
        assert 1.5 < closed_after < 4
        assert "no complete A-ASSOCIATE-RQ within 2 s (network.association_request_timeout)" in node.log()
    assert "Traceback" not in node.log()


def test_16_one_byte_connections_from_16_hosts_leave_associations_free(start_node, tmp_path: Path) -> None:
    """Stalled connections take no association slot: with max_associations = 2, a
    modality still gets in past 16 of them from 16 addresses."""
    node = start_node(None, "--config", _config(tmp_path, "max_associations = 2"))
    stalled = [_stall(node.port, b"\x01", f"127.0.0.{10 + i}") for i in range(16)]
    try:
        time.sleep(0.3)
        assert echo_ok(node.port, "MODALITY")
    finally:
        for sock in stalled:
            sock.close()


def test_max_associations_counts_established_ones_and_says_so(start_node, tmp_path: Path) -> None:
    node = start_node(None, "--config", _config(tmp_path, "max_associations = 1"))
    holder = associate(node.port, ATTACKER)
    try:
        code, _, output = _timed(
            [dcmtk("echoscu"), "-aet", "MODALITY", "-aec", "CXR_AI", "-to", "5", "127.0.0.1", str(node.port)]
        )
        assert code != 0 and "Local Limit Exceeded" in output
        assert "reason=local limit (max_associations: 1 associations open)" in node.log()
    finally:
        holder.close()
    time.sleep(0.5)
    assert echo_ok(node.port, "MODALITY")


def test_a_partial_p_data_after_association_is_cut_after_network_timeout(start_node, tmp_path: Path) -> None:
    node = start_node(None, "--config", _config(tmp_path, "network_timeout = 2"))
    sock = associate(node.port)
    sock.sendall(struct.pack(">BBL", 0x04, 0, 4096) + b"\x00" * 10)  # 10 of 4096 bytes, then nothing
    closed_after, _ = seconds_until_closed(sock, timeout=15)
    sock.close()
    print(f"\npartial P-DATA: closed after {closed_after:.2f} s")
    assert 1.5 < closed_after < 4.5
    time.sleep(0.3)
    log = node.log()
    assert re.search(r"association aborted: calling_ae=RAWSCU .*reason=PDU stalled for 2 s", log), log
    assert echo_ok(node.port, "MODALITY")


def test_idle_connections_from_one_host_cannot_take_every_slot(start_node, tmp_path: Path) -> None:
    node = start_node()
    idle = [_stall(node.port, b"") for _ in range(16)]
    try:
        time.sleep(0.3)
        assert echo_ok(node.port, "MODALITY")  # from 127.0.0.1, at once
    finally:
        for sock in idle:
            sock.close()


def test_a_command_set_without_command_field_aborts_the_association_not_a_thread(start_node) -> None:
    node = start_node()
    sock = associate(node.port, calling_ae="GARBAGE")
    sock.sendall(p_data(1, 0x03, command_set_without_command_field()))
    answer = read_pdu(sock, timeout=5)
    sock.close()
    assert answer is not None and answer[0] == A_ABORT
    time.sleep(0.5)
    log = node.log()
    lines = [line for line in log.splitlines() if "GARBAGE" in line or "DIMSE" in line or "pynetdicom" in line]
    assert any("association aborted: calling_ae=GARBAGE" in line and "DIMSE message does not decode" in line
               for line in lines), log
    assert len(lines) <= 3, lines  # accepted, aborted (with why), at most one more
    assert "Traceback" not in log and "Exception in thread" not in log
    assert echo_ok(node.port, "MODALITY")


def test_garbage_bytes_give_a_bounded_number_of_log_lines(start_node, tmp_path: Path) -> None:
    node = start_node(None, "--config", _config(tmp_path, "association_request_timeout = 2"))
    before = len(node.log().splitlines())
    sock = connect(node.port)
    try:
        sock.sendall(b"\xff" * 6000)  # 1000 "PDUs" of an unknown type
    except (BrokenPipeError, ConnectionResetError):
        pass
    seconds_until_closed(sock, timeout=5)
    sock.close()
    time.sleep(3)  # past the request deadline: the connection's summary line is out
    new = node.log().splitlines()[before:]
    print(f"\n6000 garbage bytes: {len(new)} log lines: {new}")
    assert len(new) == 1 and "connection closed: peer=127.0.0.1:" in new[0], new
    assert "Traceback" not in node.log()
    assert echo_ok(node.port, "MODALITY")


def test_rejection_lines_say_why(start_node, tmp_path: Path) -> None:
    config = tmp_path / "allow.toml"
    config.write_text('[[allowed_callers]]\nae_title = "PORTABLE_DX1"\n')
    node = start_node(None, "--config", str(config))
    code, _, _ = _timed([dcmtk("echoscu"), "-aet", "PORTABLE_DX1", "-aec", "WRONG", "127.0.0.1", str(node.port)])
    assert code != 0
    code, _, _ = _timed([dcmtk("echoscu"), "-aet", "INTRUDER", "-aec", "CXR_AI", "127.0.0.1", str(node.port)])
    assert code != 0
    time.sleep(0.3)
    log = node.log()
    assert re.search(r"association rejected: calling_ae=PORTABLE_DX1 called_ae=WRONG peer=127\.0\.0\.1:\d+ "
                     r"reason=called AE title not recognised", log), log
    assert re.search(r"association rejected: calling_ae=INTRUDER called_ae=CXR_AI peer=127\.0\.0\.1:\d+ "
                     r"reason=calling AE title not recognised", log), log


def test_a_calling_ae_title_with_a_newline_cannot_forge_a_log_line(start_node, tmp_path: Path) -> None:
    node = start_node(None, "--config", _config(tmp_path, "association_request_timeout = 2"))
    sock = connect(node.port)
    sock.sendall(association_request(calling_ae="EVIL\nFAKE LINE"))
    answer = read_pdu(sock, timeout=5)
    sock.close()
    assert answer is not None and answer[0] in (A_ASSOCIATE_RJ, A_ABORT)
    time.sleep(3)
    log = node.log()
    assert "EVIL\\nFAKE LINE" in log, log  # escaped, on one line
    assert not any(line.startswith("FAKE") for line in log.splitlines()), log
    assert echo_ok(node.port, "MODALITY")


def test_sigterm_exits_within_the_grace_period_with_stalled_clients(start_node) -> None:
    node = start_node()
    stalled = [_stall(node.port, b"\x01", "127.0.0.1") for _ in range(4)]
    try:
        time.sleep(0.3)
        started = time.monotonic()
        assert node.terminate(timeout=30) == 0
        exit_s = time.monotonic() - started
        print(f"\nSIGTERM with 4 one-byte connections: exit after {exit_s:.2f} s")
        assert exit_s < 10 + 2  # shutdown_grace_seconds = 10 and a margin
    finally:
        for sock in stalled:
            sock.close()


def test_serve_on_a_port_in_use_fails_before_loading_the_models(tmp_path: Path) -> None:
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "dicom_node", "serve", "--bind", "127.0.0.1", "--port", str(port),
             "--spool", str(tmp_path / "spool"), "--analysis"],
            capture_output=True, text=True, timeout=120, cwd=REPO_ROOT,
        )
        elapsed = time.monotonic() - started
    print(f"\nport in use: exit {result.returncode} after {elapsed:.2f} s")
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "model:" not in result.stderr  # the models never loaded
    assert elapsed < 8

"""The test peers' ports: outside the ephemeral range, so no outgoing connection takes one first."""

from __future__ import annotations

import socket
from pathlib import Path

from testkit.peers import free_port, listening_port_range, port_is_free


def test_the_range_is_the_larger_side_outside_the_ephemeral_ports(tmp_path: Path) -> None:
    range_file = tmp_path / "ip_local_port_range"
    range_file.write_text("32768\t60999\n")
    assert listening_port_range(range_file) == range(20000, 32768)
    range_file.write_text("1024 50000\n")
    assert listening_port_range(range_file) == range(50001, 65536)
    assert listening_port_range(tmp_path / "missing") == range(0)


def test_ports_are_outside_the_ephemeral_range_bindable_and_never_repeated() -> None:
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    usable = listening_port_range()
    assert all(port in usable for port in ports) or not usable
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports[-1]))


def test_a_port_held_by_a_listener_or_a_client_connection_is_not_free() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        assert not port_is_free(listener.getsockname()[1])
        with socket.create_connection(listener.getsockname()) as client:
            assert not port_is_free(client.getsockname()[1])
    assert port_is_free(free_port())

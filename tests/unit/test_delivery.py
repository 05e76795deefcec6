"""Delivery to the PACS: destinations, backoff, what counts as delivered (C-STORE: tests/integration/test_delivery_network.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from dicom_node.errors import ConfigError
from dicom_node.send.delivery import (
    PacsDestination,
    is_delivered,
    next_retry_delay,
    send_file,
)
from testkit.peers import free_port

CALLING_AE = "CXR_AI"
ONE_MINUTE = 60.0
ONE_HOUR = 3600.0


# --- PacsDestination ---------------------------------------------------------------------


def test_destination_keeps_valid_values_and_strips_the_ae_title() -> None:
    destination = PacsDestination("main", " PACS1 ", "pacs.example.org", 104)

    assert (destination.ae_title, destination.host, destination.port) == ("PACS1", "pacs.example.org", 104)
    assert PacsDestination("v6", "PACS", "::1", 11112).host == "::1"


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"port": 0}, "pacs.main.port"),
        ({"port": 65536}, "pacs.main.port"),
        ({"port": "104"}, "pacs.main.port"),
        ({"port": True}, "pacs.main.port"),
        ({"ae_title": ""}, "pacs.main.ae_title"),
        ({"ae_title": "A" * 17}, "pacs.main.ae_title"),
        ({"ae_title": "PA\\CS"}, "pacs.main.ae_title"),
        ({"host": ""}, "pacs.main.host"),
        ({"host": "pacs example"}, "pacs.main.host"),
        ({"host": "http://pacs/"}, "pacs.main.host"),
        ({"name": "main pacs"}, "pacs.name"),
    ],
)
def test_destination_refuses_bad_values_naming_the_key(kwargs: dict, key: str) -> None:
    values = {"name": "main", "ae_title": "PACS", "host": "127.0.0.1", "port": 104, **kwargs}

    with pytest.raises(ConfigError, match=f'"{key}"'):
        PacsDestination(**values)


# --- Backoff -------------------------------------------------------------------------------


def test_backoff_starts_at_the_initial_delay() -> None:
    assert next_retry_delay(1, initial=ONE_MINUTE, maximum=ONE_HOUR) == ONE_MINUTE


def test_backoff_doubles_after_each_failure() -> None:
    delays = [next_retry_delay(n, initial=ONE_MINUTE, maximum=ONE_HOUR) for n in range(1, 6)]

    assert delays == [60.0, 120.0, 240.0, 480.0, 960.0]


def test_backoff_is_capped_at_the_maximum() -> None:
    assert next_retry_delay(6, initial=ONE_MINUTE, maximum=ONE_HOUR) == 1920.0
    assert next_retry_delay(7, initial=ONE_MINUTE, maximum=ONE_HOUR) == ONE_HOUR
    assert next_retry_delay(10_000, initial=ONE_MINUTE, maximum=ONE_HOUR) == ONE_HOUR


def test_backoff_with_equal_initial_and_maximum_is_constant() -> None:
    assert {next_retry_delay(n, initial=5, maximum=5) for n in range(1, 20)} == {5.0}


@pytest.mark.parametrize(
    ("attempts", "initial", "maximum", "error"),
    [
        (0, 60, 3600, ValueError),
        (-1, 60, 3600, ValueError),
        (1.5, 60, 3600, TypeError),
        (True, 60, 3600, TypeError),
        (1, 0, 3600, ValueError),
        (1, 60, 30, ValueError),
        (1, 60, float("inf"), ValueError),
    ],
)
def test_backoff_refuses_meaningless_arguments(attempts, initial, maximum, error) -> None:
    with pytest.raises(error):
        next_retry_delay(attempts, initial=initial, maximum=maximum)


# --- What counts as delivered ------------------------------------------------------------------


def status(code: int | None) -> Dataset:
    response = Dataset()
    if code is not None:
        response.Status = code
    return response


@pytest.mark.parametrize(
    ("code", "delivered"),
    [
        (0x0000, True),  # Success
        (0xB000, True),  # Warning: coercion of data elements
        (0xB007, True),  # Warning: data set does not match SOP class
        (0xB006, True),  # Warning: elements discarded
        (0xA700, False),  # Refused: out of resources
        (0xA900, False),  # Error: data set does not match SOP class
        (0xC000, False),  # Error: cannot understand
        (0x0110, False),  # Failure: processing failure
        (0x0122, False),  # Failure: SOP class not supported
        (0xFF00, False),  # Pending is not a C-STORE outcome
        (None, False),  # empty response: timeout, abort or invalid answer
    ],
)
def test_only_success_and_warning_statuses_count_as_delivered(code: int | None, delivered: bool) -> None:
    assert is_delivered(status(code)) is delivered


def test_unreadable_file_is_not_delivered_and_does_not_raise(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(b"not dicom at all")
    somewhere = PacsDestination("nowhere", "PACS", "127.0.0.1", free_port())

    for path in (garbage, tmp_path / "missing.dcm"):
        result = send_file(path, somewhere, calling_ae_title=CALLING_AE)
        assert not result.delivered and result.error and result.error.startswith("cannot read")

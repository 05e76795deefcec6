"""Log safety: one line per record, no exception text, also for other libraries' records."""

from __future__ import annotations

import io
import logging

from dicom_node.errors import UnreadableDatasetError
from dicom_node.log_safety import SafeFormatter, describe_exception, escape_control


def _logger() -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(SafeFormatter("%(levelname)s %(name)s: %(message)s"))
    log = logging.getLogger("test_log_safety.pynetdicom_like")
    log.handlers[:] = [handler]
    log.propagate = False
    return log, stream


def test_control_characters_in_arguments_and_messages_are_escaped() -> None:
    log, stream = _logger()
    log.warning("calling_ae=%s", "EVIL\nINFO fake: line\r\x1b[2J")
    log.error("Invalid 'Calling AE Title' value 'A\nB'")  # a preformatted message, as pynetdicom logs
    lines = stream.getvalue().splitlines()
    assert lines == [
        "WARNING test_log_safety.pynetdicom_like: calling_ae=EVIL\\x0aINFO fake: line\\x0d\\x1b[2J",
        "ERROR test_log_safety.pynetdicom_like: Invalid 'Calling AE Title' value 'A\\x0aB'",
    ]


def test_exception_texts_never_reach_the_log() -> None:
    log, stream = _logger()
    try:
        raise ValueError("Invalid value for VR PN: 'CANARY^ZQXJ'")
    except ValueError as exc:
        log.exception(exc)  # pynetdicom's habit: the exception as the message
        log.exception("while storing")
    text = stream.getvalue()
    assert "ZQXJ" not in text
    assert "ValueError (text withheld)" in text
    assert "Traceback (most recent call last):" in text and "test_log_safety.py" in text


def test_own_messages_without_a_cause_are_kept() -> None:
    assert describe_exception(UnreadableDatasetError("data set is truncated")) == (
        "UnreadableDatasetError: data set is truncated"
    )
    try:
        try:
            raise KeyError("CANARY^ZQXJ")
        except KeyError as exc:
            raise UnreadableDatasetError("data set cannot be parsed (KeyError)") from exc
    except UnreadableDatasetError as wrapped:
        assert describe_exception(wrapped) == "UnreadableDatasetError (caused by KeyError; text withheld)"
    assert escape_control("a\u2028b\x85") == "a\\u2028b\\x85"

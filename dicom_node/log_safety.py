"""What may reach the log: escaped control characters, exception descriptions without data values.

Two rules, applied where the node logs and again by the log handler's formatter:

* every log line is one line: control characters (newline, carriage return, escape, C1
  controls, Unicode line separators) in a message or its arguments are written as
  ``\\xNN`` / ``\\uNNNN``, so a calling AE title or UID holding a newline cannot forge a
  line (:func:`escape_control`, :class:`SafeFormatter`, which covers pynetdicom's and every
  other library's records too);
* no text from a received data set reaches the log through an exception: pydicom quotes raw
  values in its messages (``b'Anonymized'``), so an exception is described by its type, its
  causes' types and, only for the node's own exceptions raised without a cause, its message
  (:func:`describe_exception`). Tracebacks keep their frames but lose the final message.
"""

from __future__ import annotations

import logging
import re
import traceback
from types import TracebackType

from dicom_node.errors import NodeError
from monai_app.errors import ChestXrayError

# C0 and C1 controls, DEL, and the Unicode line/paragraph separators a log viewer may break on.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u0085]")

_OWN_ERRORS: tuple[type[BaseException], ...] = (NodeError, ChestXrayError)

_MAX_MESSAGE = 300


def _escape_one(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def escape_control(text: str) -> str:
    r"""Return ``text`` with every control character escaped, so that it stays on one line.

    >>> escape_control("MODALITY\n2026-01-01 INFO fake: line\x1b[31m")
    'MODALITY\\x0a2026-01-01 INFO fake: line\\x1b[31m'
    >>> escape_control("plain text")
    'plain text'
    """
    return _CONTROL.sub(_escape_one, text)


def describe_exception(error: BaseException) -> str:
    """A log-safe description of ``error``: its type and its causes' types, never their text.

    The message of the node's own exceptions (:class:`~dicom_node.errors.NodeError`,
    :class:`~monai_app.errors.ChestXrayError`) is included when they were raised without a
    cause: then it was written by this code base from constants, not copied from a library
    message that may quote values of the data set.

    >>> from dicom_node.errors import UnreadableDatasetError
    >>> describe_exception(UnreadableDatasetError("data set is truncated"))
    'UnreadableDatasetError: data set is truncated'
    >>> try:
    ...     try:
    ...         raise ValueError("Invalid value 'DOE^JANE'")
    ...     except ValueError as exc:
    ...         raise RuntimeError("applying transform: Invalid value 'DOE^JANE'") from exc
    ... except RuntimeError as wrapped:
    ...     describe_exception(wrapped)
    'RuntimeError (caused by ValueError; text withheld)'
    """
    causes: list[str] = []
    seen = {id(error)}
    current = error.__cause__ or error.__context__
    while current is not None and id(current) not in seen and len(causes) < 5:
        seen.add(id(current))
        causes.append(type(current).__name__)
        current = current.__cause__ or current.__context__
    name = type(error).__name__
    if isinstance(error, _OWN_ERRORS) and not causes:
        text = " ".join(str(error).split())[:_MAX_MESSAGE]
        return escape_control(f"{name}: {text}" if text else name)
    if causes:
        return f"{name} (caused by {' <- '.join(causes)}; text withheld)"
    return f"{name} (text withheld)"


class SafeFormatter(logging.Formatter):
    """A formatter that keeps every record on one line and data values out of exceptions.

    * The message (format string with its arguments merged) has its control characters
      escaped; this covers every library's records, pynetdicom's included.
    * A record whose message *is* an exception (``logger.exception(exc)``, as pynetdicom
      does) shows only :func:`describe_exception` of it.
    * A traceback keeps its frames (file, line, function: code, not data) but each
      exception's own text is replaced by :func:`describe_exception`.
    """

    def format(self, record: logging.LogRecord) -> str:
        safe = logging.makeLogRecord(record.__dict__)  # other handlers keep the original
        if isinstance(record.msg, BaseException):
            message = describe_exception(record.msg)
        else:
            try:
                message = record.getMessage()
            except Exception as exc:  # a bad format string must not lose the record
                message = f"{record.msg!s} (unformattable arguments: {type(exc).__name__})"
        safe.msg, safe.args = escape_control(message), None
        safe.exc_text = None
        return super().format(safe)

    def formatException(self, ei: tuple[type[BaseException], BaseException, TracebackType | None] | tuple[None, None, None]) -> str:  # noqa: N802  (logging's name)
        """Frames of the traceback, each exception described without its text."""
        error = ei[1]
        if error is None:
            return ""
        lines: list[str] = []
        chain: list[BaseException] = []
        current: BaseException | None = error
        while current is not None and current not in chain and len(chain) < 5:
            chain.append(current)
            current = current.__cause__ or current.__context__
        for exc in reversed(chain):
            lines.append("Traceback (most recent call last):")
            for frame in traceback.extract_tb(exc.__traceback__):
                lines.append(f'  File "{frame.filename}", line {frame.lineno}, in {frame.name}')
            lines.append(f"  {describe_exception(exc)}")  # indented like the frames: a line of this record
        return "\n".join(escape_control(line) for line in lines)

    def formatStack(self, stack_info: str) -> str:  # noqa: N802  (logging's name)
        return stack_info  # frames of our own code only

def escape_field(value: object) -> str:
    """A value from the network, safe for one log field: as is when it is printable ASCII
    without spaces at its ends, else quoted and escaped the way :func:`ascii` does.

    >>> escape_field("MODALITY"), escape_field("EVIL\\nFAKE LINE"), escape_field(" PAD ")
    ('MODALITY', "'EVIL\\\\nFAKE LINE'", "' PAD '")
    """
    text = str(value)
    if text and text.isascii() and text.isprintable() and text == text.strip():
        return text
    return ascii(text)


def pynetdicom_loggers() -> list[logging.Logger]:
    """pynetdicom's module loggers (a filter on a logger does not apply to its children)."""
    import pynetdicom  # noqa: F401  # its modules create their loggers at import

    names = [n for n in list(logging.Logger.manager.loggerDict) if n == "pynetdicom" or n.startswith("pynetdicom.")]
    return [logging.getLogger(name) for name in names]

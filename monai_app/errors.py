"""Exceptions raised by the image code of :mod:`monai_app`. One base class, narrow subclasses.

Pure Python: the serving node imports it without torch or MONAI.
"""

from __future__ import annotations


class ChestXrayError(Exception):
    """Base class of every error :mod:`monai_app` raises on purpose."""


class UndecodableImageError(ChestXrayError, ValueError):
    """The pixel data of an image cannot be decoded.

    Raised for truncated or malformed compressed pixel data, a transfer syntax without an
    installed decoder, or a file that is not an image at all. The message names the cause,
    never patient attributes.
    """


class UnsupportedImageError(ChestXrayError, ValueError):
    """The image decodes, but is not a kind the node accepts (colour, multi-frame, ...)."""


def find_cause(error: BaseException, types: type[BaseException] | tuple[type[BaseException], ...]) -> BaseException | None:
    """The first exception of ``types`` in ``error``'s chain of causes (MONAI wraps transform
    errors in ``RuntimeError``), or ``None``.

    >>> try:
    ...     try:
    ...         raise ValueError("bad pixels")
    ...     except ValueError as exc:
    ...         raise RuntimeError("applying transform") from exc
    ... except RuntimeError as wrapped:
    ...     print(repr(find_cause(wrapped, ValueError)))
    ValueError('bad pixels')
    """
    current: BaseException | None = error
    while current is not None:
        if isinstance(current, types):
            return current
        current = current.__cause__
    return None

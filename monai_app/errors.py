"""Exceptions raised by the image code of :mod:`monai_app`. One base class, narrow subclasses."""


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

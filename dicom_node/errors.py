"""Exceptions raised by the node. One base class, narrow subclasses."""


class NodeError(Exception):
    """Base class of every error the node raises on purpose."""


class ConfigError(NodeError, ValueError):
    """A configuration value is missing, of the wrong type or out of range.

    The message always names the offending key (e.g. ``node.port``).
    """


class SpoolError(NodeError):
    """The spool on disk is not in a state the node can work with."""


class InvalidInstanceError(NodeError, ValueError):
    """A received dataset cannot be parsed or lacks the attributes the node needs."""


class UnreadableDatasetError(InvalidInstanceError):
    """The byte stream does not parse as a DICOM data set (garbage or truncated)."""


class MissingIdentifierError(InvalidInstanceError):
    """The data set parses but lacks a valid SOP Class UID or SOP Instance UID."""

"""The DICOM edge of the chest X-ray AI node: receiver, durable spool and (later) sender."""

__version__ = "0.1.0"

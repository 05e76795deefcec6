"""DIMSE status codes the node answers with, named once (PS3.7 Annex C, PS3.4 B.2.3)."""

SUCCESS = 0x0000

# Failure: Refused, out of resources (PS3.4 Table B.2-1).
OUT_OF_RESOURCES = 0xA700  # no space left on the spool's file system
OUT_OF_RESOURCES_WRITE_FAILED = 0xA701  # any other I/O error while persisting
OUT_OF_RESOURCES_TOO_LARGE = 0xA702  # the instance is larger than node.max_instance_bytes

# Error: Data Set does not match SOP Class.
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900

# Error: Cannot understand (0xCxxx).
CANNOT_UNDERSTAND = 0xC000  # the byte stream does not parse, an element does not decode, or it is truncated
CANNOT_UNDERSTAND_MISSING_UIDS = 0xC001  # SOP Class / Instance UID absent, empty or not a valid UID
CANNOT_UNDERSTAND_UID_MISMATCH = 0xC002  # data set UIDs differ from the C-STORE request's

# Failure: Processing failure (PS3.7 C.4.2), for anything unexpected.
PROCESSING_FAILURE = 0x0110

"""Stage 2, the spool: every received instance and its job, durably on disk; the job's folder is its state."""

from dicom_node.spool.store import DeliveryState, Job, JobState, Spool, is_valid_uid, utc_now

__all__ = ["DeliveryState", "Job", "JobState", "Spool", "is_valid_uid", "utc_now"]

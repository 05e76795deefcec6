"""The retention policy applied by a running node: at start, every ``interval``, and at once
when the disk passes its high-water mark (checked every minute: a statfs, no walk)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from dicom_node.spool.retention import DiskUsage, PurgeOutcome, RetentionPolicy, disk_usage, purge
from dicom_node.spool.store import Spool

logger = logging.getLogger(__name__)

DISK_CHECK_SECONDS = 60.0


class PeriodicPurge:
    """Purges ``spool`` by ``policy`` until stopped.

    Parameters
    ----------
    spool : Spool
        The node's spool.
    policy : RetentionPolicy
        Periods and high-water mark.
    interval_seconds : float
        Time between two purges by age.
    on_purged : callable or None
        Called with each purge's outcome that deleted something (metrics, audit).
    clock : callable
        Unix time now (the ages are measured with it).
    disk : callable
        The spool file system's usage.
    """

    def __init__(
        self,
        spool: Spool,
        policy: RetentionPolicy,
        interval_seconds: float,
        *,
        on_purged: Callable[[PurgeOutcome], None] | None = None,
        clock: Callable[[], float] = time.time,
        disk: Callable[[Path], DiskUsage] = disk_usage,
    ) -> None:
        self.spool = spool
        self.policy = policy
        self.interval_seconds = interval_seconds
        self.on_purged = on_purged
        self.clock = clock
        self.disk = disk
        self.wake = threading.Event()  # set to purge now (or to stop)
        self._warned_full = False

    def purge_now(self) -> PurgeOutcome:
        """One purge at the clock's time."""
        outcome = purge(self.spool, self.policy, now=self.clock(), disk=self.disk)
        if self.on_purged is not None and outcome.plan.counts()["bytes"]:
            self.on_purged(outcome)
        full = self.above_high_water()
        if full and not self._warned_full:
            logger.warning(
                "spool file system above the high-water mark (%g %%) and nothing more the policy may delete: "
                "undelivered results and their images are kept (see `cxr-node status`)", self.policy.high_water_percent,
            )
        self._warned_full = full
        return outcome

    def above_high_water(self) -> bool:
        mark = self.policy.high_water_percent
        return mark > 0 and self.disk(self.spool.root).used_percent > mark

    def run(self, stop: threading.Event) -> None:
        """Purge until ``stop`` is set; errors are logged and the loop goes on."""
        next_purge = 0.0  # at once: a node restarted after weeks catches up
        while not stop.is_set():
            now = time.monotonic()
            try:
                if now >= next_purge or self.wake.is_set() or self.above_high_water():
                    next_purge = now + self.interval_seconds
                    self.purge_now()
            except Exception:
                logger.exception("purge: unexpected error; the next try is in %.0f s", DISK_CHECK_SECONDS)
            self.wake.clear()
            self.wake.wait(min(DISK_CHECK_SECONDS, max(0.0, next_purge - time.monotonic())))

"""The retention job: roll raw samples up into 1-minute averages and prune old history."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from master_service.storage.store import Store

logger = logging.getLogger(__name__)

RETENTION_EVERY_S: Final = 60.0
DAY_S: Final = 86400.0


@dataclass(frozen=True, slots=True)
class RetentionReport:
    """What one pass did."""

    buckets_written: int
    raw_deleted: int
    buckets_deleted: int


def run_retention(store: Store, now: float, raw_days: float, rollup_days: float) -> RetentionReport:
    """Roll up what is new (before pruning, so nothing is lost), prune, commit."""
    raw_before = now - raw_days * DAY_S
    written = store.roll_up(now, raw_since=raw_before)
    raw_deleted, buckets_deleted = store.prune(raw_before, now - rollup_days * DAY_S)
    store.commit()
    report = RetentionReport(written, raw_deleted, buckets_deleted)
    log = logger.info if raw_deleted or buckets_deleted else logger.debug
    log(
        "history: %d minute buckets written, %d raw samples and %d buckets past retention deleted",
        written,
        raw_deleted,
        buckets_deleted,
    )
    return report


class RetentionJob:
    """A timer thread that hands `run_retention` to the store's single writer every so often."""

    def __init__(
        self,
        call_in_writer: Callable[[Callable[[Store], None]], None],
        raw_days: float,
        rollup_days: float,
        every_s: float = RETENTION_EVERY_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.call_in_writer = call_in_writer
        self.raw_days = raw_days
        self.rollup_days = rollup_days
        self.every_s = every_s
        self.clock = clock
        self.runs = 0
        self.last_report: RetentionReport | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="picluster-retention", daemon=True)

    def start(self) -> None:
        """Run a pass now (a master that was down may be behind) and then every `every_s`."""
        self._thread.start()

    def stop(self) -> None:
        """Stop scheduling passes (one already handed to the writer still runs)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while True:
            self.call_in_writer(self._pass)
            if self._stop.wait(self.every_s):
                return

    def _pass(self, store: Store) -> None:
        # SQLite has one writer: running on the ingest thread keeps it that way.
        self.last_report = run_retention(store, self.clock(), self.raw_days, self.rollup_days)
        self.runs += 1

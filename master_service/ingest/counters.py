"""The master's own health counters, and warnings rate-limited per cause."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, Final

from cluster_protocol.errors import RejectCause

logger = logging.getLogger(__name__)

WARN_EVERY_S: Final = 10.0


class IngestCounters:
    """Counts of what the master received, rejected (by cause) and failed on."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self.received = 0
        self.accepted = 0
        self.duplicates = 0
        self.handler_errors = 0
        self.ignored = 0  # our own topics (commands, the master's status)
        self.rejected: Counter[str] = Counter()
        self._last_warned: dict[str, float] = {}
        self._suppressed: Counter[str] = Counter()

    def reject(self, cause: str, topic: str, reason: str) -> None:
        """Count a dropped message and log it, at most once per cause every WARN_EVERY_S."""
        with self._lock:
            self.rejected[cause] += 1
            now = self._clock()
            last = self._last_warned.get(cause)
            if last is not None and now - last < WARN_EVERY_S:
                self._suppressed[cause] += 1
                return
            self._last_warned[cause] = now
            suppressed = self._suppressed.pop(cause, 0)
        more = f" ({suppressed} more of this cause since the last warning)" if suppressed else ""
        # A cleared retained message is what `nodes remove` and `forget` leave behind on
        # purpose: counted like any drop, but not worth a warning.
        level = logging.INFO if cause == RejectCause.EMPTY else logging.WARNING
        logger.log(level, "dropped message on %s [%s]: %s%s", topic, cause, reason, more)

    def snapshot(self) -> dict[str, Any]:
        """The counters as plain data for the API."""
        with self._lock:
            return {
                "received": self.received,
                "accepted": self.accepted,
                "duplicates": self.duplicates,
                "handler_errors": self.handler_errors,
                "ignored": self.ignored,
                "rejected": dict(self.rejected),
                "rejected_total": sum(self.rejected.values()),
            }

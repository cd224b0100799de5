"""The engine's clock: wakes at the next deadline (a node turning stale, `for` running out).

Rules are evaluated as events arrive; some events are the passing of time (a node that went
silent sends nothing). This thread sleeps until the engine's earliest deadline, then has the
ingest thread run the due timers, so the engine is only ever driven from one thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Final

logger = logging.getLogger(__name__)

# The longest sleep, even with nothing scheduled: deadlines are wall-clock times, and a Pi
# without a real-time clock steps its clock when NTP syncs; waking now and then lets the
# engine notice a step (AlertEngine.due) instead of sleeping on a stale deadline.
MAX_WAIT_S: Final = 30.0


class AlertTimer(threading.Thread):
    """Calls `run_due` through `hand_over` at each deadline `next_due` reports."""

    def __init__(
        self,
        next_due: Callable[[], float | None],
        hand_over: Callable[[Callable[[], None]], None],
        run_due: Callable[[], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(name="picluster-alert-timer", daemon=True)
        self._next_due = next_due
        self._hand_over = hand_over  # e.g. run the callable on the ingest thread
        self._run_due = run_due
        self._clock = clock
        self._poked = threading.Event()
        self._done = threading.Event()
        self._stopping = threading.Event()

    def poke(self, _due: float | None = None) -> None:
        """A deadline earlier than the one awaited was scheduled."""
        self._poked.set()

    def stop(self) -> None:
        """End the thread."""
        self._stopping.set()
        self._poked.set()
        self._done.set()
        if self.is_alive():
            self.join(timeout=5)

    def run(self) -> None:
        """Sleep until the next deadline, hand the due timers over, wait for them to run."""
        while not self._stopping.is_set():
            due = self._next_due()
            wait_s = MAX_WAIT_S if due is None else min(MAX_WAIT_S, max(0.0, due - self._clock()))
            if wait_s > 0 and self._poked.wait(wait_s):
                self._poked.clear()
                continue
            # A deadline came, or MAX_WAIT_S passed: either way the engine looks at its clock
            # (a cheap call when nothing is due).
            if self._stopping.is_set():
                return
            self._done.clear()
            self._hand_over(self._run_and_signal)
            # The ingest thread runs them; until then the same deadline is still the next.
            self._done.wait()

    def _run_and_signal(self) -> None:
        try:
            self._run_due()
        except Exception:
            logger.exception("running the alert timers failed")
        finally:
            self._done.set()

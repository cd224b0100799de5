"""Failed-login throttling: a few tries per client address and per user name, then a wait.

Kept in memory: a restart forgets the counts, which costs a guesser one restart of the
master per few tries, far slower than the throttle itself. Counting per user name as well
stops one guesser spread over many addresses from trying one account at full speed.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Final

MAX_PER_ADDRESS: Final = 5
MAX_PER_USER: Final = 10
WINDOW_S: Final = 300.0


class LoginThrottle:
    """Counts failed logins in a sliding window; says how long to wait once over the limit."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        *,
        per_address: int = MAX_PER_ADDRESS,
        per_user: int = MAX_PER_USER,
        window_s: float = WINDOW_S,
    ) -> None:
        self._clock = clock
        self._limits = {"address": per_address, "user": per_user}
        self._window_s = window_s
        self._failures: dict[tuple[str, str], deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: tuple[str, str], now: float) -> deque[float]:
        times = self._failures.get(key, deque())
        while times and times[0] <= now - self._window_s:
            times.popleft()
        if not times:
            self._failures.pop(key, None)
        return times

    def retry_after(self, address: str, user: str) -> float | None:
        """Seconds to wait before this address may try this user again; None: go ahead."""
        now = self._clock()
        waits = []
        with self._lock:
            for key in (("address", address), ("user", user)):
                times = self._recent(key, now)
                if len(times) >= self._limits[key[0]]:
                    waits.append(times[0] + self._window_s - now)
        return max(waits) if waits else None

    def failed(self, address: str, user: str) -> None:
        """Count one failed login."""
        now = self._clock()
        with self._lock:
            for key in (("address", address), ("user", user)):
                self._failures.setdefault(key, deque()).append(now)
            if len(self._failures) > 10_000:  # many addresses: drop those whose tries aged out
                cutoff = now - self._window_s
                for stale in [k for k, v in self._failures.items() if v[-1] <= cutoff]:
                    del self._failures[stale]

    def succeeded(self, address: str, user: str) -> None:
        """A good password clears that address's count (not the user's: see the module doc)."""
        with self._lock:
            self._failures.pop(("address", address), None)

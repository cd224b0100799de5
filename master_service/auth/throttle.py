"""Failed-login throttling: a few tries per client address and per user name, then a wait.

Every try is counted before its password is checked, so tries sent in parallel cannot all
slip past the limit while the slow check runs; a good password takes back only its own try.
Counting per user name as well stops one guesser spread over many addresses from trying one
account at full speed. Kept in memory: a restart forgets the counts, which costs a guesser
one restart of the master per few tries, far slower than the throttle itself.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Final

MAX_PER_ADDRESS: Final = 5
MAX_PER_USER: Final = 10
WINDOW_S: Final = 300.0
MAX_KEYS: Final = 10_000  # addresses and names tracked at once; the oldest go first
MAX_NAME: Final = 64  # longer names cannot exist (USER_NAME): one key for all of them

Key = tuple[str, str]


class LoginThrottle:
    """Counts login tries in a sliding window; says how long to wait once over the limit."""

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
        self._tries: OrderedDict[Key, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def _keys(self, address: str, user: str) -> tuple[Key, Key]:
        name = user if len(user) <= MAX_NAME else "<too long>"
        return ("address", address), ("user", name)

    def _recent(self, key: Key, now: float) -> deque[float]:
        times = self._tries.get(key)
        if times is None:
            return deque()
        while times and times[0] <= now - self._window_s:
            times.popleft()
        if not times:
            del self._tries[key]
        return times

    def attempt(self, address: str, user: str) -> float | None:
        """Count a try, or say how many seconds to wait (nothing counted) when over a limit."""
        now = self._clock()
        keys = self._keys(address, user)
        with self._lock:
            waits = [
                times[0] + self._window_s - now
                for key in keys
                if len(times := self._recent(key, now)) >= self._limits[key[0]]
            ]
            if waits:
                return max(waits)
            for key in keys:
                self._tries.setdefault(key, deque()).append(now)
                self._tries.move_to_end(key)
            while len(self._tries) > MAX_KEYS:
                self._tries.popitem(last=False)
        return None

    def succeeded(self, address: str, user: str) -> None:
        """The password was right: take back this try (earlier failures still count)."""
        with self._lock:
            for key in self._keys(address, user):
                times = self._tries.get(key)
                if times:
                    times.pop()
                    if not times:
                        del self._tries[key]

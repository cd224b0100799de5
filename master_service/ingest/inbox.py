"""The bounded hand-off from paho's network thread to the ingest thread, taken in batches."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from typing import Generic, TypeVar

T = TypeVar("T")


class Inbox(Generic[T]):
    """A bounded hand-off from paho's network thread to the ingest thread, taken in batches.

    `queue.Queue` takes a lock and notifies a condition on every put and get; at thousands of
    messages per second that (and waking the consumer for each one) was a measurable share of
    the master's CPU. Here a put is a deque append (atomic under the GIL); the lock is taken only
    to wake a consumer that is asleep or to block a producer while the inbox is full.
    """

    def __init__(self, limit: int) -> None:
        self._items: deque[T] = deque()
        self._limit = limit
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)
        self._consumer_waiting = False
        self._producers_waiting = 0

    def _wait_for_room(self) -> None:
        """Block while the inbox holds `limit` items or more (called only when it is full)."""
        with self._not_full:
            self._producers_waiting += 1
            try:
                while len(self._items) >= self._limit:
                    self._not_full.wait()
            finally:
                self._producers_waiting -= 1

    def put(self, item: T) -> None:
        """Append one item; blocks only while the inbox holds `limit` items."""
        if len(self._items) >= self._limit:
            self._wait_for_room()
        self._items.append(item)
        # Read after the append: a consumer that set the flag re-checks the deque under the
        # lock before it sleeps, so either it sees this item or we see the flag.
        if self._consumer_waiting:
            with self._not_empty:
                self._not_empty.notify()

    def put_many(self, items: Sequence[T]) -> None:
        """Append a batch at once; blocks only while the inbox holds `limit` items or more."""
        if len(self._items) >= self._limit:
            self._wait_for_room()
        self._items.extend(items)
        if self._consumer_waiting:
            with self._not_empty:
                self._not_empty.notify()

    def take(self, most: int, timeout_s: float) -> list[T]:
        """Up to `most` items, oldest first; waits up to `timeout_s` while there are none."""
        items = self._items
        if not items and timeout_s > 0:
            with self._not_empty:
                self._consumer_waiting = True
                try:
                    if not items:
                        self._not_empty.wait(timeout_s)
                finally:
                    self._consumer_waiting = False
        pop = items.popleft
        batch = [pop() for _ in range(min(most, len(items)))]
        if self._producers_waiting and batch:
            with self._not_full:
                self._not_full.notify_all()
        return batch

    def qsize(self) -> int:
        """Items waiting."""
        return len(self._items)

    def empty(self) -> bool:
        """True when nothing waits."""
        return not self._items

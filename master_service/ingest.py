"""The ingest thread: routes queued messages, writes state and history in batches."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Final

from master_service.handlers import Context
from master_service.router import RawMessage, dispatch
from master_service.store import Store

logger = logging.getLogger(__name__)

FLUSH_EVERY_S: Final = 0.2
FLUSH_ROWS: Final = 1000
QUEUE_LIMIT: Final = 100_000


class Ingestor(threading.Thread):
    """Single consumer of the message queue; the only writer of state and of the store."""

    def __init__(
        self,
        ctx: Context,
        store: Store,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(name="picluster-ingest", daemon=True)
        self.ctx = ctx
        self.store = store
        self.clock = clock
        # Bounded: when the master falls behind, the network thread blocks and the broker
        # queues for us (sized in mosquitto.conf) instead of this process growing without end.
        self.queue: queue.Queue[RawMessage | None] = queue.Queue(QUEUE_LIMIT)
        self.committed = 0  # messages whose effects are committed to the store
        self._pending = 0
        self._last_flush = time.monotonic()
        self._tasks: queue.Queue[Callable[[Store], None]] = queue.Queue()
        self._stopping = threading.Event()
        self.commit_listeners: list[Callable[[int], None]] = []
        self.crashes: list[BaseException] = []  # dispatch errors re-raised in tests

    def submit(self, message: RawMessage) -> None:
        """Queue one message (called on the paho network thread; blocks only when full)."""
        self.queue.put(message)

    def call_in_writer(self, task: Callable[[Store], None]) -> None:
        """Run `task(store)` on this thread before the next flush (e.g. forget a node)."""
        self._tasks.put(task)
        self.queue.put(None)  # wake the thread

    def stop(self) -> None:
        """Finish what is queued, flush, and end the thread."""
        self._stopping.set()
        self.queue.put(None)
        self.join(timeout=10)

    def run(self) -> None:
        """Consume until stopped."""
        while True:
            try:
                message = self.queue.get(timeout=FLUSH_EVERY_S)
            except queue.Empty:
                message = None
            if message is not None:
                self._handle(message)
            self._run_tasks()
            due = time.monotonic() - self._last_flush >= FLUSH_EVERY_S
            if self._pending and (due or len(self.ctx.pending_history) >= FLUSH_ROWS):
                self.flush()
            if self._stopping.is_set() and self.queue.empty():
                self.flush()
                return

    def _handle(self, message: RawMessage) -> None:
        try:
            dispatch(message, self.ctx)
        except Exception as error:  # only reached when tests ask handlers to re-raise
            logger.exception("dispatch failed on %s", message.topic)
            self.crashes.append(error)
        self._pending += 1

    def _run_tasks(self) -> None:
        while True:
            try:
                task = self._tasks.get_nowait()
            except queue.Empty:
                return
            try:
                task(self.store)
                self.store.commit()
            except Exception:
                logger.exception("writer task failed")

    def flush(self) -> None:
        """Write queued history and changed node states in one transaction."""
        state = self.ctx.state
        with state.lock:
            rows, self.ctx.pending_history = self.ctx.pending_history, []
            dirty = [node for n in state.dirty if (node := state.get(n)) is not None]
            state.dirty.clear()
            self.store.save_nodes(dirty, self.clock())
        if rows:
            self.store.append_history(rows)
        self.store.commit()
        self.committed += self._pending
        done, self._pending = self._pending, 0
        self._last_flush = time.monotonic()
        for listener in self.commit_listeners:
            listener(done)

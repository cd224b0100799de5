"""The ingest thread: routes queued messages, writes state and history in batches."""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any, Final

from master_service.ingest.handlers import Context
from master_service.ingest.inbox import Inbox
from master_service.ingest.router import RawMessage, dispatch
from master_service.state import NodeState
from master_service.storage.store import Store

logger = logging.getLogger(__name__)

FLUSH_EVERY_S: Final = 0.1
FLUSH_ROWS: Final = 1000
QUEUE_LIMIT: Final = 100_000
BATCH_MAX: Final = 256  # messages taken from the inbox at once
# After a short batch, let more messages gather before taking again: at a few thousand
# messages per second, waking this thread for each one cost more than the messages did.
GATHER_S: Final = 0.005


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
        self.queue: Inbox[RawMessage | None] = Inbox(QUEUE_LIMIT)
        self.committed = 0  # messages whose effects are committed to the store
        self._pending = 0
        self._last_flush = time.monotonic()
        self._tasks: queue.Queue[Callable[[Store], None]] = queue.Queue()
        self._stopping = threading.Event()
        self.commit_listeners: list[Callable[[int], None]] = []
        self.crashes: list[BaseException] = []  # dispatch errors re-raised in tests
        self.store_errors = 0  # flushes that failed (and were retried)
        self.store_error: str | None = None  # the last one, while the store stays unwritable
        self.heartbeat = time.monotonic()  # last turn of the loop, for the health check

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
            self.heartbeat = time.monotonic()
            wait_s = FLUSH_EVERY_S
            if self._pending:
                wait_s = max(0.0, self._last_flush + FLUSH_EVERY_S - time.monotonic())
            batch = self.queue.take(BATCH_MAX, wait_s)
            for message in batch:
                if message is not None:
                    self._handle(message)
                    if len(self.ctx.pending_history) >= FLUSH_ROWS:
                        self.flush()
            self._run_tasks()
            due = time.monotonic() - self._last_flush >= FLUSH_EVERY_S
            if self._pending and due:
                self.flush()
            if self._stopping.is_set() and self.queue.empty():
                self.flush()
                return
            if 0 < len(batch) < BATCH_MAX and not self._stopping.is_set():
                time.sleep(GATHER_S)

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

    def _store_failed(
        self, error: Exception, rows: list[tuple[str, float, Any]], dirty: list[NodeState]
    ) -> None:
        self.store.rollback()
        state = self.ctx.state
        with state.lock:
            self.ctx.pending_history[:0] = rows
            state.dirty.update(node.node for node in dirty)
        self.store_errors += 1
        if self.store_error is None:  # once per outage, not once per flush
            logger.error("cannot write to the store %s: %s; retrying", self.store.path, error)
        self.store_error = str(error)
        self._last_flush = time.monotonic()

    def flush(self) -> None:
        """Write queued history and changed node states in one transaction."""
        state = self.ctx.state
        with state.lock:
            rows, self.ctx.pending_history = self.ctx.pending_history, []
            dirty = [node for n in state.dirty if (node := state.get(n)) is not None]
            state.dirty.clear()
            self.store.save_nodes(dirty, self.clock())
        try:
            if rows:
                self.store.append_history(rows)
            self.store.commit()
        except (sqlite3.Error, OSError) as error:
            # Disk full, database locked...: keep the batch and retry at the next flush. Nothing
            # is acknowledged meanwhile, so the broker keeps every message for us.
            self._store_failed(error, rows, dirty)
            return
        if self.store_error is not None:
            logger.warning(
                "the store is writable again; %d batch(es) had failed", self.store_errors
            )
            self.store_error = None
        self.committed += self._pending
        done, self._pending = self._pending, 0
        self._last_flush = time.monotonic()
        for listener in self.commit_listeners:
            listener(done)

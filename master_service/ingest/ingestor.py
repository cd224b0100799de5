"""The ingest thread: routes queued messages, writes state and history in batches."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, Final, TypeVar

from master_service.ingest.handlers import Context
from master_service.ingest.history_rows import insert_history
from master_service.ingest.inbox import Inbox
from master_service.ingest.router import RawMessage, dispatch, dispatch_batch
from master_service.state import NodeState
from master_service.storage.database import Connection, outage_errors
from master_service.storage.forwarded import Forwarded, write_forwarded
from master_service.storage.store import Store

logger = logging.getLogger(__name__)

T = TypeVar("T")

# A sample waits for the next commit. Every 0.1 s keeps a quiet cluster's writes few (each
# commit is an fsync and WAL pages: an SD card's wear); once FLUSH_BUSY_ROWS messages wait,
# every 0.02 s brings the p99 from node to commit at 5,000 msg/s from 200 ms to 62-67 ms
# (bench/README.md, latency; 0.03 s gave 80-106 ms).
FLUSH_EVERY_S: Final = 0.1
FLUSH_BUSY_S: Final = 0.02
FLUSH_BUSY_ROWS: Final = 100
FLUSH_ROWS: Final = 1000
QUEUE_LIMIT: Final = 100_000
BATCH_MAX: Final = 256  # messages taken from the inbox at once
# After a short batch, let more messages gather before taking again: at a few thousand
# messages per second, waking this thread for each one cost more than the messages did.
GATHER_S: Final = 0.005
# A turn of the loop that fails this many times in a row is not a passing fault: the thread
# ends, `/healthz` says so and `MasterService.serve` exits non-zero for systemd or compose
# to restart the master (unacknowledged messages wait in the broker meanwhile).
GIVE_UP_AFTER: Final = 5
RETRY_MAX_S: Final = 2.0  # longest wait between two flush attempts while the store fails
LOOP_RETRY_S: Final = 0.2
DRAIN_EVERY_S: Final = 0.1  # how often a leader takes the metrics its followers stored

Write = tuple[Callable[[Store], Any], "Future[Any]"]
Route = Callable[[Sequence[RawMessage], Context, Callable[[RawMessage, Exception], None]], None]
Drain = Callable[[Connection], list[RawMessage]]
# The store's own trouble (disk full, locked, server gone): the whole batch is retried.
_STORE_TROUBLE: Final[tuple[type[BaseException], ...]] = (*outage_errors(), OSError)


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
        self._batch: deque[RawMessage | None] = deque()
        self._tasks: queue.Queue[Callable[[Store], None]] = queue.Queue()
        self._writes: list[Write] = []  # run inside the next flush's transaction
        self._writes_lock = threading.Lock()
        self._stopping = threading.Event()
        self.commit_listeners: list[Callable[[int], None]] = []
        # Dispatch errors, kept only when the context re-raises them (tests); counted always.
        self.crashes: list[BaseException] = []
        self.dispatch_errors = 0
        self.listener_errors = 0  # commit listeners that raised (the commit itself stands)
        self.loop_errors = 0  # unexpected failures of a loop turn, survived
        self.failure: BaseException | None = None  # why the loop ended, if not by `stop`
        self.store_errors = 0  # flushes that failed (and were retried)
        self.store_error: str | None = None  # the last one, while the store stays unwritable
        self.heartbeat = time.monotonic()  # last turn of the loop, for the health check
        # While the store fails, retries back off (every batch is rewritten in full each time).
        self._retry_at = 0.0
        self._outage_failures = 0
        # The batch path (`dispatch_batch`); False routes one message at a time through
        # `dispatch`, the path it replaced (kept for bench/ingest_cost.py's baseline).
        self.batch_dispatch = True
        # How a taken batch is handled: `dispatch_batch`, or a follower's forwarding of
        # metrics to the leader (master_service.peers.follower).
        self.route: Route = dispatch_batch
        # A leader's source of what its followers stored for it: taken inside the open
        # transaction, so they are gone from the table only when the state they made is.
        self.drain: Drain | None = None
        self._drained = 0  # messages taken by `drain` since the last commit
        # How soon a few waiting messages are committed (FLUSH_BUSY_S once FLUSH_BUSY_ROWS wait).
        self.flush_every_s = FLUSH_EVERY_S
        # Run first in every flush's transaction (several masters: a leader's check that it
        # still leads, a follower's share of the history writers' lock); raising fails it.
        self.guard: Callable[[Connection], None] | None = None
        self._next_drain = 0.0

    def submit(self, message: RawMessage) -> None:
        """Queue one message (called on the paho network thread; blocks only when full)."""
        if self.failure is not None:
            return  # nobody will take it; unacknowledged, the broker keeps it for the next run
        self.queue.put(message)

    def submit_many(self, messages: list[RawMessage]) -> None:
        """Queue a batch in order (the mqtt5 listener's network thread; blocks only when full)."""
        if self.failure is not None:
            return  # nobody will take them; unacknowledged, the broker keeps them
        self.queue.put_many(messages)

    def call_in_writer(self, task: Callable[[Store], None]) -> None:
        """Run `task(store)` on this thread before the next flush (e.g. forget a node)."""
        self._tasks.put(task)
        self._wake()

    def write(self, task: Callable[[Store], T]) -> Future[T]:
        """Run `task(store)` on this thread in the next flush's transaction, soon.

        The future gets the task's result once it is committed. While the store fails, the
        task is rolled back and run again with the retried batch: it must only write.
        """
        future: Future[T] = Future()
        with self._writes_lock:
            self._writes.append((task, future))
        self._wake()  # a write is flushed without waiting
        return future

    def _wake(self) -> None:
        # From this thread itself (an observer, a task) the loop sees the work on its own,
        # and putting into a full inbox would wait for ever on ourselves.
        if threading.current_thread() is not self:
            self.queue.put(None)

    def stop(self) -> None:
        """Finish what is queued, flush, and end the thread."""
        self._stopping.set()
        if self.failure is not None:
            self._drop_queued()
            return
        self.queue.put(None)
        self.join(timeout=10)

    def _drop_queued(self) -> None:
        """After a fatal failure: empty the inbox, so the network thread never blocks on it."""
        try:
            self.queue.take(QUEUE_LIMIT, 0)
        except Exception:  # the inbox may be what failed; the exit comes anyway
            logger.exception("emptying the inbox failed")

    def run(self) -> None:
        """Consume until stopped; survive passing faults, give up on persistent ones."""
        failures = 0
        try:
            while True:
                try:
                    if self._turn():
                        return
                    failures = 0
                except Exception as error:
                    failures += 1
                    self.loop_errors += 1
                    logger.exception("ingest loop failed (%d in a row); going on", failures)
                    if failures >= GIVE_UP_AFTER:
                        self.failure = error
                        logger.critical("ingest gives up after %d failures in a row", failures)
                        self._drop_queued()
                        return
                    time.sleep(LOOP_RETRY_S * failures)
        except BaseException as error:  # not an Exception: nothing to go on with
            self.failure = error
            logger.critical("ingest thread ended: %r", error)
            self._drop_queued()
            raise

    def _turn(self) -> bool:
        """One pass: handle a batch, run tasks, flush when due; True once stopped and drained."""
        self.heartbeat = time.monotonic()
        if not self._batch:
            wait_s = FLUSH_EVERY_S
            if self._pending or self._writes:
                wait_s = min(FLUSH_EVERY_S, max(0.0, self._next_flush_at() - time.monotonic()))
            self._batch.extend(self.queue.take(BATCH_MAX, wait_s))
        taken = len(self._batch)
        if self.batch_dispatch and self._batch:
            self._handle_batch()
            if len(self.ctx.pending_history) >= FLUSH_ROWS and self._store_may_retry():
                self.flush()
        # Popped one at a time, so a failed turn resumes the batch instead of losing the
        # rest of it: every message must be counted once, or the PUBACKs would go astray.
        while self._batch:
            message = self._batch.popleft()
            if message is not None:
                self._handle(message)
                if len(self.ctx.pending_history) >= FLUSH_ROWS and self._store_may_retry():
                    self.flush()
        self._run_tasks()
        self._drain_forwarded()
        if (self._pending or self._writes or self._drained) and (
            time.monotonic() >= self._next_flush_at()
        ):
            self.flush()
        if self._stopping.is_set() and self.queue.empty():
            self.flush()
            return True
        if 0 < taken < BATCH_MAX and not self._stopping.is_set():
            time.sleep(GATHER_S)
        return False

    def _next_flush_at(self) -> float:
        """When the next flush is due (monotonic): queued writes go at once, unless retrying."""
        interval = FLUSH_BUSY_S if self._pending >= FLUSH_BUSY_ROWS else self.flush_every_s
        # What a leader drained is committed in the same turn: a writer task's commit in
        # between would make the rows gone from the table before the state they made is saved.
        due = 0.0 if self._writes or self._drained else self._last_flush + interval
        return max(due, self._retry_at)

    def _store_may_retry(self) -> bool:
        return time.monotonic() >= self._retry_at

    def _handle_batch(self) -> None:
        """Route the whole taken batch at once; each message is counted once, come what may."""
        batch, self._batch = self._batch, deque()
        messages = [message for message in batch if message is not None]
        try:
            self.route(messages, self.ctx, self._failed)
        except Exception as error:  # a bug in the batch path itself: the batch is not retried
            self._failed(messages[0] if messages else None, error)
        finally:
            self._pending += len(messages)

    def _drain_forwarded(self) -> None:
        """A leader: route what followers stored, without storing its history again."""
        drain = self.drain
        if drain is None or time.monotonic() < max(self._next_drain, self._retry_at):
            return
        try:
            messages = drain(self.store.connection)
        except _STORE_TROUBLE:
            # Nothing taken: the rows stay for the next try; the flush reports the outage.
            self._rollback()
            self._next_drain = time.monotonic() + RETRY_MAX_S
            return
        # A full take means more wait: go again on the next turn.
        self._next_drain = 0.0 if len(messages) >= FLUSH_ROWS else time.monotonic() + DRAIN_EVERY_S
        if not messages:
            return
        self.ctx.history_stored = True
        try:
            dispatch_batch(messages, self.ctx, self._failed)
        finally:
            self.ctx.history_stored = False
            self._drained += len(messages)

    def _failed(self, message: RawMessage | None, error: Exception) -> None:
        """A message whose routing raised (a bug, never bad input): log, count, go on."""
        self.dispatch_errors += 1
        logger.exception(
            "dispatch failed on %s", message.topic if message else "a batch", exc_info=error
        )
        if self.ctx.reraise_handler_errors:
            self.crashes.append(error)

    def _handle(self, message: RawMessage) -> None:
        try:
            dispatch(message, self.ctx)
        except Exception as error:  # dispatch handles bad input itself; this is a bug
            self.dispatch_errors += 1
            logger.exception("dispatch failed on %s", message.topic)
            if self.ctx.reraise_handler_errors:
                self.crashes.append(error)
        finally:
            self._pending += 1  # acknowledged with its batch: resending it would fail again

    def _run_tasks(self) -> None:
        while True:
            try:
                task = self._tasks.get_nowait()
            except queue.Empty:
                return
            try:
                if self.guard is not None:
                    self.guard(self.store.connection)
                task(self.store)
                self.store.commit()
            except Exception:
                logger.exception("writer task failed")
                self._rollback()  # or the next flush would commit half of it

    def _rollback(self) -> None:
        try:
            self.store.rollback()
        except Exception:  # nothing was written, or the connection is gone: retry anyway
            logger.exception("rollback failed")

    def _store_failed(
        self,
        error: Exception,
        rows: list[tuple[str, float, Any]],
        dirty: list[str],
        writes: list[Write],
        forwarded: list[Forwarded],
    ) -> None:
        self._rollback()
        state = self.ctx.state
        with state.lock:
            self.ctx.pending_history[:0] = rows
            self.ctx.forwarded[:0] = forwarded
            state.dirty.update(dirty)
        with self._writes_lock:
            self._writes[:0] = writes
        self.store_errors += 1
        self._outage_failures += 1
        if self.store_error is None:  # once per outage, not once per flush
            logger.error(
                "cannot write to the store %s: %s; retrying", self.store.database.name, error
            )
        self.store_error = str(error) or type(error).__name__
        self._last_flush = time.monotonic()
        backoff = min(FLUSH_EVERY_S * 2 ** (self._outage_failures - 1), RETRY_MAX_S)
        self._retry_at = self._last_flush + backoff

    def flush(self) -> None:
        """Write queued history, changed node states and queued writes in one transaction.

        Any failure keeps the whole batch for the next flush and acknowledges nothing, so the
        broker keeps every message for us until the store takes them.
        """
        state = self.ctx.state
        with state.lock:
            rows, self.ctx.pending_history = self.ctx.pending_history, []
            forwarded, self.ctx.forwarded = self.ctx.forwarded, []
            dirty = state.take_dirty()  # also noted as changed for the next listings
            nodes = [node for n in dirty if (node := state.get(n)) is not None]
        with self._writes_lock:
            writes, self._writes = self._writes, []
        outcomes: list[tuple[Any, BaseException | None]] = []
        try:
            # Outside the cluster lock: this thread is the only one that changes node states,
            # and the API's readers must not wait for the disk.
            self._save(nodes, rows, writes, outcomes, forwarded)
        except Exception as error:
            self._store_failed(error, rows, dirty, writes, forwarded)
            return
        if self.store_error is not None:
            logger.warning(
                "the store is writable again; %d batch(es) had failed", self.store_errors
            )
            self.store_error = None
        self._outage_failures, self._retry_at = 0, 0.0
        self._drained = 0
        self.committed += self._pending
        done, self._pending = self._pending, 0
        self._last_flush = time.monotonic()
        for (_, future), (result, failure) in zip(writes, outcomes, strict=True):
            if future.cancelled():
                continue
            if failure is None:
                future.set_result(result)
            else:
                future.set_exception(failure)
        for listener in self.commit_listeners:
            try:
                listener(done)
            except Exception:
                # The batch is stored; an unacknowledged message comes again and is dropped
                # as a duplicate by its seq.
                self.listener_errors += 1
                logger.exception("commit listener %r failed", listener)

    def _save(
        self,
        nodes: list[NodeState],
        rows: list[tuple[str, float, Any]],
        writes: list[Write],
        outcomes: list[tuple[Any, BaseException | None]],
        forwarded: list[Forwarded],
    ) -> None:
        connection = self.store.connection
        if writes and not connection.in_transaction:
            connection.execute("BEGIN")  # so the savepoints below nest in the batch's transaction
        if self.guard is not None:
            self.guard(connection)
        for task, _ in writes:
            outcomes.append(self._run_write(task))
        if nodes:
            self.store.save_nodes(nodes, self.clock())
        committed_ts: list[float] = []
        if rows and self.batch_dispatch:
            committed_ts = insert_history(connection, rows)
        elif rows:
            self.store.append_history(rows)
        if forwarded:
            write_forwarded(connection, forwarded)
        self.store.commit()
        if committed_ts:
            self._tell_commit_observers(committed_ts)

    def _tell_commit_observers(self, committed_ts: list[float]) -> None:
        """What `Store.commit` does for rows of `Store.append_history`: rows written here."""
        for observer in self.store.commit_observers:
            try:
                observer(committed_ts)
            except Exception:
                logger.exception("commit observer failed")

    def _run_write(self, task: Callable[[Store], Any]) -> tuple[Any, BaseException | None]:
        """Run one queued write in a savepoint: a faulty one fails alone, not the batch."""
        connection = self.store.connection
        connection.execute("SAVEPOINT queued_write")
        try:
            result = task(self.store)
        except _STORE_TROUBLE:
            raise  # the store's trouble (disk full, locked): the whole batch is retried
        except Exception as error:
            # The task's own fault (a constraint, a value SQLite cannot bind): retrying
            # would fail the same way for ever and hold up everything behind it.
            connection.execute("ROLLBACK TO queued_write")
            connection.execute("RELEASE queued_write")
            logger.exception("a queued write failed; dropped")
            return None, error
        connection.execute("RELEASE queued_write")
        return result, None

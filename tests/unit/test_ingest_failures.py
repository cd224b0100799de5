"""The ingest thread keeps storing through failures of its own parts, or ends loudly."""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterable, Iterator
from typing import Any

import pytest

from cluster_protocol import Envelope, encode_envelope
from master_service.ingest import ingestor as ingestor_module
from master_service.ingest.counters import IngestCounters
from master_service.ingest.handlers import Context
from master_service.ingest.health import assess
from master_service.ingest.inbox import Inbox
from master_service.ingest.ingestor import GIVE_UP_AFTER, Ingestor
from master_service.ingest.router import RawMessage
from master_service.state import ClusterState, NodeState
from master_service.storage.database import database_errors
from master_service.storage.store import Store
from tests.support.waiting import wait_until


class NodeRowsFailStore(Store):
    """A real SQLite store whose node upserts fail while `failures` is above zero."""

    failures = 0

    def save_nodes(self, states: Iterable[NodeState], now: float) -> None:
        if self.failures:
            self.failures -= 1
            raise sqlite3.OperationalError("database or disk is full")
        super().save_nodes(states, now)


class FullStore(Store):
    """A real store whose commits fail (counted) while `full` is set."""

    full = False
    attempts = 0

    def commit(self) -> None:
        if self.full:
            self.attempts += 1
            raise sqlite3.OperationalError("database or disk is full")
        super().commit()


class FlakyInbox(Inbox[RawMessage | None]):
    """The real inbox, whose `take` fails `failures` times (a bug in the loop's own code)."""

    failures = 0

    def take(self, most: int, timeout_s: float) -> list[RawMessage | None]:
        if self.failures:
            self.failures -= 1
            raise RuntimeError("unexpected")
        return super().take(most, timeout_s)


def metrics(node: str, seq: int) -> RawMessage:
    envelope = Envelope("metrics", node, 1000.0 + seq, seq, {"cpu_percent": float(seq)})
    return RawMessage(f"cluster/{node}/metrics", encode_envelope(envelope), False, time.time())


def read(store: Store, sql: str) -> list[tuple[Any, ...]]:
    """Rows as committed, on a read-only connection of the test's own."""
    db = store.database.connect(read_only=True)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def history(store: Store) -> list[float]:
    return [ts for (ts,) in read(store, "SELECT ts FROM metrics_raw ORDER BY ts")]


@pytest.fixture
def running(db_target: str) -> Iterator[tuple[Ingestor, list[int]]]:
    """A started ingest thread over a real store; the list collects acknowledged counts."""
    ingestor = Ingestor(Context(ClusterState(time.time), IngestCounters()), Store(db_target))
    acked: list[int] = []
    ingestor.commit_listeners.append(acked.append)
    ingestor.start()
    yield ingestor, acked
    ingestor.stop()
    ingestor.store.close()


def test_failing_node_rows_keep_the_batch_and_acknowledge_nothing(db_target, caplog):
    caplog.set_level(logging.ERROR, logger="master_service.ingest.ingestor")
    store = NodeRowsFailStore(db_target)
    ingestor = Ingestor(Context(ClusterState(time.time), IngestCounters()), store)
    acked: list[int] = []
    ingestor.commit_listeners.append(acked.append)
    for seq in range(3):
        ingestor._handle(metrics("nr-1", seq))
    store.failures = 2
    ingestor.flush()
    ingestor.flush()
    assert acked == []
    assert ingestor.store_error == "database or disk is full"
    assert len(caplog.records) == 1  # one error line per outage
    ingestor.flush()
    assert acked == [3]
    assert ingestor.store_error is None
    assert history(store) == [1000.0, 1001.0, 1002.0]
    assert {s.node: s.last_seq for s in store.load_nodes()} == {"nr-1": 2}
    store.close()


def test_a_failing_commit_listener_does_not_stop_the_storing(running, caplog):
    ingestor, acked = running

    def broken(count: int) -> None:
        raise RuntimeError("listener bug")

    ingestor.commit_listeners.insert(0, broken)
    ingestor.submit(metrics("cl-1", 1))
    wait_until(lambda: sum(acked) == 1, message="the first message committed")
    ingestor.submit(metrics("cl-1", 2))
    wait_until(lambda: sum(acked) == 2, message="the second message committed")
    assert ingestor.is_alive()
    assert ingestor.listener_errors >= 2
    assert history(ingestor.store) == [1001.0, 1002.0]
    assert any(r.exc_info for r in caplog.records if "commit listener" in r.getMessage())


def test_an_unexpected_failure_of_the_loop_is_logged_and_the_loop_goes_on(db_target, caplog):
    store = Store(db_target)
    ingestor = Ingestor(Context(ClusterState(time.time), IngestCounters()), store)
    inbox = FlakyInbox(ingestor_module.QUEUE_LIMIT)
    ingestor.queue = inbox
    inbox.failures = 1
    acked: list[int] = []
    ingestor.commit_listeners.append(acked.append)
    ingestor.start()
    try:
        ingestor.submit(metrics("lp-1", 1))
        wait_until(lambda: sum(acked) == 1, message="the message committed after the failure")
        assert ingestor.is_alive()
        assert ingestor.loop_errors == 1
        (record,) = [r for r in caplog.records if "ingest loop failed" in r.getMessage()]
        assert record.exc_info is not None  # with its traceback
    finally:
        ingestor.stop()
        store.close()


def test_a_loop_that_keeps_failing_ends_says_why_and_never_blocks_the_network(db_target):
    store = Store(db_target)
    ingestor = Ingestor(Context(ClusterState(time.time), IngestCounters()), store)
    inbox = FlakyInbox(ingestor_module.QUEUE_LIMIT)
    ingestor.queue = inbox
    inbox.failures = GIVE_UP_AFTER
    ingestor.start()
    ingestor.join(timeout=10)
    assert not ingestor.is_alive()
    assert isinstance(ingestor.failure, RuntimeError)
    health = assess(
        ingest_running=ingestor.is_alive(),
        ingest_silent_s=0.0,
        store_error=None,
        mqtt_connected=True,
        disconnected_s=None,
        keepalive_s=30.0,
        queue_depth=0,
        committed=ingestor.committed,
    )
    assert (health.ok, health.reasons) == (False, ["ingest is not running"])
    # paho's network thread must not block on an inbox nobody empties any more.
    for seq in range(ingestor_module.QUEUE_LIMIT + 10):
        ingestor.submit(metrics("lp-2", seq))
    ingestor.stop()
    store.close()


def test_an_unexpected_dispatch_error_is_counted_not_kept(running):
    ingestor, acked = running
    bad = RawMessage(None, b"{}", False, time.time())  # type: ignore[arg-type]
    ingestor.submit(bad)
    ingestor.submit(metrics("de-1", 1))
    wait_until(lambda: sum(acked) == 2, message="both messages settled")
    assert ingestor.dispatch_errors == 1
    assert ingestor.crashes == []  # a production master keeps no list growing for ever


def test_an_integer_too_large_for_sqlite_stops_nothing(running):
    # Valid JSON, a valid number: SQLite cannot bind it. It once held the whole batch, and
    # every batch after it, out of the store for ever.
    ingestor, acked = running
    huge = RawMessage(
        "cluster/big-1/metrics",
        encode_envelope(Envelope("metrics", "big-1", 1002.0, 2, {"cpu_percent": 2**63})),
        False,
        time.time(),
    )
    ingestor.submit(metrics("big-1", 1))
    ingestor.submit(huge)
    ingestor.submit(metrics("big-1", 3))
    wait_until(lambda: sum(acked) == 3, message="all three committed")
    rows = read(ingestor.store, "SELECT ts, cpu_percent FROM metrics_raw ORDER BY ts")
    assert rows == [(1001.0, 1.0), (1002.0, float(2**63)), (1003.0, 3.0)]


def test_a_faulty_queued_write_fails_alone_and_the_batch_is_stored(running):
    ingestor, acked = running

    def faulty(store: Store) -> None:
        store.connection.execute("INSERT INTO nodes (node) VALUES (?)", ({"not": "bindable"},))

    def good(store: Store) -> int:
        store.connection.execute("CREATE TABLE IF NOT EXISTS marks (x INTEGER)")
        return store.connection.execute("INSERT INTO marks VALUES (1)").rowcount

    ingestor.submit(metrics("qw-1", 1))
    bad_write, good_write = ingestor.write(faulty), ingestor.write(good)
    assert good_write.result(5) == 1
    assert isinstance(bad_write.exception(5), database_errors())
    ingestor.submit(metrics("qw-1", 2))
    wait_until(lambda: sum(acked) == 2, message="both messages committed")
    assert history(ingestor.store) == [1001.0, 1002.0]
    assert read(ingestor.store, "SELECT COUNT(*) FROM marks") == [(1,)]
    assert ingestor.store_error is None  # the store itself was fine all along


def test_retries_back_off_while_the_store_fails_and_resume_when_it_heals(db_target):
    store = FullStore(db_target)
    ingestor = Ingestor(Context(ClusterState(time.time), IngestCounters()), store)
    acked: list[int] = []
    ingestor.commit_listeners.append(acked.append)
    store.full = True
    ingestor.start()
    try:
        started = time.monotonic()
        # More rows than one batch holds: each message past FLUSH_ROWS must not retry at once.
        for seq in range(1, ingestor_module.FLUSH_ROWS * 3):
            ingestor.submit(metrics("bo-1", seq))
        wait_until(lambda: ingestor.queue.empty(), message="every message handled")
        wait_until(lambda: time.monotonic() - started > 3, message="three seconds of outage")
        elapsed = time.monotonic() - started
        # Backing off from 0.1 s to RETRY_MAX_S: a few attempts, not one per message or turn.
        assert 3 <= store.attempts <= 8 + elapsed / ingestor_module.RETRY_MAX_S
        assert acked == []
        store.full = False
        wait_until(lambda: sum(acked) == ingestor_module.FLUSH_ROWS * 3 - 1, 5, message="healed")
        assert len(history(store)) == ingestor_module.FLUSH_ROWS * 3 - 1
    finally:
        ingestor.stop()
        store.close()

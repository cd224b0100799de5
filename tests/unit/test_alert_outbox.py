"""The alert outbox on a real, migrated SQLite file: routing, per-channel queues, write tasks."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import TypeVar

import pytest

from master_service.alerts.model import Notification, NotifyType
from master_service.alerts.outbox import (
    OutboxReader,
    delete_row,
    drop_expired,
    drop_unknown_channels,
    enqueue,
    record_failure,
    wants,
)
from master_service.alerts.settings import Channel
from master_service.storage.database import Engine, database_errors
from master_service.storage.store import Store

T = TypeVar("T")

OPS = Channel("json://ops.example/hook", ("ops",))
PAGER = Channel("json://pager.example/hook", ("pager", "ops"))
PLAIN = Channel("json://plain.example/hook")
CHANNELS = (OPS, PAGER, PLAIN)


def note(title: str = "node-01 is offline", tags: tuple[str, ...] = ()) -> Notification:
    """A notification as the engine makes one."""
    return Notification(title, f"{title}: body", NotifyType.FAILURE, tags)


@pytest.fixture
def reader(store: Store) -> Iterator[OutboxReader]:
    """The read side, on its own read-only connection."""
    reader = OutboxReader(store.database)
    yield reader
    reader.close()


def run(store: Store, task: Callable[[Store], T]) -> T:
    """Run a write task the way the ingest thread does: in a transaction, then commit."""
    future: Future[T] = Future()
    future.set_result(task(store))
    store.commit()
    return future.result()


def put(store: Store, notification: Notification, now: float) -> int:
    """Enqueue for every channel and commit, as the engine's transaction would."""
    return run(store, lambda s: enqueue(s.connection, notification, CHANNELS, now))


def test_untagged_notification_goes_to_every_channel(store: Store, reader: OutboxReader) -> None:
    assert put(store, note(), now=100.0) == 3
    rows = reader.rows()
    assert sorted(row.channel for row in rows) == sorted(c.key for c in CHANNELS)
    row = rows[0]
    assert (row.title, row.body, row.notify_type) == ("node-01 is offline",
                                                      "node-01 is offline: body",
                                                      NotifyType.FAILURE)  # fmt: skip
    assert (row.created, row.next_attempt, row.attempts, row.last_error) == (100.0, 100.0, 0, None)


def test_tags_route_to_the_channels_that_carry_them(store: Store, reader: OutboxReader) -> None:
    assert put(store, note("pager only", ("pager",)), now=1.0) == 1
    assert put(store, note("ops", ("ops",)), now=2.0) == 2
    assert put(store, note("nobody", ("nope",)), now=3.0) == 0
    assert reader.pending_by_channel() == {PAGER.key: 2, OPS.key: 1}
    assert wants(PLAIN, ())
    assert not wants(PLAIN, ("ops",))


def everything_stored(store: Store) -> str:
    """Every row of every table, as text."""
    if store.engine is Engine.SQLITE:
        tables = "SELECT name FROM sqlite_master WHERE type = 'table'"
    else:
        tables = "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
    names = [name for (name,) in store.connection.execute(tables).fetchall()]
    return "\n".join(
        repr(store.connection.execute(f"SELECT * FROM {name}").fetchall()) for name in names
    )


def test_channel_urls_are_not_stored(store: Store) -> None:
    put(store, note(), now=1.0)
    assert "example" not in everything_stored(store)


def test_enqueue_joins_the_callers_transaction(store: Store, reader: OutboxReader) -> None:
    enqueue(store.connection, note(), CHANNELS, 1.0)
    assert reader.rows() == []  # not committed: readers see nothing
    store.rollback()
    assert reader.rows() == []
    assert store.connection.execute("SELECT COUNT(*) FROM alert_outbox").fetchone() == (0,)


def test_only_each_channels_oldest_row_is_due(store: Store, reader: OutboxReader) -> None:
    put(store, note("first"), now=10.0)
    put(store, note("second"), now=11.0)
    assert reader.next_attempt() == 10.0
    assert reader.due(9.0, 10) == []
    due = reader.due(20.0, 10)
    assert [row.title for row in due] == ["first"] * 3
    assert len(reader.due(20.0, 2)) == 2  # the limit holds
    # Delivered to OPS: its second row is next there; the others still wait on their first.
    head = next(row for row in due if row.channel == OPS.key)
    assert run(store, delete_row(head.id)) is True
    assert run(store, delete_row(head.id)) is False
    titles = {row.channel: row.title for row in reader.due(20.0, 10)}
    assert titles == {OPS.key: "second", PAGER.key: "first", PLAIN.key: "first"}


def test_a_failure_holds_back_its_channel_only(store: Store, reader: OutboxReader) -> None:
    put(store, note("first"), now=10.0)
    put(store, note("second"), now=11.0)
    head = next(row for row in reader.due(20.0, 10) if row.channel == PAGER.key)
    run(store, record_failure(head.id, 50.0, "HTTP 500 " + "x" * 1000))
    failed = next(row for row in reader.rows() if row.id == head.id)
    assert failed.attempts == 1
    assert failed.next_attempt == 50.0
    assert failed.last_error is not None
    assert failed.last_error.startswith("HTTP 500")
    assert len(failed.last_error) == 500
    assert {row.channel for row in reader.due(20.0, 10)} == {OPS.key, PLAIN.key}
    assert PAGER.key in {row.channel for row in reader.due(50.0, 10)}
    run(store, record_failure(head.id, 90.0, "again"))
    assert next(row for row in reader.rows() if row.id == head.id).attempts == 2
    assert reader.pending_by_channel()[PAGER.key] == 2


def test_drop_expired_returns_what_it_dropped(store: Store, reader: OutboxReader) -> None:
    put(store, note("old"), now=10.0)
    put(store, note("new"), now=100.0)
    dropped = run(store, drop_expired(50.0))
    assert [row.title for row in dropped] == ["old"] * 3
    assert {row.title for row in reader.rows()} == {"new"}


def test_drop_unknown_channels(store: Store, reader: OutboxReader) -> None:
    put(store, note(), now=10.0)
    put(store, note(), now=11.0)
    assert run(store, drop_unknown_channels([OPS.key])) == {PAGER.key: 2, PLAIN.key: 2}
    assert reader.pending_by_channel() == {OPS.key: 2}
    assert run(store, drop_unknown_channels([])) == {OPS.key: 2}
    assert reader.next_attempt() is None


def test_reader_cannot_write(store: Store, reader: OutboxReader) -> None:
    put(store, note(), now=1.0)
    assert len(reader.rows()) == 3
    with pytest.raises(database_errors(), match=r"readonly|read-only"):
        reader._db().execute("DELETE FROM alert_outbox")
    reader.close()
    assert len(reader.rows()) == 3  # reopens after close

"""The `alert_outbox` table: notifications owed to each channel until it accepts them.

A notification is written here in the same transaction as the alert change that caused it
(`enqueue`), one row per channel, so a crash between deciding and sending loses nothing.
`Delivery` reads the rows on a read-only connection (`OutboxReader`) and changes them only
through write tasks (`delete_row`, `record_failure`, `drop_expired`, `drop_unknown_channels`)
run by the ingest thread, the database's one writer.

Each channel is a queue: only its oldest row (the head) is ever sent, so a channel's messages
arrive in order and a failing one holds back the rows behind it instead of each one being
tried and refused on its own.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, Final

from master_service.alerts.model import Notification, NotifyType
from master_service.alerts.settings import Channel
from master_service.storage.database import Connection, Database, as_database
from master_service.storage.store import Store

_COLUMNS: Final = (
    "id, created, channel, title, body, notify_type, attempts, next_attempt, last_error"
)
# The oldest row of every channel: the only one of each that may be sent next.
_HEADS: Final = "SELECT MIN(id) FROM alert_outbox GROUP BY channel"
LAST_ERROR_MAX: Final = 500  # characters of a failure's reason kept in the row


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One notification owed to one channel (by its key), with its delivery attempts."""

    id: int
    created: float
    channel: str
    title: str
    body: str
    notify_type: NotifyType
    attempts: int
    next_attempt: float
    last_error: str | None


def _row(values: Sequence[Any]) -> OutboxRow:
    (row_id, created, channel, title, body, notify_type, attempts, next_attempt, error) = values
    return OutboxRow(
        id=row_id,
        created=created,
        channel=channel,
        title=title,
        body=body,
        notify_type=NotifyType(notify_type),
        attempts=attempts,
        next_attempt=next_attempt,
        last_error=error,
    )


def wants(channel: Channel, channel_tags: Sequence[str]) -> bool:
    """True when the channel gets a notification routed by these tags (none: every channel)."""
    # The same rule as Channel.wanted_by, which takes a Rule; a Notification carries the tags.
    return not channel_tags or bool(set(channel_tags) & set(channel.tags))


def enqueue(
    connection: Connection,
    notification: Notification,
    channels: Sequence[Channel],
    now: float,
) -> int:
    """Add one row per channel that wants the notification; return how many (no commit)."""
    keys = dict.fromkeys(c.key for c in channels if wants(c, notification.channel_tags))
    connection.executemany(
        "INSERT INTO alert_outbox (created, channel, title, body, notify_type, attempts,"
        " next_attempt, last_error) VALUES (?, ?, ?, ?, ?, 0, ?, NULL)",
        [
            (now, key, notification.title, notification.body, notification.notify_type.value, now)
            for key in keys
        ],
    )
    return len(keys)


def delete_row(row_id: int) -> Callable[[Store], bool]:
    """A write task: remove a delivered (or dropped) row; its result is True if it was there."""

    def task(store: Store) -> bool:
        cursor = store.connection.execute("DELETE FROM alert_outbox WHERE id = ?", (row_id,))
        return cursor.rowcount == 1

    return task


def record_failure(row_id: int, next_attempt: float, error: str) -> Callable[[Store], None]:
    """A write task: count a failed attempt, keep its reason and when to try again."""

    def task(store: Store) -> None:
        store.connection.execute(
            "UPDATE alert_outbox SET attempts = attempts + 1, next_attempt = ?, last_error = ?"
            " WHERE id = ?",
            (next_attempt, error[:LAST_ERROR_MAX], row_id),
        )

    return task


def drop_expired(created_before: float) -> Callable[[Store], list[OutboxRow]]:
    """A write task: delete rows created before the given time; its result is those rows."""

    def task(store: Store) -> list[OutboxRow]:
        rows = store.connection.execute(
            f"SELECT {_COLUMNS} FROM alert_outbox WHERE created < ? ORDER BY id",
            (created_before,),
        ).fetchall()
        store.connection.execute("DELETE FROM alert_outbox WHERE created < ?", (created_before,))
        return [_row(row) for row in rows]

    return task


def drop_unknown_channels(keys: Collection[str]) -> Callable[[Store], dict[str, int]]:
    """A write task: delete rows of channels not in `keys`; its result is rows per channel key."""
    known = tuple(keys)

    def task(store: Store) -> dict[str, int]:
        marks = ", ".join("?" for _ in known)
        where = f"channel NOT IN ({marks})" if known else "TRUE"
        counts = store.connection.execute(
            f"SELECT channel, COUNT(*) FROM alert_outbox WHERE {where} GROUP BY channel", known
        ).fetchall()
        store.connection.execute(f"DELETE FROM alert_outbox WHERE {where}", known)
        return {channel: count for channel, count in counts}

    return task


class OutboxReader:
    """Reads the outbox as committed, on a read-only connection of its own.

    Constructing one does no I/O: the connection opens on the first read. Safe to share
    between threads (one lock around the connection).
    """

    def __init__(self, database: str | Database) -> None:
        self._database = as_database(database)
        self._lock = threading.Lock()
        self._connection: Connection | None = None

    def _db(self) -> Connection:
        """The read-only connection (call with the lock held)."""
        if self._connection is None:
            self._connection = self._database.connect(read_only=True)
        return self._connection

    def _all(self, sql: str, parameters: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            return self._db().execute(sql, parameters).fetchall()

    def due(self, now: float, limit: int) -> list[OutboxRow]:
        """The channels' oldest rows whose next attempt is due, soonest first."""
        rows = self._all(
            f"SELECT {_COLUMNS} FROM alert_outbox WHERE id IN ({_HEADS}) AND next_attempt <= ?"
            " ORDER BY next_attempt, id LIMIT ?",
            (now, limit),
        )
        return [_row(row) for row in rows]

    def next_attempt(self) -> float | None:
        """When the next of the channels' oldest rows is due; None when the outbox is empty."""
        rows = self._all(f"SELECT MIN(next_attempt) FROM alert_outbox WHERE id IN ({_HEADS})")
        value = rows[0][0]
        return None if value is None else float(value)

    def pending_by_channel(self) -> dict[str, int]:
        """Rows waiting per channel key (channels with none are absent)."""
        rows = self._all("SELECT channel, COUNT(*) FROM alert_outbox GROUP BY channel")
        return {channel: count for channel, count in rows}

    def rows(self) -> list[OutboxRow]:
        """Every row, oldest first (for the API and tests)."""
        return [_row(row) for row in self._all(f"SELECT {_COLUMNS} FROM alert_outbox ORDER BY id")]

    def close(self) -> None:
        """Close the read connection (a later read opens it again)."""
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

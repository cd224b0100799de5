"""Metrics a follower stored, kept in `forwarded_metrics` until the leader takes them.

Several masters share a node's metrics (master_service.peers). A follower stores each sample's
history and, in the same transaction, the message itself here; the leader takes the rows in
its own transaction, so every message reaches the leader's live state (seq, gaps, alerts)
exactly once, whichever master the broker gave it to.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from master_service.storage.database import Connection, PostgresConnection

Forwarded = tuple[str, bytes, float]  # topic, payload, received at (the follower's clock)

TAKE_MOST: Final = 1000  # rows taken at once: about one flush's worth

_COLUMNS: Final = "topic, payload, received_at"
_INSERT: Final = f"INSERT INTO forwarded_metrics ({_COLUMNS}) VALUES (?, ?, ?)"
# Oldest first; a row a slower follower commits later, under a lower id, comes next time.
_TAKE: Final = (
    "DELETE FROM forwarded_metrics WHERE id IN "
    "(SELECT id FROM forwarded_metrics ORDER BY id LIMIT ?) "
    f"RETURNING id, {_COLUMNS}"
)


def write_forwarded(connection: Connection, rows: Sequence[Forwarded]) -> None:
    """Keep messages for the leader (in the caller's transaction)."""
    if isinstance(connection, PostgresConnection):
        connection.copy_rows(f"COPY forwarded_metrics ({_COLUMNS}) FROM STDIN", rows)
    else:
        connection.executemany(_INSERT, rows)


def take_forwarded(connection: Connection, most: int = TAKE_MOST) -> list[Forwarded]:
    """Remove and return up to `most` kept messages, oldest first (in the open transaction).

    The removal is undone with the transaction, so a leader that fails before its commit
    leaves them for the next take.
    """
    rows = connection.execute(_TAKE, (most,)).fetchall()
    rows.sort(key=lambda row: row[0])
    return [(topic, bytes(payload), received_at) for _, topic, payload, received_at in rows]

"""The alert tables: alert rows, their history and silences (the outbox is alerts/outbox.py).

Writes run on the ingest thread inside its flush transaction (`save`, `insert_silence`...),
so an alert's change and the notifications it owes commit together with the messages that
caused them. Reads for the API use a read-only connection of their own (`AlertReader`).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, Final

from master_service.alerts.model import Alert, AlertState, Changes, Silence
from master_service.alerts.outbox import enqueue
from master_service.alerts.rules import Severity
from master_service.alerts.settings import Channel
from master_service.storage.database import Connection, insert_returning_id
from master_service.storage.store import Store

_ALERT_COLUMNS: Final = (
    "node, rule, severity, state, since, value, threshold, detail, notified, updated"
)
_ALERT_UPDATES: Final = ", ".join(
    f"{name.strip()} = excluded.{name.strip()}" for name in _ALERT_COLUMNS.split(",")[2:]
)
_HISTORY_COLUMNS: Final = (
    "id, at, node, rule, severity, event, value, threshold, since, message, notified"
)
ENDED_SILENCES_KEPT_S: Final = 7 * 86400.0
HISTORY_KEEP: Final = 10_000
# history_meta keys: per node, the seq gaps already reported by `data_loss` (so a restart in
# the middle of the wait neither forgets nor repeats one).
GAPS_REPORTED: Final = (
    "alerts.gaps_reported."  # events kept; older ones are dropped as new ones come
)


def load_alerts(connection: Connection) -> list[Alert]:
    """Every stored alert row (firing, or with a resolve still owed)."""
    rows = connection.execute(f"SELECT {_ALERT_COLUMNS} FROM alerts").fetchall()
    return [
        Alert(
            node=node,
            rule=rule,
            severity=Severity(severity),
            state=AlertState(state),
            since=since,
            value=value,
            threshold=threshold,
            detail=detail,
            notified=bool(notified),
            updated=updated,
        )
        for (
            node,
            rule,
            severity,
            state,
            since,
            value,
            threshold,
            detail,
            notified,
            updated,
        ) in rows
    ]


def load_gaps_reported(connection: Connection) -> dict[str, int]:
    """Per node, the seq gaps `data_loss` has reported."""
    rows = connection.execute(
        "SELECT key, value FROM history_meta WHERE key LIKE ?", (GAPS_REPORTED + "%",)
    ).fetchall()
    return {key[len(GAPS_REPORTED) :]: int(value) for key, value in rows}


def load_silences(connection: Connection, now: float) -> list[Silence]:
    """Silences that have not ended by `now`."""
    rows = connection.execute(
        "SELECT id, node, rule, starts, ends, comment FROM alert_silences WHERE ends > ?", (now,)
    ).fetchall()
    return [Silence(*row) for row in rows]


def save(store: Store, changes: Changes, channels: Sequence[Channel], now: float) -> int:
    """Write one engine call's changes (a write task); returns the outbox rows added."""
    connection = store.connection
    if changes.deletes:
        connection.executemany(
            "DELETE FROM alerts WHERE node = ? AND rule = ?", sorted(changes.deletes)
        )
    if changes.upserts:
        connection.executemany(
            f"INSERT INTO alerts ({_ALERT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)"
            f" ON CONFLICT (node, rule) DO UPDATE SET {_ALERT_UPDATES}",
            [
                (a.node, a.rule, a.severity.value, a.state.value, a.since, a.value,
                 a.threshold, a.detail, int(a.notified), a.updated)
                for a in changes.upserts.values()
            ],
        )  # fmt: skip
    if changes.events:
        connection.executemany(
            "INSERT INTO alert_history (at, node, rule, severity, event, value, threshold,"
            " since, message, notified) VALUES (?,?,?,?,?,?,?,?,?,?)",
            [
                (e.at, e.node, e.rule, e.severity.value, e.kind.value, e.value, e.threshold,
                 e.since, e.message, int(e.notification is not None))
                for e in changes.events
            ],
        )  # fmt: skip
        connection.execute(
            "DELETE FROM alert_history WHERE id <= (SELECT MAX(id) FROM alert_history) - ?",
            (HISTORY_KEEP,),
        )
    if changes.silences_ended:
        # Ended ones stay a while (DELETE of one that just ended is not "no such silence").
        connection.execute(
            "DELETE FROM alert_silences WHERE ends < ?", (now - ENDED_SILENCES_KEPT_S,)
        )
    for node, count in changes.gaps_reported.items():
        key = GAPS_REPORTED + node
        if count is None:
            connection.execute("DELETE FROM history_meta WHERE key = ?", (key,))
        else:
            connection.execute(
                "INSERT INTO history_meta (key, value) VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, count),
            )
    added = 0
    for event in changes.events:
        if event.notification is not None:
            added += enqueue(connection, event.notification, channels, now)
    for notification in changes.notifications:
        added += enqueue(connection, notification, channels, now)
    return added


def insert_silence(
    store: Store, node: str, rule: str | None, starts: float, ends: float, comment: str
) -> Silence:
    """Store a new silence (a write task); returns it with its id."""
    silence_id = insert_returning_id(
        store.connection,
        "INSERT INTO alert_silences (node, rule, starts, ends, comment) VALUES (?,?,?,?,?)",
        (node, rule, starts, ends, comment),
    )
    return Silence(silence_id, node, rule, starts, ends, comment)


def delete_silence(store: Store, silence_id: int) -> bool:
    """Remove a silence (a write task); True when it existed."""
    cursor = store.connection.execute("DELETE FROM alert_silences WHERE id = ?", (silence_id,))
    return cursor.rowcount == 1


class AlertReader:
    """Reads the alert history on a read-only connection of its own (for the API)."""

    def __init__(self, store: Store) -> None:
        self._lock = threading.Lock()
        self._database = store.database
        self._reader: Connection | None = None

    def history(self, limit: int, node: str | None = None) -> list[dict[str, Any]]:
        """The latest events, newest first, as committed."""
        where, params = ("WHERE node = ?", (node, limit)) if node else ("", (limit,))
        with self._lock:
            if self._reader is None:
                self._reader = self._database.connect(read_only=True)
            rows = self._reader.execute(
                f"SELECT {_HISTORY_COLUMNS} FROM alert_history {where} ORDER BY id DESC LIMIT ?",
                params,
            ).fetchall()
        keys = [name.strip() for name in _HISTORY_COLUMNS.split(",")]
        events = [dict(zip(keys, row, strict=True)) for row in rows]
        for event in events:
            event["notified"] = bool(event["notified"])
        return events

    def close(self) -> None:
        """Close the read connection."""
        with self._lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None

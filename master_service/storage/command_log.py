"""The `commands` table: written in the ingest thread's transactions, read on its own connection.

The master's database has one writer, the ingest thread. Every change here is a task handed
to it (`Writer`, e.g. `Ingestor.write`) and runs in its next flush's transaction; the future
it returns completes once that transaction is committed. Reads for the API use a read-only
connection of their own, which WAL lets run beside the writer.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import asdict, dataclass
from typing import Any, Final, Protocol, TypeVar

from master_service.storage.database import Connection
from master_service.storage.store import Store

T = TypeVar("T")

# The `commands` table is created by the schema migrations (storage/migrations.py).
_COLUMNS: Final = "id, node, command, args, sent_at, expires, status, result, error, replied_at"


class Writer(Protocol):
    """Runs `task(store)` on the writer thread; the future completes once it is committed."""

    def __call__(self, task: Callable[[Store], T]) -> Future[T]:
        """Queue one write task."""
        ...


@dataclass(frozen=True, slots=True)
class CommandRecord:
    """A command as sent, with its reply once there is one."""

    id: str
    node: str
    command: str
    args: dict[str, Any]
    sent_at: float
    expires: float
    status: str
    result: Any = None
    error: str | None = None
    replied_at: float | None = None

    @property
    def ok(self) -> bool | None:
        """True or False once answered; None while pending or after a timeout."""
        return {"ok": True, "error": False}.get(self.status)

    def to_dict(self) -> dict[str, Any]:
        """The record as the API returns it."""
        return {**asdict(self), "ok": self.ok}


def _text(value: Any) -> Any:
    """A node's text as stored: PostgreSQL's text cannot hold NUL, which JSON can carry."""
    return value.replace("\x00", "\ufffd") if isinstance(value, str) else value


def _record(row: tuple[Any, ...]) -> CommandRecord:
    (cid, node, command, args, sent_at, expires, status, result, error, replied_at) = row
    return CommandRecord(
        id=cid,
        node=node,
        command=command,
        args=json.loads(args),
        sent_at=sent_at,
        expires=expires,
        status=status,
        result=None if result is None else json.loads(result),
        error=error,
        replied_at=replied_at,
    )


class CommandLog:
    """Commands and replies in the master's database: writes via `write`, reads read-only.

    Constructing one does no I/O: the read connection opens on the first read, and the table
    exists once the store is open (the schema migrations create it).
    """

    def __init__(self, store: Store, write: Writer) -> None:
        self._write = write
        self._lock = threading.Lock()
        self._database = store.database
        self._reader: Connection | None = None

    def _db(self) -> Connection:
        """The read-only connection (call with the lock held)."""
        if self._reader is None:
            self._reader = self._database.connect(read_only=True)
        return self._reader

    def add(self, record: CommandRecord) -> Future[None]:
        """Store a command about to be sent."""
        values = (
            record.id,
            record.node,
            record.command,
            json.dumps(record.args),
            record.sent_at,
            record.expires,
            record.status,
        )

        def insert(store: Store) -> None:
            store.connection.execute(
                f"INSERT INTO commands ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, NULL, NULL, NULL)",
                values,
            )

        return self._write(insert)

    def answer(self, node: str, reply: Mapping[str, Any], at: float) -> Future[bool]:
        """Store a node's reply to one of its own commands; True if it was; the first wins."""
        status = "ok" if reply.get("ok") is True else "error"
        values = (
            status,
            json.dumps(reply.get("result")),
            _text(reply.get("error")),
            at,
            reply.get("id"),
            node,
        )

        def update(store: Store) -> bool:
            cursor = store.connection.execute(
                "UPDATE commands SET status = ?, result = ?, error = ?, replied_at = ? "
                "WHERE id = ? AND node = ? AND status IN ('pending', 'timeout')",
                values,
            )
            return cursor.rowcount == 1

        return self._write(update)

    def time_out(self, command_id: str) -> Future[None]:
        """Mark a command that got no reply in time (a late reply still replaces this)."""

        def update(store: Store) -> None:
            store.connection.execute(
                "UPDATE commands SET status = 'timeout' WHERE id = ? AND status = 'pending'",
                (command_id,),
            )

        return self._write(update)

    def delete_node(self, node: str) -> Future[None]:
        """Drop a forgotten node's commands."""

        def delete(store: Store) -> None:
            store.connection.execute("DELETE FROM commands WHERE node = ?", (node,))

        return self._write(delete)

    def get(self, command_id: str) -> CommandRecord | None:
        """One command by id, as committed."""
        with self._lock:
            row = (
                self._db()
                .execute(f"SELECT {_COLUMNS} FROM commands WHERE id = ?", (command_id,))
                .fetchone()
            )
        return None if row is None else _record(row)

    def recent(self, node: str, limit: int) -> list[CommandRecord]:
        """A node's latest commands, newest first, as committed."""
        with self._lock:
            rows = (
                self._db()
                .execute(
                    f"SELECT {_COLUMNS} FROM commands WHERE node = ? ORDER BY sent_at DESC LIMIT ?",
                    (node, limit),
                )
                .fetchall()
            )
        return [_record(row) for row in rows]

    def close(self) -> None:
        """Close the read connection."""
        with self._lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None

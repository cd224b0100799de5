"""Commands to nodes: publish `<prefix>/<node>/cmd/<name>`, await the reply, keep both in SQLite."""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

from cluster_protocol import MAX_MESSAGE_BYTES, command_topic
from master_service.ingest.observers import Observer
from master_service.state import ClusterState, NodeStatus

logger = logging.getLogger(__name__)

COMMAND_NAME: Final = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
DEFAULT_TIMEOUT_S: Final = 5.0
MAX_TIMEOUT_S: Final = 120.0
MAX_LISTED: Final = 200

Publish = Callable[[str, bytes, int, bool], None]

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS commands (
    id TEXT PRIMARY KEY,
    node TEXT NOT NULL,
    command TEXT NOT NULL,
    args TEXT NOT NULL,
    sent_at REAL NOT NULL,
    expires REAL NOT NULL,
    status TEXT NOT NULL,          -- pending, ok, error, timeout
    result TEXT,                   -- JSON of the reply's result
    error TEXT,
    replied_at REAL
);
CREATE INDEX IF NOT EXISTS commands_node_sent ON commands (node, sent_at);
"""
_COLUMNS: Final = "id, node, command, args, sent_at, expires, status, result, error, replied_at"


class CommandRefusedError(Exception):
    """The master will not send this command; `status` is the HTTP status that says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


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
    """The `commands` table in the master's database file, on a connection of its own."""

    def __init__(self, path: str) -> None:
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, timeout=10)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

    def add(self, record: CommandRecord) -> None:
        """Store a command about to be sent."""
        with self._lock, self._db:
            self._db.execute(
                f"INSERT INTO commands ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, NULL, NULL, NULL)",
                (
                    record.id,
                    record.node,
                    record.command,
                    json.dumps(record.args),
                    record.sent_at,
                    record.expires,
                    record.status,
                ),
            )

    def answer(self, node: str, reply: Mapping[str, Any], at: float) -> bool:
        """Store a node's reply to one of its own commands; the first reply wins."""
        status = "ok" if reply.get("ok") is True else "error"
        with self._lock, self._db:
            cursor = self._db.execute(
                "UPDATE commands SET status = ?, result = ?, error = ?, replied_at = ? "
                "WHERE id = ? AND node = ? AND status IN ('pending', 'timeout')",
                (
                    status,
                    json.dumps(reply.get("result")),
                    reply.get("error"),
                    at,
                    reply.get("id"),
                    node,
                ),
            )
            return cursor.rowcount == 1

    def time_out(self, command_id: str) -> None:
        """Mark a command that got no reply in time (a late reply still replaces this)."""
        with self._lock, self._db:
            self._db.execute(
                "UPDATE commands SET status = 'timeout' WHERE id = ? AND status = 'pending'",
                (command_id,),
            )

    def get(self, command_id: str) -> CommandRecord | None:
        """One command by id."""
        with self._lock:
            row = self._db.execute(
                f"SELECT {_COLUMNS} FROM commands WHERE id = ?", (command_id,)
            ).fetchone()
        return None if row is None else _record(row)

    def recent(self, node: str, limit: int) -> list[CommandRecord]:
        """A node's latest commands, newest first."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM commands WHERE node = ? ORDER BY sent_at DESC LIMIT ?",
                (node, limit),
            ).fetchall()
        return [_record(row) for row in rows]

    def delete_node(self, node: str) -> None:
        """Drop a forgotten node's commands."""
        with self._lock, self._db:
            self._db.execute("DELETE FROM commands WHERE node = ?", (node,))

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()


class CommandService(Observer):
    """Sends commands and matches replies (delivered by the router on the ingest thread)."""

    def __init__(
        self,
        db_path: str,
        publish: Publish,
        state: ClusterState,
        connected: Callable[[], bool],
        prefix: str = "cluster",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.log = CommandLog(db_path)
        self._publish = publish
        self._state = state
        self._connected = connected
        self._prefix = prefix
        self._clock = clock
        self._waiting: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def send(
        self,
        node: str,
        command: str,
        args: Mapping[str, Any] | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> CommandRecord:
        """Publish one command and wait for its reply; the record says ok, error or timeout."""
        if not COMMAND_NAME.match(command):
            raise CommandRefusedError(422, f"{command!r} is not a command name (a-z, 0-9, _)")
        if not 0 < timeout_s <= MAX_TIMEOUT_S:
            raise CommandRefusedError(422, f"timeout must be in (0, {MAX_TIMEOUT_S:g}] seconds")
        view = self._state.view(node)
        if view is None:
            raise CommandRefusedError(404, f"no node {node!r} is known")
        if view["state"] == NodeStatus.OFFLINE:
            raise CommandRefusedError(409, f"node {node!r} is offline; nothing would receive it")
        if not self._connected():
            raise CommandRefusedError(503, "the master is not connected to the broker")
        now = self._clock()
        # The node refuses the command once the master has stopped waiting for it.
        record = CommandRecord(
            id=uuid.uuid4().hex,
            node=node,
            command=command,
            args=dict(args or {}),
            sent_at=now,
            expires=now + timeout_s,
            status="pending",
        )
        payload = json.dumps(
            {"id": record.id, "args": record.args, "expires": record.expires},
            separators=(",", ":"),
            allow_nan=False,
        ).encode()
        if len(payload) > MAX_MESSAGE_BYTES:
            raise CommandRefusedError(413, f"command is {len(payload)} bytes, over the limit")
        answered = threading.Event()
        with self._lock:
            self._waiting[record.id] = answered
        try:
            self.log.add(record)
            logger.info("sending %s to %s (id %s)", command, node, record.id)
            self._publish(command_topic(node, command, self._prefix), payload, 1, False)
            if not answered.wait(timeout_s):
                self.log.time_out(record.id)
                logger.warning("no reply from %s to %s (id %s)", node, command, record.id)
        finally:
            with self._lock:
                self._waiting.pop(record.id, None)
        stored = self.log.get(record.id)
        assert stored is not None
        return stored

    def recent(self, node: str, limit: int = 20) -> list[CommandRecord]:
        """A node's latest commands and replies, newest first."""
        return self.log.recent(node, max(1, min(limit, MAX_LISTED)))

    def close(self) -> None:
        """Close the database connection."""
        self.log.close()

    # -- Observer (ingest thread): quick ----------------------------------------------------

    def node_reply(self, node: str, reply: Mapping[str, Any]) -> None:
        """Store the reply with its command and wake whoever waits for it."""
        command_id = reply.get("id")
        if not self.log.answer(node, reply, self._clock()):
            logger.warning("reply from %s to unknown or answered command %r", node, command_id)
            return
        with self._lock:
            answered = self._waiting.get(str(command_id))
        if answered is not None:
            answered.set()

    def node_forgotten(self, node: str) -> None:
        """Drop a forgotten node's commands."""
        self.log.delete_node(node)

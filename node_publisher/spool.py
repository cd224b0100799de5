"""The on-disk outbox: envelopes wait here until the broker acknowledges them; also owns `seq`."""

from __future__ import annotations

import logging
import os
import pwd
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

logger = logging.getLogger(__name__)

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY,
    topic TEXT NOT NULL,
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""


# About a dozen samples: each append and each acknowledged delete writes one to three pages.
WAL_CHECKPOINT_PAGES: Final = 64


class SpoolNotWritableError(sqlite3.OperationalError):
    """The spool exists but this process may only read it: nothing could ever be sent."""


@dataclass(frozen=True, slots=True)
class SpooledEnvelope:
    """One encoded envelope waiting for its PUBACK."""

    seq: int
    topic: str
    data: bytes


class Spool:
    """A bounded SQLite outbox (WAL) plus the node's persistent `seq` counter.

    Safe to use from several threads; every method is one short transaction. Only one handle
    per file appends (the agent's); others, like `cluster-node say`, only take seqs.
    """

    def __init__(self, path: Path, max_entries: int) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            path, check_same_thread=False, isolation_level=None, timeout=10.0
        )
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: a power cut must not roll `seq` back, or the master would drop the next
            # envelopes as duplicates of ones it already has.
            self._db.execute("PRAGMA synchronous=FULL")
            # Every commit still syncs the WAL. Checkpointing every WAL_CHECKPOINT_PAGES (not
            # SQLite's 1,000) keeps the WAL within blocks it already has, so that sync need not
            # also journal the file's growth: half the CPU per append (bench/README.md).
            self._db.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
            self._db.executescript(_SCHEMA)
            self._check_writable()
            (newest_seq,) = self._db.execute("SELECT MAX(seq) FROM outbox").fetchone()
        except sqlite3.OperationalError as error:
            self._db.close()
            if _is_readonly(error):
                raise SpoolNotWritableError(_not_writable_message(path)) from error
            raise
        # The outbox asks for what follows its cursor after every append and every PUBACK;
        # in the steady state that is the envelope just appended, or nothing. Both are known
        # here without a query, because this handle is the only one that appends.
        self._max_seq = int(newest_seq or 0)  # no outbox row has a higher seq
        self._newest: SpooledEnvelope | None = None  # the row with seq == _max_seq, if kept
        self._maybe_dropped = True  # False once a take found none; only append drops

    def current_seq(self) -> int:
        """The last seq handed out (0 before the first), without advancing it."""
        with self._lock:
            return self._meta("seq")

    def take_seq(self, build: Callable[[int], bytes]) -> tuple[int, bytes]:
        """Encode `build(seq)` under the next seq without spooling it (e.g. machine_details).

        If `build` raises, seq does not advance.
        """
        with self._lock, self._transaction():
            seq = self._meta("seq") + 1
            data = build(seq)
            self._set_meta("seq", seq)
            return seq, data

    def append(self, topic: str, build: Callable[[int], bytes]) -> int:
        """Spool the envelope `build(seq)` under the next seq; return that seq.

        If `build` raises (oversize, not finite) nothing is stored and seq does not advance.
        When the spool is full, the oldest entries are dropped and counted.
        """
        with self._lock:
            with self._transaction():
                seq = self._meta("seq") + 1
                data = build(seq)
                self._set_meta("seq", seq)
                self._db.execute(
                    "INSERT INTO outbox (seq, topic, data) VALUES (?, ?, ?)", (seq, topic, data)
                )
                (count,) = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()
                excess = int(count) - self.max_entries
                if excess > 0:
                    self._db.execute(
                        "DELETE FROM outbox WHERE seq IN "
                        "(SELECT seq FROM outbox ORDER BY seq LIMIT ?)",
                        (excess,),
                    )
                    self._set_meta("dropped", self._meta("dropped") + excess)
                    self._maybe_dropped = True
                    logger.warning(
                        "spool full (%d): dropped the %d oldest", self.max_entries, excess
                    )
            # Committed: the newest row (never the one a full spool drops, max_entries >= 1).
            self._max_seq = seq
            self._newest = SpooledEnvelope(seq, topic, data)
            return seq

    def pending(self, after_seq: int, limit: int) -> list[SpooledEnvelope]:
        """Up to `limit` envelopes with seq > after_seq, oldest first."""
        with self._lock:
            if after_seq >= self._max_seq or limit == 0:
                return []
            newest = self._newest
            if newest is not None and after_seq == newest.seq - 1:
                return [newest]
            rows = self._db.execute(
                "SELECT seq, topic, data FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
                (after_seq, limit),
            ).fetchall()
        return [SpooledEnvelope(int(seq), str(topic), bytes(data)) for seq, topic, data in rows]

    def remove(self, seq: int) -> None:
        """Forget an envelope the broker acknowledged."""
        with self._lock:
            # Not worth an fsync of its own: a delete lost to a power cut only means the
            # envelope is sent once more, and the master drops it by (node, seq). The next
            # append's FULL commit makes it durable anyway (the WAL is written in order).
            self._db.execute("PRAGMA synchronous=NORMAL")
            try:
                self._db.execute("DELETE FROM outbox WHERE seq = ?", (seq,))
            finally:
                self._db.execute("PRAGMA synchronous=FULL")
            if self._newest is not None and self._newest.seq == seq:
                self._newest = None

    def take_dropped(self) -> int:
        """The number of entries dropped since the last call (reset to 0)."""
        with self._lock:
            # The usual case: nothing dropped since the last take, known without a query.
            if not self._maybe_dropped:
                return 0
            if not self._meta("dropped"):
                self._maybe_dropped = False
                return 0
        with self._lock, self._transaction():
            dropped = self._meta("dropped")
            if dropped:
                self._set_meta("dropped", 0)
            self._maybe_dropped = False
            return dropped

    def __len__(self) -> int:
        with self._lock:
            (count,) = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()
        return int(count)

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    def _check_writable(self) -> None:
        # SQLite opens a file this user can only read (one left by a run as root) read-only
        # without a word, and then every append fails: find out now, so that the agent refuses
        # to start instead of showing "online" with no metrics. The delete matches nothing and
        # is rolled back, but it needs write access.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute("DELETE FROM meta WHERE key = ''")
        finally:
            self._db.execute("ROLLBACK")

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)

    def _meta(self, key: str) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else 0

    def _set_meta(self, key: str, value: int) -> None:
        self._db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on error (another process may share the file)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")


def _is_readonly(error: sqlite3.Error) -> bool:
    code = getattr(error, "sqlite_errorcode", None)
    return code is not None and code & 0xFF == sqlite3.SQLITE_READONLY


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _not_writable_message(path: Path) -> str:
    """What is wrong with an unwritable spool, and the command that fixes it."""
    me = os.geteuid()
    owners = []
    for name in (path.name, f"{path.name}-wal", f"{path.name}-shm"):
        try:
            uid = (path.parent / name).stat().st_uid
        except OSError:
            continue
        if uid != me:
            owners.append(f"{path.parent / name} belongs to {_user_name(uid)}")
    whose = "; ".join(owners) or f"{path} is not writable"
    user = _user_name(me)
    return (
        f"the spool {path} is read-only to {user}, the user this agent runs as ({whose}), so no "
        f"metrics could be sent. A run as another user (e.g. as root after install-node.sh "
        f"--no-systemd) leaves it so. Fix: sudo chown -R {user}: {path.parent} "
        f"(re-running install-node.sh does it too), then start the agent again"
    )

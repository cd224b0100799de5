"""SQLite persistence: node state (so a restarted master still knows every node) and history."""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Final

from cluster_protocol import HISTORY_METRICS as HISTORY_METRICS  # re-exported for readers
from cluster_protocol import metric, metric_value
from master_service.state import NodeState
from master_service.storage.migrations import migrate, refuse_if_too_new

logger = logging.getLogger(__name__)

ROLLUP_STEP_S: Final = 60
"""Width of a rollup bucket: one row per node and minute, averages of the raw samples."""

# Samples a few seconds old may still be on their way to the store: readers take the minutes
# from here on from the raw table.
ROLLUP_GRACE_S: Final = 10.0
META_ROLLED_ROWID: Final = "rollup_rowid"  # raw rows up to this rowid are rolled up
META_ROLLED_UNTIL: Final = "rollup_until"  # the rollup is complete before this time

CommitObserver = Callable[[list[float]], None]
"""Called after each commit with the sender `ts` of every metrics sample it made durable."""

# Inserts name their columns: a file's column order depends on the version that added each.
_COLUMNS: Final = ", ".join(("node", "ts", *HISTORY_METRICS))
_PLACEHOLDERS: Final = ", ".join("?" for _ in range(len(HISTORY_METRICS) + 2))
_INSERT_RAW: Final = f"INSERT INTO metrics_raw ({_COLUMNS}) VALUES ({_PLACEHOLDERS})"
_HISTORY: Final = tuple(metric(key) for key in HISTORY_METRICS)


def history_row(node: str, ts: float, payload: Mapping[str, Any]) -> tuple[Any, ...]:
    """The history columns of one metrics payload (missing or non-numeric values become NULL)."""
    values: list[Any] = [node, ts]
    for m in _HISTORY:
        value = metric_value(m, payload)
        numeric = isinstance(value, int | float) and not isinstance(value, bool)
        values.append(float(value) if numeric and value is not None else None)
    return tuple(values)


def connect(path: str) -> sqlite3.Connection:
    """Open the database (WAL, so readers never block the writer) at the current schema.

    A file written by a newer picluster raises SchemaTooNewError before anything is written.
    """
    refuse_if_too_new(path)
    connection = open_connection(path)
    migrate(connection, path)
    return connection


def open_connection(path: str) -> sqlite3.Connection:
    """Open the database file as it is (WAL, synchronous=FULL), creating its directory."""
    if path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(path, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    # FULL: a commit is on the disk before it returns, and the PUBACKs of a batch go out only
    # after its commit, so a power cut of the head cannot undo what the broker let go of.
    # (NORMAL in WAL mode can roll the last commits back on power loss.) One fsync per flush.
    connection.execute("PRAGMA synchronous=FULL")
    return connection


class Store:
    """The writer side: used from the ingest thread only."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.connection = connect(path)
        self.commit_observers: list[CommitObserver] = []
        self._uncommitted_ts: list[float] = []

    def load_nodes(self) -> Iterator[NodeState]:
        """Every node saved by an earlier run."""
        for (state_json,) in self.connection.execute("SELECT state FROM nodes"):
            record = json.loads(state_json)
            record["missing"] = set(record.get("missing", ()))
            yield NodeState(**record)

    def save_nodes(self, states: Iterable[NodeState], now: float) -> None:
        """Upsert node states (not committed until `commit`)."""
        rows = [(s.node, _state_json(s), now) for s in states]
        self.connection.executemany(
            "INSERT INTO nodes (node, state, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT(node) DO UPDATE SET state=excluded.state, updated_at=excluded.updated_at",
            rows,
        )

    def delete_node(self, node: str) -> None:
        """Forget a node and its history."""
        self.connection.execute("DELETE FROM nodes WHERE node = ?", (node,))
        self.connection.execute("DELETE FROM metrics_raw WHERE node = ?", (node,))
        self.connection.execute("DELETE FROM metrics_1m WHERE node = ?", (node,))
        self._clamp_rolled_rowid()

    def append_history(self, rows: Iterable[tuple[str, float, Mapping[str, Any]]]) -> int:
        """Insert metrics samples; return how many."""
        values = [history_row(node, ts, payload) for node, ts, payload in rows]
        self.connection.executemany(_INSERT_RAW, values)
        if self.commit_observers:
            self._uncommitted_ts.extend(row[1] for row in values)
        return len(values)

    def roll_up(self, now: float, raw_since: float) -> int:
        """Average raw samples added since the last call into 1-minute buckets; return buckets.

        Every minute that received a sample since the last roll-up (late, spooled samples
        included) is recomputed from all its raw samples, so a late sample lands by its `ts`.
        Minutes before `raw_since` (the raw retention) are left alone: their raw rows are gone,
        so a sample that late would replace a full minute's average with itself.
        """
        done = self._meta(META_ROLLED_ROWID, 0.0)
        (last,) = self.connection.execute(
            "SELECT COALESCE(MAX(rowid), 0) FROM metrics_raw"
        ).fetchone()
        if last <= done:
            self._set_meta(META_ROLLED_UNTIL, _minute(now - ROLLUP_GRACE_S))
            return 0
        averages = ", ".join(f"AVG(r.{name})" for name in HISTORY_METRICS)
        cursor = self.connection.execute(
            f"INSERT OR REPLACE INTO metrics_1m (node, ts, samples, {', '.join(HISTORY_METRICS)}) "
            f"SELECT t.node, t.minute, COUNT(*), {averages} FROM ("
            f"  SELECT DISTINCT node, CAST(ts / {ROLLUP_STEP_S} AS INTEGER) * {ROLLUP_STEP_S}"
            "   AS minute FROM metrics_raw WHERE rowid > ? AND rowid <= ? AND ts >= ?"
            ") AS t JOIN metrics_raw AS r "
            f"ON r.node = t.node AND r.ts >= t.minute AND r.ts < t.minute + {ROLLUP_STEP_S} "
            "GROUP BY t.node, t.minute",
            (done, last, raw_since),
        )
        self._set_meta(META_ROLLED_ROWID, float(last))
        self._set_meta(META_ROLLED_UNTIL, _minute(now - ROLLUP_GRACE_S))
        return cursor.rowcount

    def prune(self, raw_before: float, rollup_before: float) -> tuple[int, int]:
        """Delete raw samples and rollup buckets older than the given times; return counts."""
        nodes = [n for (n,) in self.connection.execute("SELECT node FROM nodes")]
        raw = rolled = 0
        # Per node, so each delete walks the (node, ts) index instead of the whole table.
        for node in nodes:
            raw += self.connection.execute(
                "DELETE FROM metrics_raw WHERE node = ? AND ts < ?", (node, raw_before)
            ).rowcount
            rolled += self.connection.execute(
                "DELETE FROM metrics_1m WHERE node = ? AND ts < ?", (node, rollup_before)
            ).rowcount
        self._clamp_rolled_rowid()
        return raw, rolled

    def commit(self) -> None:
        """Make everything written so far durable."""
        self.connection.commit()
        if self._uncommitted_ts:
            committed, self._uncommitted_ts = self._uncommitted_ts, []
            for observer in self.commit_observers:
                try:
                    observer(committed)
                except Exception:
                    logger.exception("commit observer failed")

    def _meta(self, key: str, default: float) -> float:
        row = self.connection.execute(
            "SELECT value FROM history_meta WHERE key = ?", (key,)
        ).fetchone()
        return float(row[0]) if row else default

    def _set_meta(self, key: str, value: float) -> None:
        self.connection.execute(
            "INSERT INTO history_meta (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def _clamp_rolled_rowid(self) -> None:
        # SQLite reuses rowids above the largest one left after a delete: without this,
        # rows inserted after deleting the newest ones could hide below the mark forever.
        (last,) = self.connection.execute(
            "SELECT COALESCE(MAX(rowid), 0) FROM metrics_raw"
        ).fetchone()
        if last < self._meta(META_ROLLED_ROWID, 0.0):
            self._set_meta(META_ROLLED_ROWID, float(last))

    def rollback(self) -> None:
        """Drop what was written since the last commit."""
        self.connection.rollback()

    def close(self) -> None:
        """Commit and close."""
        self.connection.commit()
        self.connection.close()


def _minute(ts: float) -> float:
    return float(int(ts // ROLLUP_STEP_S) * ROLLUP_STEP_S)


def _state_json(state: NodeState) -> str:
    # Every dirty node is saved on every flush: asdict() + json.dumps cost ~100 us per node,
    # NodeState.record_json() about 2 (bench/README.md).
    return state.record_json().decode()

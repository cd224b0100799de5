"""Persistence: node state (so a restarted master still knows every node) and history.

In a SQLite file by default, or in PostgreSQL (storage/database.py says how they differ).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Final

from cluster_protocol import HISTORY_METRICS as HISTORY_METRICS  # re-exported for readers
from cluster_protocol import metric, metric_value
from master_service.state import NodeState
from master_service.storage import migrations, partitions, postgres_schema
from master_service.storage.database import (
    Connection,
    Database,
    Engine,
    as_database,
    engine_of,
    open_sqlite,
)

logger = logging.getLogger(__name__)

ROLLUP_STEP_S: Final = 60
"""Width of a rollup bucket: one row per node and minute, averages of the raw samples."""

# Samples a few seconds old may still be on their way to the store: readers take the minutes
# from here on from the raw table.
ROLLUP_GRACE_S: Final = 10.0
META_ROLLED_ROWID: Final = "rollup_rowid"  # raw rows up to this rowid are rolled up
META_ROLLED_UNTIL: Final = "rollup_until"  # the rollup is complete before this time
HISTORY_WRITERS_LOCK: Final = 0x7069_636C_0003
"""Advisory lock key: held shared by each master's other writers of raw history (followers,
session adoption) while they insert, alone by the roll-up while it reads its mark."""

CommitObserver = Callable[[list[float]], None]
"""Called after each commit with the sender `ts` of every metrics sample it made durable."""

# Inserts name their columns: a file's column order depends on the version that added each.
_COLUMNS: Final = ", ".join(("node", "ts", *HISTORY_METRICS))
_PLACEHOLDERS: Final = ", ".join("?" for _ in range(len(HISTORY_METRICS) + 2))
_INSERT_RAW: Final = (
    f"INSERT INTO metrics_raw ({_COLUMNS}) VALUES ({_PLACEHOLDERS}) ON CONFLICT DO NOTHING"
)
_HISTORY: Final = tuple(metric(key) for key in HISTORY_METRICS)

ROW_ID: Final = {Engine.SQLITE: "rowid", Engine.POSTGRESQL: "id"}
"""The column that numbers metrics_raw's rows in insertion order, per engine."""


def floor_int(connection: Connection, expression: str) -> str:
    """SQL for the whole part of a non-negative `expression`, as an integer.

    SQLite's CAST to INTEGER truncates; PostgreSQL's rounds, so it gets FLOOR first.
    """
    if engine_of(connection) is Engine.POSTGRESQL:
        return f"CAST(FLOOR({expression}) AS BIGINT)"
    return f"CAST({expression} AS INTEGER)"


def history_row(node: str, ts: float, payload: Mapping[str, Any]) -> tuple[Any, ...]:
    """The history columns of one metrics payload (missing or non-numeric values become NULL)."""
    values: list[Any] = [node, ts]
    for m in _HISTORY:
        value = metric_value(m, payload)
        numeric = isinstance(value, int | float) and not isinstance(value, bool)
        values.append(float(value) if numeric and value is not None else None)
    return tuple(values)


def connect(target: str | Database) -> Connection:
    """Open the database at the current schema (SQLite: WAL, so readers never block the writer).

    A database written by a newer picluster raises SchemaTooNewError before anything is
    written; a PostgreSQL that refuses the login raises DatabaseRefusedError, one that cannot
    be reached DatabaseUnavailableError.
    """
    database = as_database(target)
    if database.engine is Engine.POSTGRESQL:
        connection = database.connect()
        try:
            postgres_schema.migrate(connection, database.name)
        except BaseException:
            connection.close()
            raise
        return connection
    migrations.refuse_if_too_new(database.target)
    sqlite = open_sqlite(database.target)
    migrations.migrate(sqlite, database.target)
    return sqlite


class Store:
    """The writer side: used from the ingest thread only."""

    def __init__(self, target: str | Database) -> None:
        self.database = as_database(target)
        self.path = self.database.target
        self.engine = self.database.engine
        self.connection = connect(self.database)
        if self.engine is Engine.POSTGRESQL:
            # Today's partition and the next days' exist before the first sample comes.
            partitions.ensure_partitions(self.connection, time.time())
            self.connection.commit()
        self._row_id = ROW_ID[self.engine]
        self.commit_observers: list[CommitObserver] = []
        self._uncommitted_ts: list[float] = []

    def load_nodes(self) -> Iterator[NodeState]:
        """Every node saved by an earlier run."""
        for (state_json,) in self.connection.execute("SELECT state FROM nodes"):
            yield _node_state(state_json)

    def load_changed_nodes(self, since: float | None) -> tuple[list[NodeState], float | None]:
        """Node states saved at `since` or later (all when None), and the newest save time."""
        sql = "SELECT state, updated_at FROM nodes"
        rows = self.connection.execute(
            *((sql,) if since is None else (sql + " WHERE updated_at >= ?", (since,)))
        ).fetchall()
        states = [_node_state(state_json) for state_json, _ in rows]
        newest = max((float(updated) for _, updated in rows), default=None)
        return states, newest

    def save_nodes(self, states: Iterable[NodeState], now: float) -> None:
        """Upsert node states (not committed until `commit`)."""
        rows = [(s.node, _state_json(s), now) for s in states]
        if not rows:
            return
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
        if self.engine is Engine.POSTGRESQL:
            partitions.ensure_partitions(self.connection, now)  # days ahead, made in time
            # Committed at once: holding the default partition's lock from its ATTACH while
            # prune's DROP waits for a reader of the parent would be a deadlock.
            self.commit()
        # An int: compared with a float, PostgreSQL casts every id and cannot use its index.
        done = int(self._meta(META_ROLLED_ROWID, 0.0))
        row_id = self._row_id
        last = self._last_committed_row()
        if last is None:
            return 0
        if last <= done:
            self._set_meta(META_ROLLED_UNTIL, _minute(now - ROLLUP_GRACE_S))
            return 0
        averages = ", ".join(f"AVG(r.{name})" for name in HISTORY_METRICS)
        updates = ", ".join(f"{name} = excluded.{name}" for name in ("samples", *HISTORY_METRICS))
        minute = floor_int(self.connection, f"ts / {ROLLUP_STEP_S}")
        cursor = self.connection.execute(
            f"INSERT INTO metrics_1m (node, ts, samples, {', '.join(HISTORY_METRICS)}) "
            f"SELECT t.node, t.minute, COUNT(*), {averages} FROM ("
            f"  SELECT DISTINCT node, {minute} * {ROLLUP_STEP_S}"
            f"   AS minute FROM metrics_raw WHERE {row_id} > ? AND {row_id} <= ? AND ts >= ?"
            ") AS t JOIN metrics_raw AS r "
            f"ON r.node = t.node AND r.ts >= t.minute AND r.ts < t.minute + {ROLLUP_STEP_S} "
            f"GROUP BY t.node, t.minute ON CONFLICT (node, ts) DO UPDATE SET {updates}",
            (done, int(last), raw_since),
        )
        self._set_meta(META_ROLLED_ROWID, float(last))
        self._set_meta(META_ROLLED_UNTIL, _minute(now - ROLLUP_GRACE_S))
        return cursor.rowcount

    def _last_committed_row(self) -> int | None:
        """The highest raw row id, once every row up to it is committed (None: not now).

        Several masters insert at once, and an id is given at insert but seen at commit: a
        mark read while another master's insert is open would pass its rows by for ever.
        Every other writer holds HISTORY_WRITERS_LOCK shared while it inserts; taking it
        alone waits them out, and whatever is inserted after gets a higher id.
        """
        sql = f"SELECT COALESCE(MAX({self._row_id}), 0) FROM metrics_raw"
        if self.engine is not Engine.POSTGRESQL:
            return int(self.connection.execute(sql).fetchone()[0])
        import psycopg

        # Not for long: a writer that hangs (a dead head's session, until the server finds
        # it gone) would hold up the roll-up, and behind its wait every other writer too.
        self.connection.execute("SET LOCAL lock_timeout = '2s'")
        try:
            self.connection.execute("SELECT pg_advisory_xact_lock(?)", (HISTORY_WRITERS_LOCK,))
        except psycopg.errors.LockNotAvailable:
            self.rollback()
            logger.info("another master's history insert is open: the roll-up waits a pass")
            return None
        (last,) = self.connection.execute(sql).fetchone()
        self.commit()  # the lock goes with it
        return int(last)

    def prune(self, raw_before: float, rollup_before: float) -> tuple[int, int]:
        """Delete raw samples and rollup buckets older than the given times; return counts."""
        raw = rolled = 0
        if self.engine is Engine.POSTGRESQL:
            # Whole days go as partitions; the rows left are those of the partly-old day.
            raw += partitions.drop_partitions_before(self.connection, raw_before)
        nodes = [n for (n,) in self.connection.execute("SELECT node FROM nodes")]
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
        # (A PostgreSQL sequence never hands a number out twice.)
        if self.engine is not Engine.SQLITE:
            return
        (last,) = self.connection.execute(
            "SELECT COALESCE(MAX(rowid), 0) FROM metrics_raw"
        ).fetchone()
        if last < self._meta(META_ROLLED_ROWID, 0.0):
            self._set_meta(META_ROLLED_ROWID, float(last))

    def rollback(self) -> None:
        """Drop what was written since the last commit (reconnecting to a restarted server)."""
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


def _node_state(state_json: str) -> NodeState:
    """A node state as `save_nodes` stored it."""
    record = json.loads(state_json)
    record["missing"] = set(record.get("missing", ()))
    return NodeState(**record)

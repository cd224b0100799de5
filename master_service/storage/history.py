"""History queries: points of one metric for one node over a time range, raw or rolled up."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from cluster_protocol import HISTORY_METRICS
from cluster_protocol.settings import DEFAULT_INTERVAL_S
from master_service.storage.database import Connection, Database, Engine, as_database, open_sqlite
from master_service.storage.store import META_ROLLED_UNTIL, ROLLUP_STEP_S, floor_int

MAX_POINTS: Final = 2000
"""Without a step, a range that would give more raw points than this is averaged into this many."""
MAX_BUCKETS: Final = 10_000
"""The most points one request may ask for (range / step)."""
# A raw range's size is guessed from the nodes' default interval.
RAW_INTERVAL_GUESS_S: Final = DEFAULT_INTERVAL_S

Point = tuple[float, float | None]


class HistoryQueryError(ValueError):
    """A history request that cannot be answered; the message says what is allowed."""


class Source(StrEnum):
    """Where the points come from."""

    RAW = "raw"  # every sample, kept history_raw_days
    ROLLUP = "rollup"  # 1-minute averages, kept history_rollup_days


@dataclass(frozen=True, slots=True)
class HistoryQuery:
    """One node, one metric, a time range and a bucket size (None: raw points)."""

    node: str
    metric: str
    since: float
    until: float
    step_s: float | None = None

    def __post_init__(self) -> None:
        if self.metric not in HISTORY_METRICS:
            raise HistoryQueryError(
                f"unknown metric {self.metric!r}; allowed: {', '.join(HISTORY_METRICS)}"
            )
        if not (math.isfinite(self.since) and math.isfinite(self.until)):
            raise HistoryQueryError("since and until must be finite Unix times")
        if self.since >= self.until:
            raise HistoryQueryError(f"since ({self.since}) must be before until ({self.until})")
        if self.step_s is not None:
            if not math.isfinite(self.step_s) or self.step_s <= 0:
                raise HistoryQueryError(
                    f"step must be a positive number of seconds, got {self.step_s}"
                )
            if (self.until - self.since) / self.step_s > MAX_BUCKETS:
                least = math.ceil((self.until - self.since) / MAX_BUCKETS)
                raise HistoryQueryError(
                    f"step {self.step_s} s gives more than {MAX_BUCKETS} points over this range;"
                    f" use step >= {least}"
                )


@dataclass(frozen=True, slots=True)
class HistoryResult:
    """The points, the bucket width they were averaged over (None: raw samples), the source."""

    points: list[Point]
    step_s: float | None
    source: Source


def plan(query: HistoryQuery, raw_since: float) -> tuple[float | None, Source]:
    """Pick the step and the table: raw for fine steps within raw retention, else the rollup."""
    span = query.until - query.since
    step = query.step_s
    if step is None and span / RAW_INTERVAL_GUESS_S > MAX_POINTS:
        step = span / MAX_POINTS
    if query.since >= raw_since and (step is None or step < ROLLUP_STEP_S):
        return step, Source.RAW
    return max(step or 0.0, float(ROLLUP_STEP_S), span / MAX_BUCKETS), Source.ROLLUP


def read_history(
    connection: Connection, query: HistoryQuery, raw_since: float = -math.inf
) -> HistoryResult:
    """Answer a query from raw samples or the 1-minute rollup, whichever `plan` picks."""
    step, source = plan(query, raw_since)
    if source == Source.ROLLUP:
        assert step is not None
        return HistoryResult(_from_rollup(connection, query, step), step, source)
    return HistoryResult(_from_raw(connection, query, step), step, source)


def query_history(
    connection: Connection, query: HistoryQuery, raw_since: float = -math.inf
) -> list[Point]:
    """Points `(ts, value)` in time order; averaged per step bucket when a step applies."""
    return read_history(connection, query, raw_since).points


def _from_raw(connection: Connection, query: HistoryQuery, step: float | None) -> list[Point]:
    column = query.metric  # validated against HISTORY_METRICS: safe to place in SQL
    if step is None:
        rows = connection.execute(
            f"SELECT ts, {column} FROM metrics_raw WHERE node = ? AND ts >= ? AND ts < ? "
            "ORDER BY ts",
            (query.node, query.since, query.until),
        ).fetchall()
        return [(float(ts), value) for ts, value in rows]
    bucket = floor_int(connection, "(ts - ?) / ?")
    rows = connection.execute(
        f"SELECT {bucket} AS bucket, AVG({column}) "
        "FROM metrics_raw WHERE node = ? AND ts >= ? AND ts < ? "
        "GROUP BY bucket ORDER BY bucket",
        (query.since, step, query.node, query.since, query.until),
    ).fetchall()
    return [(query.since + bucket * step, value) for bucket, value in rows]


def _from_rollup(connection: Connection, query: HistoryQuery, step: float) -> list[Point]:
    column = query.metric
    row = connection.execute(
        "SELECT value FROM history_meta WHERE key = ?", (META_ROLLED_UNTIL,)
    ).fetchone()
    rolled_until = float(row[0]) if row else 0.0
    # Minutes the retention job has not rolled up yet come from the raw table, so the
    # newest part of a long chart is never missing. Averages are weighted by sample count.
    bucket = floor_int(connection, "(ts - :since) / :step")
    rows = connection.execute(
        "SELECT bucket, SUM(total) / SUM(weight) FROM ("
        f" SELECT {bucket} AS bucket, {column} * samples AS total,"
        f"  CASE WHEN {column} IS NULL THEN NULL ELSE samples END AS weight"
        "  FROM metrics_1m WHERE node = :node AND ts >= :since AND ts < :rolled_end"
        " UNION ALL"
        f" SELECT {bucket}, {column},"
        f"  CASE WHEN {column} IS NULL THEN NULL ELSE 1 END"
        "  FROM metrics_raw WHERE node = :node AND ts >= :raw_start AND ts < :until"
        ") AS points GROUP BY bucket ORDER BY bucket",
        {
            "since": query.since,
            "until": query.until,
            "step": step,
            "node": query.node,
            "rolled_end": min(query.until, rolled_until),
            "raw_start": max(query.since, rolled_until),
        },
    ).fetchall()
    return [(query.since + bucket * step, value) for bucket, value in rows]


def open_reader(target: str | Database) -> Connection:
    """A read-only connection for the API's read side (it reads while the writer writes).

    It never migrates: the Store, opened first, brought the database to the current schema.
    """
    database = as_database(target)
    if database.engine is Engine.POSTGRESQL:
        return database.connect(read_only=True)
    # SQLite: a plain open of the file, with writes refused by query_only.
    connection = open_sqlite(database.target)
    connection.execute("PRAGMA query_only = ON")
    return connection


class HistoryReader:
    """Answers history queries for the API on a few read-only connections, reused.

    A connection is taken for one query and given back. The server's worker threads come and
    go (AnyIO retires idle ones), so connections belong to the reader, not to a thread.
    """

    KEPT: Final = 4
    """Idle connections kept for the next queries; more, opened in a burst, are closed."""

    def __init__(
        self, target: str | Database, raw_days: float, clock: Callable[[], float] = time.time
    ) -> None:
        self.database = as_database(target)
        self.raw_retention_s = raw_days * 86400.0
        self.clock = clock
        self._idle: list[Connection] = []
        self._lock = threading.Lock()
        self._closed = False

    def read(self, query: HistoryQuery) -> HistoryResult:
        """Answer one query (raw samples still kept are newer than now - history_raw_days)."""
        with self._lock:
            connection = self._idle.pop() if self._idle else None
        if connection is None:
            connection = open_reader(self.database)
        try:
            return read_history(connection, query, self.clock() - self.raw_retention_s)
        finally:
            self._give_back(connection)

    def _give_back(self, connection: Connection) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < self.KEPT:
                self._idle.append(connection)
                return
        connection.close()

    def close(self) -> None:
        """Close the idle connections; one in use is closed when its query ends."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

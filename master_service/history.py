"""History queries: points of one metric for one node over a time range."""

from __future__ import annotations

import math
import sqlite3
from dataclasses import dataclass
from typing import Final

from master_service.store import HISTORY_METRICS, connect

MAX_POINTS: Final = 2000


class HistoryQueryError(ValueError):
    """A history request that cannot be answered; the message says what is allowed."""


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
        if self.step_s is not None and self.step_s <= 0:
            raise HistoryQueryError(f"step must be a positive number of seconds, got {self.step_s}")


def query_history(
    connection: sqlite3.Connection, query: HistoryQuery
) -> list[tuple[float, float | None]]:
    """Points `(ts, value)` in time order; averaged per `step_s` bucket when a step is set."""
    column = query.metric  # validated against HISTORY_METRICS: safe to place in SQL
    step = query.step_s
    if step is None and (query.until - query.since) / 10.0 > MAX_POINTS:
        step = (query.until - query.since) / MAX_POINTS
    if step is None:
        rows = connection.execute(
            f"SELECT ts, {column} FROM metrics_raw WHERE node = ? AND ts >= ? AND ts < ? "
            "ORDER BY ts",
            (query.node, query.since, query.until),
        ).fetchall()
    else:
        rows = connection.execute(
            f"SELECT CAST((ts - ?) / ? AS INTEGER) AS bucket, AVG({column}) "
            "FROM metrics_raw WHERE node = ? AND ts >= ? AND ts < ? "
            "GROUP BY bucket ORDER BY bucket",
            (query.since, step, query.node, query.since, query.until),
        ).fetchall()
        rows = [(query.since + bucket * step, value) for bucket, value in rows]
    return [(float(ts), value) for ts, value in rows]


def open_reader(path: str) -> sqlite3.Connection:
    """A connection for the API's read side (WAL lets it read while the writer writes)."""
    return connect(path)

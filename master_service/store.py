"""SQLite persistence: node state (so a restarted master still knows every node) and history."""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any, Final

from master_service.state import NodeState

logger = logging.getLogger(__name__)

HISTORY_METRICS: Final = (
    "cpu_percent",
    "memory_percent",
    "swap_percent",
    "load_1",
    "temperature_celsius",
    "net_rx_bytes_per_s",
    "net_tx_bytes_per_s",
    "disk_read_bytes_per_s",
    "disk_write_bytes_per_s",
    "root_disk_percent",
)
"""Metrics kept in history, one column each."""

_SCHEMA: Final = f"""
CREATE TABLE IF NOT EXISTS nodes (
    node TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS metrics_raw (
    node TEXT NOT NULL,
    ts REAL NOT NULL,
    {", ".join(f"{name} REAL" for name in HISTORY_METRICS)}
);
CREATE INDEX IF NOT EXISTS metrics_raw_node_ts ON metrics_raw (node, ts);
"""


def history_row(node: str, ts: float, payload: Mapping[str, Any]) -> tuple[Any, ...]:
    """The history columns of one metrics payload (missing or non-numeric values become NULL)."""
    values: list[Any] = [node, ts]
    for name in HISTORY_METRICS:
        value = root_disk_percent(payload) if name == "root_disk_percent" else payload.get(name)
        numeric = isinstance(value, int | float) and not isinstance(value, bool)
        values.append(float(value) if numeric and value is not None else None)
    return tuple(values)


def root_disk_percent(payload: Mapping[str, Any]) -> float | None:
    """Percent used of the disk mounted at '/', if the payload has it."""
    disks = payload.get("disks")
    for disk in disks if isinstance(disks, list) else ():
        if isinstance(disk, dict) and disk.get("mount") == "/":
            percent = disk.get("percent")
            return float(percent) if isinstance(percent, int | float) else None
    return None


def connect(path: str) -> sqlite3.Connection:
    """Open the database (WAL, so readers never block the writer) and create the schema."""
    if path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(path, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.executescript(_SCHEMA)
    return connection


class Store:
    """The writer side: used from the ingest thread only."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.connection = connect(path)

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

    def append_history(self, rows: Iterable[tuple[str, float, Mapping[str, Any]]]) -> int:
        """Insert metrics samples; return how many."""
        values = [history_row(node, ts, payload) for node, ts, payload in rows]
        placeholders = ", ".join("?" for _ in range(len(HISTORY_METRICS) + 2))
        self.connection.executemany(f"INSERT INTO metrics_raw VALUES ({placeholders})", values)
        return len(values)

    def commit(self) -> None:
        """Make everything written so far durable."""
        self.connection.commit()

    def close(self) -> None:
        """Commit and close."""
        self.connection.commit()
        self.connection.close()


def _state_json(state: NodeState) -> str:
    record = asdict(state)
    record["missing"] = sorted(state.missing)
    return json.dumps(record, separators=(",", ":"))

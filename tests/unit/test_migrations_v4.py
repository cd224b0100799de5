"""Schema version 3 to 4: a database of the release before tags gains an empty `node_tags`
table, keeps its nodes and alerts, is copied to `<db>.bak-v3` first, and its nodes start
untagged on the master (their own tags come with their next details)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from master_service.app import build
from master_service.settings import MasterSettings
from master_service.storage.migrations import MIGRATIONS, SCHEMA_VERSION
from master_service.storage.node_tags import load_node_tags
from master_service.storage.store import Store

T0 = 1_764_600_000.0


def write_v3(path: Path) -> None:
    """A database as version 3 left it: versions 1 to 3's statements, a node and an alert."""
    connection = sqlite3.connect(path)
    try:
        for migration in MIGRATIONS[:3]:
            for statement in migration.statements:
                connection.execute(statement)
        state = {"node": "pi-01", "status": "online", "last_heard": T0, "details": {
            "hostname": "pi-01", "cpu_percent_used": 1.0, "ram": 1, "cpu": "arm", "cpu_cores": 4,
        }}  # fmt: skip
        connection.execute(
            "INSERT INTO nodes (node, state, updated_at) VALUES (?, ?, ?)",
            ("pi-01", json.dumps(state), T0),
        )
        connection.execute(
            "INSERT INTO alerts VALUES ('pi-01', 'temperature', 'warning', 'firing', ?, 85, 80,"
            " 'hot', 1, ?)",
            (T0, T0),
        )
        connection.execute("PRAGMA user_version = 3")
        connection.commit()
    finally:
        connection.close()


def tables(path: Path) -> set[str]:
    connection = sqlite3.connect(f"{path.as_uri()}?immutable=1", uri=True)
    try:
        found = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        return {name for (name,) in found}
    finally:
        connection.close()


@pytest.fixture
def v3_db(tmp_path: Path) -> Path:
    path = tmp_path / "master.db"
    write_v3(path)
    return path


def test_a_v3_file_gains_an_empty_node_tags_table_and_keeps_the_rest(v3_db: Path) -> None:
    assert SCHEMA_VERSION >= 4
    assert "node_tags" not in tables(v3_db)
    store = Store(str(v3_db))
    try:
        assert store.connection.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        assert load_node_tags(store) == {}
        assert [node.node for node in store.load_nodes()] == ["pi-01"]
        alerts = store.connection.execute("SELECT node, rule, state FROM alerts").fetchall()
        assert alerts == [("pi-01", "temperature", "firing")]
    finally:
        store.close()
    backup = v3_db.with_name("master.db.bak-v3")
    assert "node_tags" not in tables(backup)  # the copy is the file as it was


def test_a_master_on_the_upgraded_file_stores_and_reloads_tags(v3_db: Path) -> None:
    settings = MasterSettings(db=str(v3_db), ha_discovery=False)
    master = build(settings, clock=lambda: T0)
    try:
        master.ingestor.start()  # the writer: tag changes go through it
        assert master.node_tags.add("pi-01", "gpu") is True
        assert master.node_tags.add("pi-01", "gpu") is False  # already had it
        view = master.state.view("pi-01")
        assert view is not None
        assert view["master_tags"] == ["gpu"]
    finally:
        master.stop()
    master = build(settings, clock=lambda: T0)
    try:
        view = master.state.view("pi-01")
        assert view is not None
        assert view["tags"] == ["gpu"]
    finally:
        master.store.close()

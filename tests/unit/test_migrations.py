"""Schema versions: a file from the release before versions upgrades with its history intact,
a file from a newer release is refused untouched."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster_protocol import HISTORY_METRICS, METRICS
from master_service.storage.command_log import _COLUMNS
from master_service.storage.history import HistoryQuery, Source, read_history
from master_service.storage.migrations import (
    MIGRATIONS,
    SCHEMA_VERSION,
    V1_HISTORY_COLUMNS,
    SchemaTooNewError,
    history_columns,
)
from master_service.storage.store import Store

FIXTURE = Path(__file__).parents[1] / "fixtures" / "db" / "master-v1.sqlite"
T0 = 1_764_000_000.0  # as in tests/fixtures/db/make_master_v1.py
V1_COLUMNS = (
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


def rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    """Rows read with a plain connection (not the store's), closed at once."""
    connection = sqlite3.connect(path)
    try:
        return connection.execute(sql).fetchall()
    finally:
        connection.close()


def columns(path: Path, table: str) -> list[str]:
    return [str(row[1]) for row in rows(path, f"PRAGMA table_info({table})")]


@pytest.fixture
def v1_db(tmp_path: Path) -> Path:
    """A copy of the committed v1 fixture (the fixture itself is never opened for writing)."""
    copy = tmp_path / "master.db"
    shutil.copyfile(FIXTURE, copy)
    return copy


@pytest.fixture
def upgraded(v1_db: Path) -> Iterator[Store]:
    store = Store(str(v1_db))
    yield store
    store.close()


def test_the_fixture_is_what_the_release_before_versions_wrote() -> None:
    assert rows(FIXTURE, "PRAGMA user_version") == [(0,)]
    assert columns(FIXTURE, "metrics_raw") == ["node", "ts", *V1_COLUMNS]
    assert rows(FIXTURE, "SELECT COUNT(*) FROM metrics_raw") == [(90,)]


def test_an_old_database_is_upgraded_with_every_history_row_intact(
    v1_db: Path, upgraded: Store
) -> None:
    v1 = ", ".join(("node", "ts", *V1_COLUMNS))
    for table, order in (("metrics_raw", "rowid"), ("metrics_1m", "node, ts")):
        before = rows(FIXTURE, f"SELECT {v1} FROM {table} ORDER BY {order}")
        after = upgraded.connection.execute(f"SELECT {v1} FROM {table} ORDER BY {order}")
        assert after.fetchall() == before, table
    meta = "SELECT key, value FROM history_meta ORDER BY key"
    assert upgraded.connection.execute(meta).fetchall() == rows(FIXTURE, meta)
    assert upgraded.connection.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)


def test_an_upgraded_database_has_every_history_column_and_old_rows_lack_only_new_ones(
    upgraded: Store,
) -> None:
    for table in ("metrics_raw", "metrics_1m"):
        names = [r[1] for r in upgraded.connection.execute(f"PRAGMA table_info({table})")]
        assert set(HISTORY_METRICS) <= set(names), table
    for name in HISTORY_METRICS:
        if name in V1_COLUMNS:
            continue
        (filled,) = upgraded.connection.execute(f"SELECT COUNT({name}) FROM metrics_raw").fetchone()
        assert filled == 0, f"{name} has values nobody sent"


def test_after_the_upgrade_the_master_knows_the_nodes_and_serves_their_history(
    upgraded: Store,
) -> None:
    nodes = {state.node: state for state in upgraded.load_nodes()}
    assert sorted(nodes) == ["pi-01", "pi-02", "pi-03"]
    assert nodes["pi-02"].metrics is not None
    assert nodes["pi-02"].metrics["cpu_percent"] == 10.0 + 29

    raw = read_history(upgraded.connection, HistoryQuery("pi-02", "cpu_percent", T0, T0 + 300))
    assert raw.source == Source.RAW
    assert raw.points == [(T0 + 10 * i, 10.0 + i) for i in range(30)]
    rolled = read_history(
        upgraded.connection, HistoryQuery("pi-01", "cpu_percent", T0, T0 + 300, 60), T0 + 3600
    )
    assert rolled.source == Source.ROLLUP
    assert rolled.points == [(T0 + 60 * m, 6 * m + 2.5) for m in range(5)]


def test_the_upgraded_store_keeps_writing_and_rolling_up(upgraded: Store) -> None:
    sample = {"cpu_percent": 7.0, "disks": [{"mount": "/", "percent": 50.0}]}
    upgraded.append_history([("pi-01", T0 + 300, sample)])
    assert upgraded.roll_up(now=T0 + 400, raw_since=0.0) == 1
    upgraded.commit()
    row = upgraded.connection.execute(
        "SELECT cpu_percent, root_disk_percent FROM metrics_1m WHERE node = 'pi-01' AND ts = ?",
        (T0 + 300,),
    ).fetchone()
    assert row == (7.0, 50.0)


def test_a_copy_of_the_old_file_is_kept_before_the_upgrade(v1_db: Path, upgraded: Store) -> None:
    backup = Path(f"{v1_db}.bak-v1")
    if SCHEMA_VERSION == 1:
        pytest.skip("no upgrade beyond version 1 yet: a v1 file is only stamped")
    assert rows(backup, "PRAGMA user_version") == [(0,)]
    assert columns(backup, "metrics_raw") == ["node", "ts", *V1_COLUMNS]
    everything = "SELECT * FROM metrics_raw ORDER BY rowid"
    assert rows(backup, everything) == rows(FIXTURE, everything)


def test_an_up_to_date_database_is_opened_without_a_new_copy(v1_db: Path) -> None:
    Store(str(v1_db)).close()
    copies = sorted(p.name for p in v1_db.parent.iterdir() if ".bak-" in p.name)
    Store(str(v1_db)).close()
    assert sorted(p.name for p in v1_db.parent.iterdir() if ".bak-" in p.name) == copies


def test_a_new_database_gets_the_same_columns_as_an_upgraded_one(
    tmp_path: Path, v1_db: Path
) -> None:
    fresh = tmp_path / "fresh.db"
    Store(str(fresh)).close()
    Store(str(v1_db)).close()
    assert rows(fresh, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    for table in ("metrics_raw", "metrics_1m"):
        assert columns(fresh, table) == columns(v1_db, table)


def test_versions_are_contiguous_and_each_adds_something() -> None:
    assert [m.version for m in MIGRATIONS] == list(range(1, SCHEMA_VERSION + 1))
    assert all(m.statements for m in MIGRATIONS)
    assert V1_HISTORY_COLUMNS == V1_COLUMNS  # version 1 is history: never edit it
    since_1 = {m.key for m in METRICS if m.history_since == 1}
    assert since_1 == set(history_columns(1))
    assert all(m.history_since is None or 1 <= m.history_since <= SCHEMA_VERSION for m in METRICS)


@pytest.fixture
def newer_db(tmp_path: Path) -> Path:
    """A database a newer picluster wrote: rollback journal, user_version one ahead."""
    path = tmp_path / "newer.db"
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE metrics_raw (node TEXT, ts REAL, cpu_percent REAL)")
    connection.execute("INSERT INTO metrics_raw VALUES ('pi-01', 1.0, 2.0)")
    connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    connection.commit()
    connection.close()
    return path


def test_a_database_from_a_newer_release_is_refused_and_left_byte_identical(
    newer_db: Path,
) -> None:
    before = newer_db.read_bytes()

    with pytest.raises(SchemaTooNewError) as refused:
        Store(str(newer_db))

    message = str(refused.value)
    assert f"schema version {SCHEMA_VERSION + 1}" in message
    assert f"up to {SCHEMA_VERSION}" in message
    assert str(newer_db) in message
    assert newer_db.read_bytes() == before
    assert sorted(p.name for p in newer_db.parent.iterdir()) == ["newer.db"]


def command_columns() -> list[str]:
    """The columns the command log reads and writes."""
    return [name.strip() for name in _COLUMNS.split(",")]


def test_a_new_and_an_upgraded_database_both_hold_the_commands_table(
    tmp_path: Path, v1_db: Path
) -> None:
    fresh = tmp_path / "fresh.db"
    assert columns(v1_db, "commands") == []  # the v1 fixture never ran a command log
    Store(str(fresh)).close()
    Store(str(v1_db)).close()

    for path in (fresh, v1_db):
        assert columns(path, "commands") == command_columns(), path
        indexes = rows(path, "SELECT name FROM sqlite_master WHERE tbl_name = 'commands'")
        assert ("commands_node_sent",) in indexes, path


def test_a_v1_file_whose_master_made_the_commands_table_keeps_its_commands(v1_db: Path) -> None:
    # A v1 master created the table itself at start: the upgrade must neither fail on it nor
    # lose what the command history holds.
    connection = sqlite3.connect(v1_db)
    connection.execute(f"CREATE TABLE commands ({', '.join(command_columns())})")
    connection.execute(
        "INSERT INTO commands VALUES ('c1', 'pi-01', 'reboot', '{}', ?, ?, 'ok', NULL, NULL, ?)",
        (T0, T0 + 30, T0 + 2),
    )
    connection.commit()
    connection.close()

    Store(str(v1_db)).close()

    assert rows(v1_db, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert rows(v1_db, "SELECT id, node, status FROM commands") == [("c1", "pi-01", "ok")]

"""Schema version 2 to the current one: a file the previous release wrote is upgraded with its
nodes, history (cpu_freq_mhz included) and command log intact, gains the (empty) alert tables,
is copied to `<db>.bak-v2` first, and is left alone when opened again."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import TypeVar

import pytest

from master_service.storage.command_log import CommandLog
from master_service.storage.history import HistoryQuery, Source, read_history
from master_service.storage.migrations import SCHEMA_VERSION, V1_HISTORY_COLUMNS, migrate
from master_service.storage.store import Store

FIXTURE = Path(__file__).parents[1] / "fixtures" / "db" / "master-v2.sqlite"
# As in tests/fixtures/db/make_master_v2.py:
T0 = 1_764_600_000.0
NODES = ("pi-01", "pi-02", "pi-03")
SAMPLES = 30  # every 10 s per node
ROLLED_MINUTES = 4  # the 5th minute is raw only

# Version 2's history columns, in the order that release's files hold them: frozen.
V2_COLUMNS = (*V1_HISTORY_COLUMNS, "cpu_freq_mhz")
ALERT_TABLES = ("alerts", "alert_history", "alert_outbox", "alert_silences")
T = TypeVar("T")


def rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    """Rows read with a plain connection (not the store's), closed at once."""
    connection = sqlite3.connect(path)
    try:
        return connection.execute(sql).fetchall()
    finally:
        connection.close()


def fixture_rows(sql: str) -> list[tuple[object, ...]]:
    """Rows of the committed fixture, opened immutable: no -wal/-shm beside it, no writes."""
    connection = sqlite3.connect(f"{FIXTURE.as_uri()}?immutable=1", uri=True)
    try:
        return connection.execute(sql).fetchall()
    finally:
        connection.close()


def dump(path: Path) -> list[str]:
    """Every table's schema and rows as SQL text."""
    connection = sqlite3.connect(f"{path.as_uri()}?immutable=1", uri=True)
    try:
        return list(connection.iterdump())
    finally:
        connection.close()


def columns(path: Path, table: str) -> list[str]:
    return [str(row[1]) for row in rows(path, f"PRAGMA table_info({table})")]


def tables(path: Path) -> set[str]:
    return {
        str(name) for (name,) in rows(path, "SELECT name FROM sqlite_master WHERE type='table'")
    }


def backups(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".bak-" in p.name)


def sample_row(node_index: int, i: int) -> tuple[object, ...]:
    """The raw row the generator wrote: node, ts and every version-2 column, exact."""
    bare = node_index == 2  # pi-03: no sensor, no swap, no clock reading
    return (
        NODES[node_index],
        T0 + 10 * i,
        10.0 * node_index + i,
        40.0 + node_index,
        None if bare else 1.5,
        0.25 * i,
        None if bare else 45.0 + i / 10,
        1000.0 * i,
        500.0 * i,
        4096.0,
        8192.0 * node_index,
        37.0,
        None if bare else 600.0 + 100.0 * (i % 10) + 200.0 * node_index,
    )


@pytest.fixture
def v2_db(tmp_path: Path) -> Path:
    """A copy of the committed v2 fixture (the fixture itself is never opened for writing)."""
    copy = tmp_path / "master.db"
    shutil.copyfile(FIXTURE, copy)
    return copy


@pytest.fixture
def upgraded(v2_db: Path) -> Iterator[Store]:
    store = Store(str(v2_db))
    yield store
    store.close()


def test_the_fixture_is_what_the_last_version_2_release_wrote() -> None:
    assert fixture_rows("PRAGMA user_version") == [(2,)]
    for table in ("metrics_raw", "metrics_1m"):
        names = [str(row[1]) for row in fixture_rows(f"PRAGMA table_info({table})")]
        assert [n for n in names if n != "samples"] == ["node", "ts", *V2_COLUMNS], table
    assert fixture_rows("SELECT COUNT(*), COUNT(cpu_freq_mhz) FROM metrics_raw") == [(90, 60)]
    assert fixture_rows("SELECT COUNT(*) FROM metrics_1m") == [(3 * ROLLED_MINUTES,)]
    assert fixture_rows("SELECT node FROM nodes ORDER BY node") == [(n,) for n in NODES]
    assert fixture_rows("SELECT COUNT(*) FROM commands") == [(3,)]
    objects = {name for (name,) in fixture_rows("SELECT name FROM sqlite_master")}
    assert not objects & set(ALERT_TABLES)


def test_opening_a_v2_file_upgrades_it_to_the_current_version(v2_db: Path, upgraded: Store) -> None:
    assert SCHEMA_VERSION >= 3
    assert upgraded.connection.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    # Every table a new database has, with the same columns: nothing of version 3 is missing.
    fresh = v2_db.parent / "fresh.db"
    Store(str(fresh)).close()
    assert tables(v2_db) == tables(fresh)
    for table in tables(fresh):
        assert columns(v2_db, table) == columns(fresh, table), table


def test_every_history_row_and_value_survives_the_upgrade(upgraded: Store) -> None:
    v2 = ", ".join(("node", "ts", *V2_COLUMNS))
    for table, extra, order in (
        ("metrics_raw", "", "rowid"),
        ("metrics_1m", ", samples", "node, ts"),
    ):
        sql = f"SELECT {v2}{extra} FROM {table} ORDER BY {order}"
        after = upgraded.connection.execute(sql).fetchall()
        assert after == fixture_rows(sql), table
    meta = "SELECT key, value FROM history_meta ORDER BY key"
    assert upgraded.connection.execute(meta).fetchall() == fixture_rows(meta)

    # The values themselves, exact, as the previous release's nodes sent them.
    raw = upgraded.connection.execute(f"SELECT {v2} FROM metrics_raw ORDER BY node, ts")
    expected = [sample_row(n, i) for n in range(len(NODES)) for i in range(SAMPLES)]
    assert raw.fetchall() == expected


def test_the_upgraded_master_serves_old_history_including_the_cpu_clock(upgraded: Store) -> None:
    def points(node: str, metric: str, step: float | None = None) -> list[tuple[float, object]]:
        query = HistoryQuery(node, metric, T0, T0 + 300, step)
        result = read_history(upgraded.connection, query, raw_since=T0 + 3600 if step else 0.0)
        assert result.source == (Source.ROLLUP if step else Source.RAW)
        return [(ts, value) for ts, value in result.points]

    clock = [(T0 + 10 * i, 800.0 + 100.0 * (i % 10)) for i in range(SAMPLES)]
    assert points("pi-02", "cpu_freq_mhz") == clock
    assert points("pi-03", "cpu_freq_mhz") == [(T0 + 10 * i, None) for i in range(SAMPLES)]
    assert points("pi-02", "temperature_celsius") == [
        (T0 + 10 * i, 45.0 + i / 10) for i in range(SAMPLES)
    ]

    # Per minute: the first 4 from the old rollup, the 5th from raw (never rolled up).
    minutes = points("pi-01", "cpu_freq_mhz", 60)
    assert [ts for ts, _ in minutes] == [T0 + 60 * m for m in range(5)]
    averages = [
        sum(600.0 + 100.0 * (i % 10) for i in range(6 * m, 6 * m + 6)) / 6 for m in range(5)
    ]
    assert [value for _, value in minutes] == pytest.approx(averages)


def test_every_node_and_its_saved_state_survives_the_upgrade(upgraded: Store) -> None:
    saved = "SELECT node, state, updated_at FROM nodes ORDER BY node"
    assert upgraded.connection.execute(saved).fetchall() == fixture_rows(saved)

    nodes = {state.node: state for state in upgraded.load_nodes()}
    assert sorted(nodes) == list(NODES)
    pi02 = nodes["pi-02"]
    assert pi02.status == "online"
    assert pi02.last_heard == T0 + 290
    assert pi02.last_seq == 131
    assert pi02.missing == {101, 103}
    assert (pi02.received, pi02.duplicates, pi02.seq_gaps, pi02.messages) == (32, 1, 2, 35)
    assert pi02.interval_s == 10.0
    assert pi02.details is not None
    assert pi02.details["hostname"] == "pi-02"
    assert pi02.metrics is not None
    assert pi02.metrics.get("cpu_freq_mhz") == 1700.0
    assert nodes["pi-03"].missing == frozenset()


def reads_only(task: Callable[[Store], T]) -> Future[T]:
    """A command log writer for tests that only read."""
    raise AssertionError("this test does not write commands")


def test_every_command_survives_the_upgrade_and_is_served(upgraded: Store) -> None:
    everything = "SELECT * FROM commands ORDER BY id"
    assert upgraded.connection.execute(everything).fetchall() == fixture_rows(everything)
    assert len(fixture_rows(everything)) == 3

    log = CommandLog(upgraded, reads_only)
    try:
        ping = log.get("cmd-0001")
        assert ping is not None
        assert (ping.node, ping.command, ping.status, ping.ok) == ("pi-01", "ping", "ok", True)
        assert ping.result == {"pong": T0 + 101}
        assert ping.replied_at == T0 + 101

        [refused] = log.recent("pi-02", 10)
        assert refused.id == "cmd-0002"
        assert refused.args == {"interval_s": 5}
        assert (refused.status, refused.ok) == ("error", False)
        assert refused.error == "interval_s below 10"

        [lost] = log.recent("pi-03", 10)
        assert (lost.id, lost.status, lost.ok, lost.replied_at) == (
            "cmd-0003",
            "timeout",
            None,
            None,
        )
    finally:
        log.close()


def test_the_alert_tables_are_created_empty(v2_db: Path, upgraded: Store) -> None:
    fresh = v2_db.parent / "fresh.db"
    Store(str(fresh)).close()
    schema = (
        "SELECT type, name, sql FROM sqlite_master "
        f"WHERE tbl_name IN ({', '.join(repr(t) for t in ALERT_TABLES)}) ORDER BY name"
    )
    created = upgraded.connection.execute(schema).fetchall()
    assert {name for kind, name, _ in created if kind == "table"} == set(ALERT_TABLES)
    assert created == rows(fresh, schema)
    for table in ALERT_TABLES:
        assert upgraded.connection.execute(f"SELECT COUNT(*) FROM {table}").fetchone() == (0,)


def test_a_copy_of_the_v2_file_is_kept_before_the_upgrade(v2_db: Path, upgraded: Store) -> None:
    assert backups(v2_db.parent) == ["master.db.bak-v2"]
    backup = Path(f"{v2_db}.bak-v2")
    assert rows(backup, "PRAGMA user_version") == [(2,)]
    assert not tables(backup) & set(ALERT_TABLES)
    assert dump(backup) == dump(FIXTURE)


def test_a_second_open_changes_nothing(v2_db: Path) -> None:
    Store(str(v2_db)).close()
    copies, content = backups(v2_db.parent), dump(v2_db)

    Store(str(v2_db)).close()

    assert backups(v2_db.parent) == copies == ["master.db.bak-v2"]
    assert dump(v2_db) == content
    assert rows(v2_db, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    connection = sqlite3.connect(v2_db)
    try:
        assert migrate(connection, str(v2_db)) == (SCHEMA_VERSION, SCHEMA_VERSION)
    finally:
        connection.close()
    assert backups(v2_db.parent) == copies


def test_the_upgraded_store_rolls_up_the_minute_the_old_release_left_raw(upgraded: Store) -> None:
    assert upgraded.roll_up(now=T0 + 400, raw_since=0.0) == len(NODES)
    upgraded.commit()
    row = upgraded.connection.execute(
        "SELECT samples, cpu_percent, cpu_freq_mhz FROM metrics_1m WHERE node = 'pi-01' AND ts = ?",
        (T0 + 60 * ROLLED_MINUTES,),
    ).fetchone()
    # Samples 24..29: cpu 24..29, clock 600 + 100 * (4..9) MHz.
    assert row == (6, 26.5, 1250.0)

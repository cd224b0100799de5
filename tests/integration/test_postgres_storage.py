"""PostgreSQL storage as such: schema versions, day partitions, retention, readers, errors.

What both engines share (history, rollups, the command log, alerts...) runs on both through
the `store` and `db_target` fixtures; this file holds what only PostgreSQL has.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import TypeVar

import psycopg
import pytest

from cluster_protocol import setting_rules
from cluster_protocol.config import SettingsError
from master_service.ingest.history_rows import insert_history
from master_service.state import NodeState
from master_service.storage import database as database_module
from master_service.storage import partitions
from master_service.storage.command_log import CommandLog, CommandRecord
from master_service.storage.database import (
    Database,
    DatabaseRefusedError,
    DatabaseUnavailableError,
    psycopg_sql,
    redacted,
)
from master_service.storage.history import HistoryQuery, HistoryReader
from master_service.storage.migrations import SCHEMA_VERSION, SchemaTooNewError
from master_service.storage.retention import run_retention
from master_service.storage.store import Store
from tests.support.broker import free_port
from tests.support.postgres import PostgresServer

DAY = partitions.DAY_S
T = TypeVar("T")
T0 = 1_764_028_800.0  # 2025-11-25 00:00:00 UTC, a day boundary


@pytest.fixture
def pg_store(postgres_url: str) -> Iterator[Store]:
    opened = Store(postgres_url)
    yield opened
    opened.close()


def tables(store: Store) -> set[str]:
    rows = store.connection.execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
    ).fetchall()
    return {name for (name,) in rows}


def rows_in(store: Store, table: str) -> int:
    (count,) = store.connection.execute(f"SELECT COUNT(*) FROM {table}").fetchone()
    return int(count)


def add(store: Store, node: str, *stamps: float) -> None:
    store.append_history((node, ts, {"cpu_percent": 1.0}) for ts in stamps)
    store.commit()


def test_a_new_database_gets_every_version_and_a_second_open_changes_nothing(
    postgres_url: str,
) -> None:
    first = Store(postgres_url)
    (version,) = first.connection.execute("SELECT version FROM schema_version").fetchone()
    first.close()
    again = Store(postgres_url)
    rows = again.connection.execute("SELECT version FROM schema_version").fetchall()
    again.close()
    assert version == SCHEMA_VERSION
    assert rows == [(SCHEMA_VERSION,)]


def test_masters_starting_together_migrate_one_after_the_other(postgres_url: str) -> None:
    opened: list[Store] = []
    failures: list[BaseException] = []
    start = threading.Barrier(3)

    def open_store() -> None:
        start.wait()
        try:
            opened.append(Store(postgres_url))
        except BaseException as error:
            failures.append(error)

    threads = [threading.Thread(target=open_store) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    for store in opened:
        store.close()
    assert failures == []
    assert len(opened) == 3


def test_a_database_from_a_newer_release_is_refused_unchanged(postgres_url: str) -> None:
    Store(postgres_url).close()
    with psycopg.connect(postgres_url, autocommit=True) as db:
        db.execute("UPDATE schema_version SET version = %s", (SCHEMA_VERSION + 1,))
    with pytest.raises(SchemaTooNewError, match=f"schema version {SCHEMA_VERSION + 1}"):
        Store(postgres_url)
    with psycopg.connect(postgres_url) as db:
        row = db.execute("SELECT version FROM schema_version").fetchone()
    assert row == (SCHEMA_VERSION + 1,)


def test_today_and_the_next_days_have_partitions_before_any_sample(pg_store: Store) -> None:
    today = partitions.day_of(time.time())
    expected = {partitions.partition_name(today + n * DAY) for n in range(3)}
    assert expected <= tables(pg_store)
    assert "metrics_raw_default" in tables(pg_store)


def test_samples_land_in_their_days_partition(pg_store: Store) -> None:
    now = time.time()
    add(pg_store, "pi-01", now, now + DAY)
    today = partitions.partition_name(partitions.day_of(now))
    tomorrow = partitions.partition_name(partitions.day_of(now + DAY))
    assert (rows_in(pg_store, today), rows_in(pg_store, tomorrow)) == (1, 1)
    assert rows_in(pg_store, "metrics_raw_default") == 0


def test_a_sample_of_a_day_without_partition_is_kept_and_moves_in_when_it_gets_one(
    pg_store: Store,
) -> None:
    # A spool replayed from long ago, or a node whose clock is off: never refused.
    add(pg_store, "pi-01", T0 + 5, T0 + 10)
    assert rows_in(pg_store, "metrics_raw_default") == 2
    created = partitions.ensure_partitions(pg_store.connection, T0)
    pg_store.commit()
    assert partitions.partition_name(int(T0)) in created
    assert rows_in(pg_store, "metrics_raw_default") == 0
    assert rows_in(pg_store, partitions.partition_name(int(T0))) == 2
    assert rows_in(pg_store, "metrics_raw") == 2


def test_retention_drops_whole_days_and_prunes_the_rest_by_row(pg_store: Store) -> None:
    partitions.ensure_partitions(pg_store.connection, T0)
    pg_store.save_nodes([NodeState("pi-01")], T0)
    add(pg_store, "pi-01", T0 + 60, T0 + DAY + 60, T0 + DAY + 7200, T0 + 2 * DAY + 60)
    pg_store.roll_up(T0 + 2 * DAY + 120, raw_since=0)
    pg_store.commit()
    now = T0 + 2 * DAY + 3600 + 120
    # Raw samples kept a day and an hour: day 0 goes whole, day 1 partly, day 2 stays.
    report = run_retention(pg_store, now, raw_days=1 + 1 / 24, rollup_days=30)
    left = pg_store.connection.execute("SELECT ts FROM metrics_raw ORDER BY ts").fetchall()
    assert [ts for (ts,) in left] == [T0 + DAY + 7200, T0 + 2 * DAY + 60]
    assert report.raw_deleted == 2
    assert partitions.partition_name(int(T0)) not in tables(pg_store)
    assert partitions.partition_name(int(T0 + DAY)) in tables(pg_store)
    # The minutes were rolled up before their raw samples went.
    assert rows_in(pg_store, "metrics_1m") == 4


def test_a_reader_cannot_write(pg_store: Store) -> None:
    reader = pg_store.database.connect(read_only=True)
    try:
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            reader.execute("DELETE FROM nodes")
    finally:
        reader.close()


def test_an_unreachable_server_is_reported_with_its_address() -> None:
    url = f"postgresql://picluster@127.0.0.1:{free_port()}/picluster"
    with pytest.raises(DatabaseUnavailableError, match="cannot connect to PostgreSQL at") as error:
        Database(url).connect()
    assert url in str(error.value)
    assert not isinstance(error.value, SettingsError)  # a server away is not a bad setting


def test_a_refused_login_is_reported_without_the_password(postgres_server: PostgresServer) -> None:
    with pytest.raises(DatabaseRefusedError, match="password authentication failed") as error:
        Database(postgres_server.url, "not-the-password").connect()
    assert "not-the-password" not in str(error.value)


def test_a_missing_database_is_a_setting_to_fix(postgres_server: PostgresServer) -> None:
    url = postgres_server.database_url("no_such_database")
    with pytest.raises(DatabaseRefusedError, match='database "no_such_database" does not exist'):
        Database(url).connect()


def test_a_role_that_may_not_create_tables_is_told_what_to_grant(
    postgres_server: PostgresServer,
) -> None:
    url = postgres_server.create_database(f"locked_{uuid.uuid4().hex[:8]}")
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(postgres_server.admin_url, autocommit=True) as admin:
        admin.execute(f"ALTER DATABASE {name} OWNER TO postgres")
    with psycopg.connect(postgres_server.admin_url.rsplit("/", 1)[0] + f"/{name}") as admin:
        admin.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        admin.execute("ALTER SCHEMA public OWNER TO postgres")
    with pytest.raises(DatabaseRefusedError, match="may not create the master's tables"):
        Store(url)


def test_a_locked_history_table_delays_partitions_but_never_the_writer(
    pg_store: Store, postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    later = time.time() + 10 * DAY
    with psycopg.connect(postgres_url) as other:
        other.execute("LOCK TABLE metrics_raw IN ACCESS SHARE MODE")  # what pg_dump holds
        started = time.monotonic()
        assert partitions.ensure_partitions(pg_store.connection, later) == []
        add(pg_store, "pi-01", later)  # the writer goes on: the sample waits in the default
        assert time.monotonic() - started < 3 * partitions.LOCK_WAIT_S
    assert "partitions are changed at a later pass" in caplog.text
    created = partitions.ensure_partitions(pg_store.connection, later)
    pg_store.commit()
    assert partitions.partition_name(partitions.day_of(later)) in created
    assert rows_in(pg_store, partitions.partition_name(partitions.day_of(later))) == 1


def test_placeholders_outside_quotes_become_psycopgs() -> None:
    assert psycopg_sql("SELECT ? WHERE a = ? AND b LIKE 'x?%'") == (
        "SELECT %s WHERE a = %s AND b LIKE 'x?%%'"
    )
    assert psycopg_sql("SELECT :since, x::bigint, 5 % 2") == ("SELECT %(since)s, x::bigint, 5 %% 2")


def test_history_reads_from_threads_that_come_and_go_keep_a_few_connections(
    pg_store: Store, postgres_url: str
) -> None:
    # The API's worker threads are retired when idle; their reads must not each leave a
    # connection behind (PostgreSQL has 100 slots, SQLite a file descriptor limit).
    add(pg_store, "pi-01", time.time())
    reader = HistoryReader(pg_store.database, raw_days=7)
    for _ in range(3 * HistoryReader.KEPT):
        worker = threading.Thread(
            target=reader.read, args=(HistoryQuery("pi-01", "cpu_percent", 0, time.time() + 1),)
        )
        worker.start()
        worker.join()
    database = postgres_url.rsplit("/", 1)[1]
    with psycopg.connect(postgres_url) as admin:
        row = admin.execute(
            "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (database,),
        ).fetchone()
    assert row is not None
    (sessions,) = row
    reader.close()
    assert sessions <= HistoryReader.KEPT + 1  # the readers kept, and the writer


def test_a_batch_stored_twice_keeps_one_row_per_sample(pg_store: Store) -> None:
    # A commit cut off by a dropped connection may have happened: the batch is retried.
    now = time.time()
    add(pg_store, "pi-01", now, now + 1)
    add(pg_store, "pi-01", now, now + 1)
    assert rows_in(pg_store, "metrics_raw") == 2


def test_a_nul_in_a_nodes_error_text_is_stored(pg_store: Store) -> None:
    def write_now(task: Callable[[Store], T]) -> Future[T]:
        future: Future[T] = Future()
        future.set_result(task(pg_store))
        return future

    log = CommandLog(pg_store, write_now)
    log.add(CommandRecord("c-1", "pi-01", "ping", {}, 1.0, 31.0, "pending"))
    assert log.answer("pi-01", {"id": "c-1", "ok": False, "error": "bad\x00byte"}, 2.0).result()
    pg_store.commit()
    record = log.get("c-1")
    log.close()
    assert record is not None
    assert (record.status, record.error) == ("error", "bad\ufffdbyte")


def test_a_password_in_the_url_query_is_refused_and_redacted() -> None:
    url = "postgresql://picluster@db.example/picluster?sslmode=require&password=hunter2"
    assert "password" in str(setting_rules.database(url))
    assert "hunter2" not in redacted(url)
    assert "hunter2" not in repr(Database("postgresql://u@h/db", "hunter2"))


def test_login_connections_come_back_after_a_server_restart(tmp_path: Path) -> None:
    with PostgresServer(tmp_path / "postgres") as server:
        url = server.create_database("logins")
        connection = Database(url).connect(autocommit=True)
        try:
            assert connection.execute("SELECT 1").fetchone() == (1,)
            server.stop()
            server.start()
            # The statement that finds the connection dropped runs on a new one...
            assert connection.execute("SELECT 2").fetchone() == (2,)
            server.stop()
            server.start()
            # ...and so does a transaction begun on a dropped one.
            with connection:
                connection.execute("CREATE TABLE marks (x INTEGER)")
            assert connection.execute("SELECT COUNT(*) FROM marks").fetchall() == [(0,)]
        finally:
            connection.close()


@pytest.mark.parametrize(
    ("libpq_says", "refused"),
    [
        ('connection to server at "db", port 5432 failed: Connection refused', False),
        ('connection to server at "db", port 5432 failed: timeout expired', False),
        ("failed to resolve host 'db': [Errno -2] Name or service not known", False),
        ("... failed: FATAL:  the database system is starting up", False),
        ("... failed: FATAL:  sorry, too many clients already", False),
        ("... failed: FATAL:  le système de bases de données se lance", False),  # translated
        ('... failed: FATAL:  password authentication failed for user "picluster"', True),
        ('... failed: FATAL:  database "picluster" does not exist', True),
        ('... failed: FATAL:  no pg_hba.conf entry for host "10.0.0.5"', True),
        ('... failed: FATAL:  role "ghost" does not exist', True),
        ("... failed: fe_sendauth: no password supplied", True),
    ],
)
def test_a_server_that_may_come_back_is_not_a_refusal(libpq_says: str, refused: bool) -> None:
    # Refused: a setting to fix, exit 2 (systemd leaves it). Away: exit 1 (systemd retries).
    assert database_module._refused(libpq_says) is refused


def test_a_role_without_temporary_tables_still_stores_history(
    postgres_server: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    name = f"hardened_{uuid.uuid4().hex[:8]}"
    admin_base = postgres_server.admin_url.rsplit("/", 1)[0]
    with psycopg.connect(postgres_server.admin_url, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {name} LOGIN PASSWORD 'lowly-secret'")
        admin.execute(f"CREATE DATABASE {name}")
        admin.execute(f"REVOKE TEMPORARY ON DATABASE {name} FROM PUBLIC")
    with psycopg.connect(f"{admin_base}/{name}", autocommit=True) as admin:
        admin.execute(f"GRANT CREATE ON SCHEMA public TO {name}")
    url = f"postgresql://{name}:lowly-secret@127.0.0.1:{postgres_server.port}/{name}"
    store = Store(url)
    try:
        now = time.time()
        insert_history(store.connection, [("pi-01", now, {"cpu_percent": 5.0})])
        store.commit()
        insert_history(store.connection, [("pi-01", now + 1, {"cpu_percent": 6.0})])
        store.commit()
        assert rows_in(store, "metrics_raw") == 2
    finally:
        store.close()
    assert "may not create temporary tables" in caplog.text

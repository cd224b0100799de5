"""The tests' own PostgreSQL server: logins, fresh databases, stopping and crashing by PID."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import psycopg
import pytest

from tests.support.postgres import SERVICE_USER, PostgresServer, children_of


def process_status(pid: int) -> dict[str, str] | None:
    """/proc/<pid>/status as a dict, or None when there is no such process."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return None
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def is_alive(pid: int) -> bool:
    """Whether a process with this PID exists and has not exited (a zombie has)."""
    status = process_status(pid)
    return status is not None and not status["State"].startswith("Z")


def test_picluster_login_is_accepted_and_a_wrong_password_refused(
    postgres_server: PostgresServer,
) -> None:
    with psycopg.connect(postgres_server.url, password=postgres_server.password) as conn:
        row = conn.execute(
            "SELECT current_user, current_database(), inet_server_addr()::text,"
            " inet_server_port(), current_setting('fsync')"
        ).fetchone()
    assert row == ("picluster", "picluster", "127.0.0.1/32", postgres_server.port, "on")

    with pytest.raises(psycopg.OperationalError, match="authentication failed"):
        psycopg.connect(postgres_server.url, password="not-the-password")
    with pytest.raises(psycopg.OperationalError, match="authentication failed"):
        psycopg.connect(postgres_server.url.replace("picluster@", "postgres@"), password="x")


def test_each_postgres_url_is_a_fresh_database_of_its_own(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    other_url = postgres_server.create_database("test_other_database")
    assert other_url != postgres_url

    with psycopg.connect(postgres_url) as conn:
        owner, tables = conn.execute(
            "SELECT pg_get_userbyid(datdba),"
            " (SELECT count(*) FROM pg_tables WHERE schemaname = 'public')"
            " FROM pg_database WHERE datname = current_database()"
        ).fetchone() or (None, None)
        assert (owner, tables) == ("picluster", 0)
        conn.execute("CREATE TABLE samples (value integer)")
        conn.execute("INSERT INTO samples VALUES (42)")

    with psycopg.connect(other_url) as conn:
        assert conn.execute("SELECT to_regclass('samples')").fetchone() == (None,)
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT value FROM samples").fetchall() == [(42,)]


def test_stop_leaves_no_postgres_process(tmp_path: Path) -> None:
    with PostgresServer(tmp_path) as server:
        pid = server.pid()
        assert pid is not None
        children = children_of(pid)
        status = process_status(pid)
        assert status is not None
        assert is_alive(pid)
        assert children, "a running postmaster has its checkpointer, WAL writer... as children"
        owner = pwd.getpwnam(SERVICE_USER).pw_uid if os.geteuid() == 0 else os.getuid()
        assert int(status["Uid"].split()[0]) == owner

        server.stop()

        assert not server.is_running()
        assert server.pid() is None
        # Its parent is init (pg_ctl daemonizes it), which may reap it later: a zombie is gone.
        assert [p for p in [pid, *children] if is_alive(p)] == []
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(server.url, password=server.password, connect_timeout=5)


def test_a_killed_server_starts_again_with_its_committed_rows(tmp_path: Path) -> None:
    with PostgresServer(tmp_path) as server:
        with psycopg.connect(server.database_url(server.database)) as conn:
            conn.execute("CREATE TABLE samples (value integer)")
            conn.execute("INSERT INTO samples VALUES (7)")
        pid = server.pid()
        assert pid is not None
        children = children_of(pid)

        server.kill()

        assert [p for p in [pid, *children] if is_alive(p)] == []
        server.start()
        assert server.pid() != pid
        with psycopg.connect(server.database_url(server.database)) as conn:
            assert conn.execute("SELECT value FROM samples").fetchall() == [(7,)]
        assert "database system was interrupted" in server.log_tail(200)

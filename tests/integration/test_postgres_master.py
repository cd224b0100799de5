"""`cluster-master` on PostgreSQL as a user runs it: bad logins, the users command, a crash.

The master, the nodes and the broker are real processes; the PostgreSQL server is the tests'
own (tests/support/postgres.py), killed with SIGKILL where the test is about a crash.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import urllib.error
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import REPO_ROOT
from tests.support.broker import MosquittoBroker, free_port
from tests.support.databases import MasterDatabase
from tests.support.logins import users_cli
from tests.support.postgres import PostgresServer
from tests.support.processes import RunningMaster, start_master, start_node
from tests.support.waiting import wait_until


def master_run(db: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`cluster-master run --db DB` against a broker nobody listens on: it must stop at the db."""
    return subprocess.run(
        [
            *(sys.executable, "-m", "master_service", "run", "--broker", "mqtt://127.0.0.1:9"),
            *("--db", db, "--http", f"127.0.0.1:{free_port()}"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
        env={"PATH": "/usr/bin:/bin", **env},
        check=False,
    )


def test_an_unreachable_server_stops_the_master_with_a_clear_message_and_status_1() -> None:
    url = f"postgresql://picluster@127.0.0.1:{free_port()}/picluster"
    done = master_run(url, {})
    assert done.returncode == 1  # not 2: the server may come back, so systemd tries again
    assert done.stderr.startswith(f"cluster-master: cannot connect to PostgreSQL at {url}: ")
    assert "Traceback" not in done.stderr


def test_a_refused_login_stops_the_master_and_the_password_is_not_shown(
    postgres_server: PostgresServer,
) -> None:
    done = master_run(postgres_server.url, {"CLUSTER_DB_PASSWORD": "wrong-db-secret"})
    assert done.returncode == 2
    assert "bad setting db: cannot connect to PostgreSQL" in done.stderr
    assert 'password authentication failed for user "picluster"' in done.stderr
    assert "wrong-db-secret" not in done.stderr


def test_the_users_command_works_on_the_masters_postgresql(postgres_url: str) -> None:
    database = MasterDatabase.of(postgres_url)
    secret = {"CLUSTER_DB_PASSWORD": database.env["CLUSTER_DB_PASSWORD"]}
    added = users_cli(database.target, "add", "ada", "--role", "admin", password="a long pass 1")
    assert added.returncode == 3  # without the password the server refuses the login
    assert "bad setting db: cannot connect to PostgreSQL" in added.stderr
    assert "no password supplied" in added.stderr
    env = {**secret}
    done = _users(database.target, env, "add", "ada", "--role", "admin", stdin="a long pass 1")
    assert done.returncode == 0, done.stderr
    listed = _users(database.target, env, "list")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[1].split()[:2] == ["ada", "admin"]


def _users(db: str, env: dict[str, str], *args: str, stdin: str | None = None) -> Any:
    flag = ["--password-stdin"] if stdin is not None else []
    return subprocess.run(
        [sys.executable, "-m", "master_service", "users", *args, "--db", db, *flag],
        input=(stdin + "\n") if stdin is not None else None,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
        env={**_base_env(), **env},
        check=False,
    )


def _base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("CLUSTER_", "PG"))}


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[PostgresServer]:
    """A PostgreSQL server of this test's own: it is killed, so no other test shares it."""
    with PostgresServer(tmp_path / "postgres") as server:
        yield server


def counters(master: RunningMaster, node: str) -> dict[str, Any]:
    try:
        view = master.node(node)
    except (urllib.error.URLError, OSError):
        return {"last_seq": None, "seq_gaps": 0}
    return view["counters"] if view else {"last_seq": None, "seq_gaps": 0}


def health(master: RunningMaster) -> dict[str, Any]:
    try:
        return dict(master.get("/healthz"))
    except urllib.error.HTTPError as error:  # 503 while unhealthy, with the same body
        body: dict[str, Any] = json.loads(error.read())
        return body


def test_a_database_crash_under_load_loses_nothing(
    broker: MosquittoBroker, own_server: PostgresServer, tmp_path: Path
) -> None:
    database = MasterDatabase.of(own_server.create_database("crash"))
    prefix = f"pgc{uuid.uuid4().hex[:6]}"
    master = start_master(
        broker.url,
        tmp_path / "master",
        "--prefix", prefix, "--client-id", f"picluster-master-{prefix}", "--no-ha-discovery",
        db=database.target,
        env=database.env,
    )  # fmt: skip
    node_ids = [f"{prefix}-{i}" for i in range(2)]
    nodes = [
        start_node(broker.url, tmp_path, n, "--prefix", prefix, interval=0.2) for n in node_ids
    ]
    try:
        wait_until(lambda: all((counters(master, n)["last_seq"] or 0) >= 3 for n in node_ids), 20)
        # A history read before the crash: the API now holds a read connection.
        assert master.get(f"/api/nodes/{node_ids[0]}/history?metric=cpu_percent")["points"]
        own_server.kill()
        wait_until(
            lambda: any(
                r.startswith("cannot write to the store") for r in health(master)["reasons"]
            ),
            20,
            message="the master reports that it cannot store",
        )
        before = {n: counters(master, n)["last_seq"] for n in node_ids}
        # The nodes go on publishing; the master acknowledges nothing it has not committed.
        wait_until(
            lambda: all(counters(master, n)["last_seq"] >= before[n] + 10 for n in node_ids), 20
        )
        own_server.start()
        target = {n: counters(master, n)["last_seq"] + 5 for n in node_ids}

        def caught_up() -> bool:
            seen = {n: counters(master, n) for n in node_ids}
            return all(
                (c["last_seq"] or 0) >= target[n] and c["seq_gaps"] == 0 for n, c in seen.items()
            )

        wait_until(caught_up, 30, interval_s=0.2, message=f"every node up to {target}, no gap")
        # The live counters run ahead of the store: wait for the retried commit to go through
        # (the master backs off to one try every 2 s while the server is away).
        wait_until(lambda: health(master)["ok"], 30, message="the store writable again")
        # The API's read connections were dropped with the server: they connect again.
        history = master.get(f"/api/nodes/{node_ids[0]}/history?metric=cpu_percent")
        assert any(value is not None for _, value in history["points"])
    finally:
        for node in nodes:
            node.stop()
        master.stop()
    # Every sample is stored once: no ts twice, and no hole where the server was down (the
    # nodes sent one every 0.2 s throughout; the outage lasted seconds).
    with psycopg.connect(own_server.database_url("crash")) as db:
        for node_id in node_ids:
            stamps = [
                ts
                for (ts,) in db.execute(
                    "SELECT ts FROM metrics_raw WHERE node = %s ORDER BY ts", (node_id,)
                ).fetchall()
            ]
            assert len(stamps) == len(set(stamps))
            assert max(b - a for a, b in itertools.pairwise(stamps)) < 1.0

"""The real `cluster-master run` on databases of other releases: an older file is upgraded and
served, a newer one is refused with exit 2 and left as it was."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from master_service.storage.migrations import SCHEMA_VERSION
from tests.support.broker import MosquittoBroker, free_port
from tests.support.processes import start_master

FIXTURE = Path(__file__).parents[1] / "fixtures" / "db" / "master-v1.sqlite"
T0 = 1_764_000_000  # as in tests/fixtures/db/make_master_v1.py


@pytest.mark.sqlite_file("a SQLite file whose PRAGMA user_version is from a newer release")
def test_the_master_refuses_a_database_from_a_newer_release_and_exits_2(tmp_path: Path) -> None:
    db = tmp_path / "master.db"
    connection = sqlite3.connect(db)
    connection.execute("CREATE TABLE nodes (node TEXT PRIMARY KEY, state TEXT, updated_at REAL)")
    connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    connection.commit()
    connection.close()
    before = db.read_bytes()
    # Nothing listens on the broker port: the refusal must come before any connecting.
    broker = f"mqtt://127.0.0.1:{free_port()}"
    http = f"127.0.0.1:{free_port()}"

    command = ["run", "--db", str(db), "--broker", broker, "--http", http, "--no-ha-discovery"]
    result = subprocess.run(
        [sys.executable, "-m", "master_service", *command],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 2, result.stderr
    assert f"schema version {SCHEMA_VERSION + 1}" in result.stderr
    assert f"up to {SCHEMA_VERSION}" in result.stderr
    assert "Traceback" not in result.stderr
    assert db.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["master.db"]


@pytest.mark.sqlite_file("an older release's SQLite file (v1) copied in as the database")
def test_the_master_upgrades_an_old_database_and_serves_its_nodes_and_history(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    db = tmp_path / "old" / "master.db"
    db.parent.mkdir()
    shutil.copyfile(FIXTURE, db)
    master = start_master(
        broker.url,
        tmp_path,
        "--prefix",
        "schema",
        "--client-id",
        "picluster-master-schema",
        "--no-ha-discovery",
        db=db,
        # The fixture's samples are from 2025: keep them past the retention pass at start.
        env={"CLUSTER_HISTORY_RAW_DAYS": "36500", "CLUSTER_HISTORY_ROLLUP_DAYS": "36500"},
    )
    try:
        nodes = master.get("/api/nodes")["nodes"]
        assert sorted(n["node"] for n in nodes) == ["pi-01", "pi-02", "pi-03"]
        history = master.get(
            f"/api/nodes/pi-03/history?metric=memory_percent&since={T0}&until={T0 + 300}"
        )
        assert history["points"] == [[T0 + 10 * i, 42.0] for i in range(30)]
    finally:
        assert master.stop() == 0
    (version,) = sqlite3.connect(db).execute("PRAGMA user_version").fetchone()
    assert version == SCHEMA_VERSION

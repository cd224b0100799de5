"""Run the real `cluster-master` and `cluster-node` commands as processes, as a user would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.broker import free_port
from tests.support.databases import MasterDatabase
from tests.support.waiting import wait_until

default_master_database: Callable[[Path], MasterDatabase] | None = None
"""Makes the database of a master started in a workdir without `db=`; None: its master.db.

`--master-db postgresql` sets it (tests/integration/conftest.py) to fresh PostgreSQL databases.
"""


def master_database(workdir: Path) -> MasterDatabase:
    """The database a master started in `workdir` without `db=` gets on this run."""
    if default_master_database is None:
        return MasterDatabase(str(workdir / "master.db"), {})
    return default_master_database(workdir)


@dataclass
class Service:
    """A running picluster process whose output goes to a log file."""

    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        """Everything the process wrote so far."""
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout_s: float = 15.0) -> int:
        """Signal the process by its PID and wait; kill it if it will not go."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout_s)
        return self.process.returncode


@dataclass
class RunningMaster(Service):
    """`cluster-master run` with its API on a free port."""

    api: str = ""
    db: Path | str = field(default_factory=Path)  # a SQLite file, or a postgresql:// URL
    database: MasterDatabase = field(default_factory=lambda: MasterDatabase("", {}))  # db, its env

    token: str | None = None

    def get(self, path: str) -> Any:
        """GET a JSON document from the API (as the master's api_token, when it has one)."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        request = urllib.request.Request(self.api + path, headers=headers)
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.load(response)

    def post(self, path: str, body: Any) -> tuple[int, Any]:
        """POST JSON to the API; the status and the decoded answer (error answers too)."""
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(
            self.api + path, data=json.dumps(body).encode(), headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as error:
            with error:
                return error.code, json.load(error)

    def node(self, node: str) -> dict[str, Any] | None:
        """One node's view, or None while the master does not know it."""
        try:
            view: dict[str, Any] = self.get(f"/api/nodes/{node}")
        except urllib.error.HTTPError as error:
            if error.code == 404:
                return None
            raise
        return view


def _spawn(module: str, args: list[str], log_path: Path, env: dict[str, str] | None) -> Any:
    with log_path.open("wb") as handle:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", module, *args],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )


def start_master(
    broker_url: str,
    workdir: Path,
    *extra: str,
    env: dict[str, str] | None = None,
    db: Path | str | MasterDatabase | None = None,
) -> RunningMaster:
    """Start a master against a broker and wait until its API answers and it is connected.

    Without `db` it gets `master_database(workdir)`; a MasterDatabase brings its environment
    (a PostgreSQL password), under the `env` given.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    if db is None:
        database = master_database(workdir)
    elif isinstance(db, MasterDatabase):
        database = db
    else:
        database = MasterDatabase(str(db), {})
    env = {**database.env, **(env or {})}
    log_path = workdir / f"master-{port}.log"
    args = ["run", "--broker", broker_url, "--db", database.target, "--http", f"127.0.0.1:{port}"]
    process = _spawn("master_service", [*args, *extra], log_path, env)
    master = RunningMaster(
        process,
        log_path,
        api=f"http://127.0.0.1:{port}",
        db=database.target,
        database=database,
        token=env.get("CLUSTER_API_TOKEN"),
    )

    def connected() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"master exited with {process.returncode}:\n{master.log()}")
        try:
            return bool(master.get("/healthz")["mqtt_connected"])
        except (urllib.error.URLError, OSError):
            return False

    try:
        wait_until(connected, 20, message="the master's API and broker connection")
    except BaseException:
        master.stop()  # a master that never came up must not outlive the test
        raise
    return master


def start_node(
    broker_url: str,
    workdir: Path,
    node_id: str,
    *extra: str,
    interval: float = 1.0,
    env: dict[str, str] | None = None,
) -> Service:
    """Start `cluster-node run` with its own state directory (kept across restarts)."""
    state_dir = workdir / f"node-{node_id}"
    state_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "run",
        "--broker",
        broker_url,
        "--node-id",
        node_id,
        "--interval",
        str(interval),
        "--state-dir",
        str(state_dir),
        *extra,
    ]
    log_path = state_dir / f"node-{free_port()}.log"
    return Service(_spawn("node_publisher", args, log_path, env), log_path)

"""A running cluster for read-side tests: `cluster-master run` fed by real `cluster-node run`s.

Each cluster gets its own topic prefix and master client id, so it can share the session's
broker with other tests without seeing their nodes or taking over their master's session.
"""

from __future__ import annotations

import shutil
import urllib.error
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support import processes
from tests.support.broker import MosquittoBroker
from tests.support.databases import MasterDatabase
from tests.support.postgres import PostgresServer
from tests.support.processes import RunningMaster, Service, start_master, start_node
from tests.support.waiting import wait_until

NODE_IDS = ("dash-01", "dash-02", "dash-03")
NODE_KEEPALIVE_S = 2
NODE_INTERVAL_S = 1.0


@pytest.fixture(scope="session", autouse=True)
def masters_database(request: pytest.FixtureRequest) -> Iterator[None]:
    """With --master-db postgresql, a master started without `db=` gets a fresh PostgreSQL DB."""
    if request.config.getoption("master_db") != "postgresql":
        yield
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")

    def fresh_database(workdir: Path) -> MasterDatabase:
        return MasterDatabase.of(server.create_database(f"master_{uuid.uuid4().hex[:16]}"))

    processes.default_master_database = fresh_database
    yield
    processes.default_master_database = None


@pytest.fixture(scope="session")
def chromium_binary() -> str:
    """Debian's chromium; the test command installs it, so missing is a failure, not a skip."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("chromium is not installed: run the README's test command, which installs it")
    return path


@dataclass
class Cluster:
    """A master and its nodes, each a real process."""

    master: RunningMaster
    prefix: str
    nodes: dict[str, Service] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """The master's API and dashboard."""
        return self.master.api

    def view(self, node: str) -> dict[str, Any] | None:
        """A node as the API shows it, or None."""
        return self.master.node(node)

    def has_history(self, node: str) -> bool:
        """True once the node's CPU history has at least one value."""
        try:
            answer = self.master.get(f"/api/nodes/{node}/history?metric=cpu_percent")
        except urllib.error.HTTPError:
            return False
        return any(value is not None for _, value in answer["points"])

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Wait until every node is online with details, metrics and history."""

        def ready() -> bool:
            for node in self.nodes:
                view = self.view(node)
                if not view or view["state"] != "online" or not view["metrics"]:
                    return False
                if not view["details"] or not self.has_history(node):
                    return False
            return True

        wait_until(ready, timeout_s, 0.2, f"{sorted(self.nodes)} online with history")

    def stop(self) -> None:
        """Stop nodes, then the master, by their PIDs."""
        for node in self.nodes.values():
            node.stop()
        self.master.stop()


def start_prefixed_master(
    broker: MosquittoBroker,
    workdir: Path,
    prefix: str,
    db: Path | str | MasterDatabase | None = None,
) -> RunningMaster:
    """A master on its own topic prefix and session (so tests can share a broker), HA off."""
    return start_master(
        broker.url,
        workdir,
        "--prefix",
        prefix,
        "--client-id",
        f"picluster-master-{prefix}",
        "--no-ha-discovery",
        db=db,
    )


def start_cluster(
    broker: MosquittoBroker, workdir: Path, prefix: str, node_ids: Sequence[str]
) -> Cluster:
    """Start a master and `node_ids` under `prefix`, and wait until all are online with history."""
    master = start_prefixed_master(broker, workdir, prefix)
    cluster = Cluster(master, prefix)
    try:
        for node_id in node_ids:
            cluster.nodes[node_id] = start_node(
                broker.url,
                workdir,
                node_id,
                "--prefix",
                prefix,
                "--keepalive",
                str(NODE_KEEPALIVE_S),
                interval=NODE_INTERVAL_S,
            )
        cluster.wait_ready()
    except BaseException:
        cluster.stop()
        raise
    return cluster


@pytest.fixture(scope="session")
def running_cluster(
    broker: MosquittoBroker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    """One master and three nodes for the whole session (tests must not stop them)."""
    cluster = start_cluster(broker, tmp_path_factory.mktemp("cluster"), "dash", NODE_IDS)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def running_master_url(running_cluster: Cluster) -> str:
    """The URL of a master with three live nodes (the dashboard tests' entry point)."""
    return running_cluster.url


@pytest.fixture
def make_cluster(
    broker: MosquittoBroker, tmp_path: Path
) -> Iterator[Callable[[str, Sequence[str]], Cluster]]:
    """Start clusters of one's own (for tests that kill nodes); stopped after the test."""
    started: list[Cluster] = []

    def make(prefix: str, node_ids: Sequence[str]) -> Cluster:
        cluster = start_cluster(broker, tmp_path / prefix, prefix, node_ids)
        started.append(cluster)
        return cluster

    yield make
    for cluster in started:
        cluster.stop()

"""Recovery without a human, with the shipped broker config: outages, kills and restarts.

The broker runs mosquitto/mosquitto.conf with only its listener and paths rewritten; the master
and the nodes are the real `cluster-master run` and `cluster-node run` processes.
"""

from __future__ import annotations

import logging
import signal
import sqlite3
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from master_service.storage.database import Engine
from tests.integration.test_mosquitto_config import ShippedBroker
from tests.support.databases import MasterDatabase
from tests.support.processes import RunningMaster, Service, start_master, start_node
from tests.support.waiting import wait_until

logger = logging.getLogger(__name__)

MASTER_PASSWORD = "recovery-master-secret"
NODE_PASSWORD = "recovery-node-secret"
NODES = 3
OUTAGE_S = 8.0  # the one-minute outage, scaled down for CI
INTERVAL_S = "1"


@dataclass
class Cluster:
    """A shipped-config broker, one master process and node processes, all restartable."""

    broker: ShippedBroker
    workdir: Path
    node_ids: list[str]
    ingest_client: str
    database: MasterDatabase
    master: RunningMaster | None = None
    nodes: dict[str, Service] = field(default_factory=dict)

    @property
    def master_url(self) -> str:
        return f"mqtt://picluster-master@{self.broker.host}:{self.broker.port}"

    def start_master(self) -> RunningMaster:
        secret = self.workdir / "master.password"
        secret.write_text(MASTER_PASSWORD + "\n")
        self.master = start_master(
            self.master_url,
            self.workdir / "master",
            "--password-file", str(secret), "--no-ha-discovery",
            "--ingest-client", self.ingest_client,
            db=self.database.target,
            env=self.database.env,
        )  # fmt: skip
        return self.master

    def start_node(self, node_id: str) -> Service:
        self.nodes[node_id] = start_node(
            self.broker.url,
            self.workdir,
            node_id,
            "--keepalive", "2",
            interval=float(INTERVAL_S),
            env={"CLUSTER_PASSWORD": NODE_PASSWORD},
        )  # fmt: skip
        return self.nodes[node_id]

    def node_seq(self, node_id: str) -> int:
        """The last seq the node handed out (read from its spool file)."""
        return _spool_value(self.workdir, node_id, "SELECT value FROM meta WHERE key = 'seq'")

    def spooled(self, node_id: str) -> int:
        """Envelopes waiting in the node's spool."""
        return _spool_value(self.workdir, node_id, "SELECT COUNT(*) FROM outbox")

    def counters(self, node_id: str) -> dict[str, Any]:
        assert self.master is not None
        view = self.master.node(node_id)
        return view["counters"] if view else {"last_seq": None, "seq_gaps": 0}

    def wait_delivered(self, seqs: dict[str, int], timeout_s: float = 30) -> None:
        """Wait until the master holds every node's stream up to `seqs` with no gap."""

        def delivered() -> bool:
            for node_id, seq in seqs.items():
                counters = self.counters(node_id)
                if counters["last_seq"] is None or counters["last_seq"] < seq:
                    return False
                if counters["seq_gaps"]:
                    return False
            return True

        try:
            wait_until(delivered, timeout_s, interval_s=0.2, message=f"every node up to {seqs}")
        except AssertionError as error:
            report = {n: self.counters(n) for n in seqs}
            raise AssertionError(f"{error}; master counters: {report}") from error

    def stop(self) -> None:
        for node in self.nodes.values():
            node.stop()
        if self.master is not None:
            self.master.stop()
        self.broker.stop()


def _spool_value(workdir: Path, node_id: str, query: str) -> int:
    path = workdir / f"node-{node_id}" / f"spool-{node_id}.sqlite3"
    if not path.exists():
        return 0
    with sqlite3.connect(path, timeout=5) as db:
        row = db.execute(query).fetchone()
    return int(row[0]) if row else 0


# Both receive paths keep the promise, mqtt5 (the default) and paho, and both engines.
@pytest.fixture(
    params=[("mqtt5", Engine.SQLITE), ("paho", Engine.SQLITE), ("mqtt5", Engine.POSTGRESQL)],
    ids=lambda p: f"{p[0]}-{p[1].value}",
)
def cluster(
    request: pytest.FixtureRequest, tmp_path: Path, mosquitto_binary: str
) -> Iterator[Cluster]:
    ingest_client, engine = request.param
    if engine is Engine.SQLITE:
        database = MasterDatabase.of(str(tmp_path / "master.db"))
    else:
        database = MasterDatabase.of(request.getfixturevalue("postgres_url"))
    suffix = uuid.uuid4().hex[:6]
    node_ids = [f"rec-{i}-{suffix}" for i in range(NODES)]
    users = {"picluster-master": MASTER_PASSWORD, **{n: NODE_PASSWORD for n in node_ids}}
    broker = ShippedBroker(tmp_path / "broker", users=users)
    broker.start()
    running = Cluster(broker, tmp_path, node_ids, ingest_client, database)
    try:
        running.start_master()
        for node_id in node_ids:
            running.start_node(node_id)
        running.wait_delivered({n: 2 for n in node_ids})
        yield running
    finally:
        running.stop()


def seqs_now(cluster: Cluster) -> dict[str, int]:
    return {n: cluster.node_seq(n) for n in cluster.node_ids}


def test_broker_outage_leaves_no_gap(cluster: Cluster) -> None:
    cluster.broker.stop()  # SIGTERM: what `systemctl restart mosquitto` or an upgrade does
    outage_started = time.monotonic()
    wait_until(
        lambda: all(cluster.spooled(n) >= OUTAGE_S for n in cluster.node_ids),
        OUTAGE_S + 10,
        interval_s=0.2,
        message="each node spooling through the outage",
    )
    assert time.monotonic() - outage_started >= OUTAGE_S - 1.5
    during = seqs_now(cluster)
    cluster.broker.start()
    # Everything spooled, and what followed, reaches the master in full.
    cluster.wait_delivered({n: seq + 2 for n, seq in during.items()})
    assert cluster.master is not None
    assert cluster.master.get("/healthz")["mqtt_connected"]
    for node_id in cluster.node_ids:
        view = cluster.master.node(node_id)
        assert view is not None
        assert view["state"] == "online"
        assert view["counters"]["duplicates"] >= 0


def test_node_killed_during_an_outage_delivers_its_spool_when_both_return(
    cluster: Cluster,
) -> None:
    victim = cluster.node_ids[0]
    cluster.broker.stop()
    wait_until(lambda: cluster.spooled(victim) >= 3, 15, interval_s=0.2, message="spooling")
    cluster.nodes[victim].stop(signal.SIGKILL)
    stranded = cluster.node_seq(victim)
    assert cluster.spooled(victim) >= 3
    cluster.broker.start()
    cluster.start_node(victim)  # same state directory: same spool, same seq counter
    seqs = seqs_now(cluster)
    cluster.wait_delivered({**seqs, victim: max(seqs[victim], stranded) + 1})
    assert cluster.spooled(victim) <= 2  # drained, bar the newest sample in flight


def test_master_killed_and_restarted_loses_nothing(cluster: Cluster) -> None:
    assert cluster.master is not None
    cluster.master.stop(signal.SIGKILL)
    before = seqs_now(cluster)
    # The nodes keep publishing while the master is gone; the broker queues for its session.
    wait_until(
        lambda: all(cluster.node_seq(n) >= before[n] + 3 for n in cluster.node_ids),
        15,
        interval_s=0.2,
        message="nodes publishing while the master is down",
    )
    cluster.start_master()
    cluster.wait_delivered({n: seq + 1 for n, seq in seqs_now(cluster).items()})


def test_broker_sigkill_under_load_everyone_reconnects(cluster: Cluster) -> None:
    cluster.broker.stop(signal.SIGKILL)
    cluster.broker.start()
    after = seqs_now(cluster)
    assert cluster.master is not None
    master = cluster.master

    def flowing_again() -> bool:
        return all(
            (c := cluster.counters(n))["last_seq"] is not None and c["last_seq"] >= after[n] + 2
            for n in cluster.node_ids
        )

    # Master and nodes reconnect and resubscribe by themselves: new data reaches the master.
    wait_until(flowing_again, 30, interval_s=0.2, message="data flowing after the kill")
    assert master.get("/healthz")["mqtt_connected"]
    # What a hard kill can lose is documented in docs/reliability.md (here the broker had no
    # snapshot yet: measured 0-1 lost per node); any loss shows as seq gaps, logged for the record.
    for node_id in cluster.node_ids:
        logger.warning("after the broker SIGKILL, %s: %s", node_id, cluster.counters(node_id))

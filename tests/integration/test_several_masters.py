"""Several masters on one PostgreSQL: metrics shared, one leader, failover, nothing lost.

Real processes throughout: a Mosquitto broker, the tests' own PostgreSQL server, two
`cluster-master run --several-masters` and `cluster-node run` publishers. Masters are killed
with SIGKILL, as a crash or a power cut would end them.
"""

from __future__ import annotations

import itertools
import signal
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.support.broker import MosquittoBroker
from tests.support.databases import MasterDatabase
from tests.support.postgres import PostgresServer
from tests.support.processes import RunningMaster, Service, start_master, start_node
from tests.support.waiting import wait_until

FAILOVER_LIMIT_S = 10.0
INTERVAL_S = 0.2  # the nodes' (start_node's interval=)


@dataclass
class Heads:
    """Two masters' start commands on one database and one broker, under a prefix of their own."""

    broker: MosquittoBroker
    database: MasterDatabase
    url: str
    prefix: str
    workdir: Path

    def start(self, name: str, *extra: str) -> RunningMaster:
        """`cluster-master run --several-masters` with its own client id (its session)."""
        return start_master(
            self.broker.url,
            self.workdir / name,
            "--several-masters",
            "--prefix", self.prefix,
            "--client-id", f"{self.prefix}-{name}",
            "--no-ha-discovery",
            *extra,
            db=self.database,
        )  # fmt: skip

    def nodes(self, count: int) -> list[Service]:
        """Node publishers sending metrics every INTERVAL_S."""
        return [
            start_node(
                self.broker.url, self.workdir, node, "--prefix", self.prefix, interval=INTERVAL_S
            )
            for node in self.node_ids(count)
        ]

    def node_ids(self, count: int) -> list[str]:
        """The ids `nodes(count)` publishes as."""
        return [f"{self.prefix}-n{i}" for i in range(count)]


@pytest.fixture
def heads(broker: MosquittoBroker, postgres_server: PostgresServer, tmp_path: Path) -> Heads:
    """A fresh database on the session's PostgreSQL for two heads."""
    prefix = f"sm{uuid.uuid4().hex[:6]}"
    url = postgres_server.create_database(f"several_{prefix}")
    return Heads(broker, MasterDatabase.of(url), url, prefix, tmp_path)


def role(master: RunningMaster) -> dict[str, Any] | None:
    """`/api/masters`, or None while the master does not answer (restarting as leader)."""
    try:
        return dict(master.get("/api/masters"))
    except (urllib.error.URLError, OSError):
        return None


def counters(master: RunningMaster, node: str) -> dict[str, Any]:
    """A node's counters as a master shows them (empty while unknown or unreachable)."""
    try:
        view = master.node(node)
    except (urllib.error.URLError, OSError):
        return {}
    return dict(view["counters"]) if view else {}


def accepted(master: RunningMaster) -> int:
    """Messages this master took from the broker itself (its share)."""
    return int(master.get("/api/cluster")["master"]["accepted"])


def wait_caught_up(leader: RunningMaster, node_ids: list[str]) -> None:
    """Wait until every node is 10 seqs past where it is now on the leader, without a gap."""
    target = {n: (counters(leader, n).get("last_seq") or 0) + 10 for n in node_ids}

    def caught_up() -> bool:
        seen = {n: counters(leader, n) for n in node_ids}
        return all(
            (c.get("last_seq") or 0) >= target[n] and c.get("seq_gaps") == 0
            for n, c in seen.items()
        )

    wait_until(
        caught_up, 30, interval_s=0.2, message=f"every node up to {target} on the leader, no gap"
    )


def assert_history_whole(url: str, node_ids: list[str]) -> None:
    """Every sample stored once, and no hole: the nodes sent one every INTERVAL_S throughout."""
    with psycopg.connect(url) as db:
        for node_id in node_ids:
            stamps = [
                ts
                for (ts,) in db.execute(
                    "SELECT ts FROM metrics_raw WHERE node = %s ORDER BY ts", (node_id,)
                ).fetchall()
            ]
            assert len(stamps) > 20
            assert len(stamps) == len(set(stamps))
            assert max(b - a for a, b in itertools.pairwise(stamps)) < 1.0
        left = db.execute("SELECT count(*) FROM forwarded_metrics").fetchone()
        assert left == (0,)  # the leader took every forwarded message


def test_two_masters_share_the_metrics_and_one_leads(heads: Heads) -> None:
    first = heads.start("a")
    second = heads.start("b")
    nodes = heads.nodes(2)
    node_ids = heads.node_ids(2)
    try:
        assert role(first) == {"role": "leader", "leader": first.api + "/"}
        assert role(second) == {"role": "follower", "leader": first.api + "/"}
        wait_until(lambda: all((counters(first, n).get("last_seq") or 0) >= 30 for n in node_ids))
        # Both took a share from the broker; the leader saw every seq all the same.
        assert accepted(first) > 0
        assert accepted(second) > 0
        assert all(counters(first, n)["seq_gaps"] == 0 for n in node_ids)
        # The follower serves the leader's view of the nodes.
        wait_until(lambda: (counters(second, node_ids[0]).get("last_seq") or 0) >= 30)
        history = second.get(f"/api/nodes/{node_ids[0]}/history?metric=cpu_percent")
        assert any(value is not None for _, value in history["points"])
        # Changes go to the leader: the follower says where it is.
        status, body = second.post(f"/api/nodes/{node_ids[0]}/commands", {"command": "ping"})
        assert status == 503
        assert first.api in body["detail"]
        status, _ = first.post(f"/api/nodes/{node_ids[0]}/commands", {"command": "ping"})
        assert status == 200
        # Alerts too: a silence set on the leader shows on the follower.
        silence = {"node": node_ids[1], "for": "1h", "comment": "maintenance"}
        assert second.post("/api/alerts/silences", silence)[0] == 503
        status, made = first.post("/api/alerts/silences", silence)
        assert status == 201
        wait_until(
            lambda: (
                [s["id"] for s in second.get("/api/alerts/silences")["silences"]] == [made["id"]]
            ),
            5,
            message="the leader's silence on the follower",
        )
    finally:
        for node in nodes:
            node.stop()
        second.stop()
        first.stop()
    assert_history_whole(heads.url, node_ids)


@pytest.mark.parametrize("victim", ["leader", "follower"])
def test_killing_a_master_under_load_loses_nothing(heads: Heads, victim: str) -> None:
    leader = heads.start("a")
    follower = heads.start("b")
    nodes = heads.nodes(2)
    node_ids = heads.node_ids(2)
    survivor, killed = (follower, leader) if victim == "leader" else (leader, follower)
    restarted: RunningMaster | None = None
    try:
        wait_until(lambda: all((counters(leader, n).get("last_seq") or 0) >= 10 for n in node_ids))
        killed.stop(signal.SIGKILL)
        killed_at = time.monotonic()
        wait_until(
            lambda: (role(survivor) or {}).get("role") == "leader",
            FAILOVER_LIMIT_S,
            interval_s=0.1,
            message=f"the {victim}'s survivor leads",
        )
        took_over_s = time.monotonic() - killed_at
        assert took_over_s < FAILOVER_LIMIT_S
        # It leads in deed: commands go through it.
        status, answer = survivor.post(f"/api/nodes/{node_ids[0]}/commands", {"command": "ping"})
        assert (status, answer["ok"]) == (200, True)
        # The killed head comes back, as systemd restarts it: it follows, and what its session
        # kept for it (taken before the kill but not acknowledged, or queued while it was
        # away) reaches the leader through it.
        restarted = heads.start(f"{'a' if victim == 'leader' else 'b'}")
        assert (role(restarted) or {}).get("role") == "follower"
        wait_caught_up(survivor, node_ids)
    finally:
        for node in nodes:
            node.stop()
        for master in (restarted, survivor, killed):
            if master is not None:
                master.stop()
    assert_history_whole(heads.url, node_ids)


@pytest.mark.parametrize("victim", ["leader", "follower"])
def test_a_master_gone_for_good_has_its_share_taken_over(heads: Heads, victim: str) -> None:
    timeout = ("--member-timeout", "3")
    leader = heads.start("a", *timeout)
    follower = heads.start("b", *timeout)
    nodes = heads.nodes(2)
    node_ids = heads.node_ids(2)
    survivor, killed = (follower, leader) if victim == "leader" else (leader, follower)
    try:
        wait_until(lambda: all((counters(leader, n).get("last_seq") or 0) >= 10 for n in node_ids))
        killed.stop(signal.SIGKILL)
        wait_until(lambda: (role(survivor) or {}).get("role") == "leader", FAILOVER_LIMIT_S)
        # Mosquitto keeps giving the dead member its turn: until the leader takes its
        # session over, every other sample of each node waits there, and the gaps grow.
        wait_caught_up(survivor, node_ids)
    finally:
        for node in nodes:
            node.stop()
        survivor.stop()
    assert_history_whole(heads.url, node_ids)
    assert f"master {heads.prefix}-{'a' if victim == 'leader' else 'b'} was silent" in (
        survivor.log()
    )

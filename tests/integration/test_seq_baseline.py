"""Seq gaps mean envelopes meant for the master that never came, not what predates it."""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cluster_protocol import Envelope, encode_envelope, topic_for
from tests.integration.conftest import start_prefixed_master
from tests.support.broker import MosquittoBroker, free_port
from tests.support.processes import RunningMaster, Service, start_node
from tests.support.waiting import wait_until
from tests.support.watcher import Watcher

DETAILS = {"hostname": "sim", "cpu_percent_used": 1.0, "ram": 1, "cpu": "sim", "cpu_cores": 1}


@pytest.fixture
def prefix() -> str:
    """A topic prefix of the test's own: retained messages of other tests stay out of sight."""
    return f"seq{uuid.uuid4().hex[:8]}"


def node_for(broker_url: str, workdir: Path, node_id: str, prefix: str, interval: float) -> Service:
    return start_node(broker_url, workdir, node_id, "--prefix", prefix, interval=interval)


def counters(master: RunningMaster, node_id: str) -> dict[str, Any]:
    view = master.node(node_id)
    return {"received": 0, "last_seq": None} if view is None else dict(view["counters"])


def wait_counters(
    master: RunningMaster,
    node_id: str,
    ok: Callable[[dict[str, Any]], bool],
    message: str,
    timeout_s: float = 10.0,
) -> dict[str, Any]:
    """Wait until the node's counters satisfy `ok`; return them."""

    def check() -> dict[str, Any] | None:
        found = counters(master, node_id)
        return found if ok(found) else None

    return wait_until(check, timeout_s, 0.1, message)


def spool_seq(workdir: Path, node_id: str) -> int:
    """The last seq a node handed out, read from its spool file."""
    path = workdir / f"node-{node_id}" / f"spool-{node_id}.sqlite3"
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(path, timeout=5) as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'seq'").fetchone()
    except sqlite3.OperationalError:  # the node is still creating it
        return 0
    return int(row[0]) if row else 0


class SimulatedNode:
    """A node as bytes on the wire: envelopes with the seqs a test chooses, PUBACKs awaited."""

    def __init__(self, broker: MosquittoBroker, node_id: str, prefix: str) -> None:
        self.node_id = node_id
        self.prefix = prefix
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def send(self, message_type: str, seq: int, payload: Any, retain: bool = False) -> None:
        envelope = Envelope(message_type, self.node_id, time.time(), seq, payload)
        topic = topic_for(self.node_id, message_type, self.prefix)
        info = self.client.publish(topic, encode_envelope(envelope), 1, retain)
        info.wait_for_publish(10)
        assert info.is_published()

    def metrics(self, *seqs: int) -> None:
        for seq in seqs:
            self.send("metrics", seq, {"cpu_percent": float(seq % 100)})

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def simulated(broker: MosquittoBroker, prefix: str) -> Iterator[SimulatedNode]:
    node = SimulatedNode(broker, "sim-01", prefix)
    yield node
    node.close()


def test_a_master_started_after_its_node_counts_no_gap(
    broker: MosquittoBroker, tmp_path: Path, prefix: str
) -> None:
    node_id = "early-01"
    watcher = Watcher(broker.host, broker.port, f"{prefix}/#")
    node = node_for(broker.url, tmp_path, node_id, prefix, interval=0.5)
    master = None
    try:
        # Six seconds of metrics the master was never there for.
        watcher.wait_for(topic_for(node_id, "metrics", prefix), count=12, timeout_s=20)
        master = start_prefixed_master(broker, tmp_path, prefix)
        running = master
        first = wait_counters(
            running, node_id, lambda c: c["last_seq"] is not None, "the first live envelope"
        )
        seen = wait_counters(
            running,
            node_id,
            lambda c: c["last_seq"] >= first["last_seq"] + 4,
            "four more live envelopes",
        )
        view = master.node(node_id)
        assert view is not None
        assert view["details"] is not None, "the retained details are still applied"
        assert seen["last_seq"] > 12
        assert seen["seq_gaps"] == 0
        assert seen["duplicates"] == 0
    finally:
        watcher.close()
        node.stop()
        if master is not None:
            master.stop()


def test_a_node_restarted_on_a_fresh_spool_delivers_it_without_gaps_or_duplicates(
    broker: MosquittoBroker, tmp_path: Path, prefix: str
) -> None:
    node_id = "reborn-01"
    master = start_prefixed_master(broker, tmp_path / "master", prefix)
    old, new = tmp_path / "old", tmp_path / "new"
    node = node_for(broker.url, old, node_id, prefix, interval=0.25)
    try:
        wait_until(lambda: (counters(master, node_id)["last_seq"] or 0) >= 16, 20, 0.1, "seq 16")
        node.stop()
        # The node comes back on a new SD card (a fresh spool, seq from 1) and cannot reach
        # the broker at first: it spools seqs far below what the master last saw.
        node = node_for(f"mqtt://127.0.0.1:{free_port()}", new, node_id, prefix, interval=0.25)
        wait_until(lambda: spool_seq(new, node_id) >= 4, 10, 0.1, "four samples spooled")
        assert node.stop() == 0, node.log()
        spooled = spool_seq(new, node_id)
        assert spooled < 16, "the restart must go below what the master saw"
        before = counters(master, node_id)
        node = node_for(broker.url, new, node_id, prefix, interval=0.25)
        # Birth, details, the spool, then three samples taken after the reconnect.
        after = wait_until(
            lambda: (
                (c := counters(master, node_id))["received"] >= before["received"] + spooled + 5
                and c
            ),
            20,
            0.1,
            "the new run's spool and three more samples",
        )
        assert after["seq_gaps"] == 0
        assert after["duplicates"] == 0, "spooled samples were thrown away as duplicates"
        # Every seq of the new run arrived: the spool, the birth details and what followed.
        assert after["received"] - before["received"] >= after["last_seq"]
    finally:
        node.stop()
        master.stop()


def test_a_real_gap_is_still_counted_but_not_what_came_before_the_master(
    broker: MosquittoBroker, tmp_path: Path, prefix: str, simulated: SimulatedNode
) -> None:
    simulated.send("machine_details", 1, DETAILS, retain=True)
    simulated.metrics(2, 3, 4, 5)  # no one is subscribed yet
    master = start_prefixed_master(broker, tmp_path, prefix)
    try:
        wait_until(lambda: master.node("sim-01"), 10, message="the retained details")
        simulated.metrics(20, 21, 23)  # 22 is lost on the way
        seen = wait_counters(master, "sim-01", lambda c: c["last_seq"] == 23, "seq 23")
        assert seen["seq_gaps"] == 1
        simulated.metrics(22)  # it was late, not lost
        wait_until(lambda: counters(master, "sim-01")["seq_gaps"] == 0, 10, message="filled")
    finally:
        master.stop()


def test_a_restarted_master_counts_a_gap_in_what_its_session_queued(
    broker: MosquittoBroker, tmp_path: Path, prefix: str, simulated: SimulatedNode
) -> None:
    master = start_prefixed_master(broker, tmp_path, prefix)
    simulated.send("machine_details", 1, DETAILS, retain=True)
    simulated.metrics(2, 3)
    wait_until(lambda: counters(master, "sim-01")["last_seq"] == 3, 10, message="seq 3")
    assert master.stop() == 0, master.log()

    simulated.metrics(4, 5, 7)  # queued for the master's session; 6 never comes
    simulated.send("machine_details", 8, DETAILS, retain=True)  # queued and retained

    master = start_prefixed_master(broker, tmp_path, prefix, db=master.database)
    try:
        seen = wait_counters(master, "sim-01", lambda c: c["last_seq"] == 8, "seq 8")
        assert seen["seq_gaps"] == 1
        assert seen["duplicates"] == 0
    finally:
        master.stop()

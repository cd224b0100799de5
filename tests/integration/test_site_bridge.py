"""A site broker bridged to the central one, run from the shipped bridge-site.conf.example.

Two real Mosquitto processes: the central broker (the master's) and a site broker whose config
is mosquitto/bridge-site.conf.example with only its listener, the central address and the file
paths rewritten. The bridge reaches the central broker through a relay the test can cut, as a
WAN link would be. A real node publishes to the site, a real master reads the central broker.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.conftest import REPO_ROOT
from tests.integration.test_mosquitto_config import ShippedBroker
from tests.support.broker import MosquittoBroker
from tests.support.mqtt_proxy import MqttProxy
from tests.support.processes import RunningMaster, Service, start_master, start_node
from tests.support.waiting import wait_until
from tests.support.watcher import Watcher

EXAMPLE = REPO_ROOT / "mosquitto" / "bridge-site.conf.example"
BRIDGE_ID = "picluster-site-a"
BRIDGE_STATE = f"$SYS/broker/connection/{BRIDGE_ID}/state"
NODE_PASSWORD = "site-node-secret"
CUT_SAMPLES = 6  # envelopes the node publishes while the link is cut (one a second)


@dataclass
class SiteBroker(ShippedBroker):
    """Mosquitto running the shipped bridge example, with only listener, address and paths set."""

    central_port: int = 0
    source: ClassVar[Path] = EXAMPLE

    def more_lines(self) -> dict[str, str]:
        """The central broker's address: the test's relay to it."""
        return {"address central.example.net:1883": f"address 127.0.0.1:{self.central_port}"}


@dataclass
class Site:
    """Central broker + master, the link, the site broker and one node publishing to it."""

    central: MosquittoBroker
    link: MqttProxy
    site: SiteBroker
    master: RunningMaster
    node_id: str
    workdir: Path
    node: Service | None = None
    states: Watcher | None = None
    seen: Watcher | None = None  # everything the node's topics carry at the central broker

    def _spool(self, query: str) -> int:
        path = self.workdir / f"node-{self.node_id}" / f"spool-{self.node_id}.sqlite3"
        if not path.exists():
            return 0
        with sqlite3.connect(path, timeout=5) as db:
            row = db.execute(query).fetchone()
        return int(row[0]) if row else 0

    def node_seq(self) -> int:
        """The last seq the node handed out (from its spool's meta table)."""
        return self._spool("SELECT value FROM meta WHERE key = 'seq'")

    def spooled(self) -> int:
        """Envelopes waiting in the node's own spool for the site broker's PUBACK."""
        return self._spool("SELECT COUNT(*) FROM outbox")

    def counters(self) -> dict[str, Any]:
        """The master's counters for the node (last_seq, seq_gaps, ...)."""
        view = self.master.node(self.node_id)
        return view["counters"] if view else {"last_seq": None, "seq_gaps": 0}

    def master_seq(self) -> int:
        """The highest seq the master holds for the node (-1 for none)."""
        last = self.counters()["last_seq"]
        return -1 if last is None else int(last)

    def wait_delivered(self, seq: int, timeout_s: float = 40) -> None:
        """Wait until the master holds the node's stream up to `seq`."""
        wait_until(
            lambda: self.master_seq() >= seq,
            timeout_s,
            0.2,
            f"the master at seq {seq} (has {self.counters()}; node at {self.node_seq()})",
        )

    def central_seqs(self) -> list[int]:
        """The seqs of every envelope of the node the central broker delivered."""
        assert self.seen is not None
        topics = ("status", "machine_details", "metrics", "message", "reply")
        seen = [m for kind in topics for m in self.seen.on(f"cluster/{self.node_id}/{kind}")]
        return [json.loads(m.payload)["seq"] for m in seen if m.payload]

    def bridge_state(self) -> bytes | None:
        """The latest bridge notification the central broker passed on (b'1' up, b'0' down)."""
        assert self.states is not None
        seen = self.states.on(BRIDGE_STATE)
        return seen[-1].payload if seen else None

    def wait_bridge(self, state: bytes, timeout_s: float = 30) -> None:
        """Wait until the central broker says the bridge is up (b'1') or down (b'0')."""
        wait_until(lambda: self.bridge_state() == state, timeout_s, 0.05, f"bridge {state!r}")

    def wait_node_seq(self, seq: int, timeout_s: float = 20) -> int:
        """Wait until the node has handed out `seq`; return its seq then."""
        return wait_until(
            lambda: now if (now := self.node_seq()) >= seq else None,
            timeout_s,
            0.1,
            f"the node at seq {seq}",
        )


@pytest.fixture
def site(tmp_path: Path, mosquitto_binary: str) -> Iterator[Site]:
    """Everything running, the node's first samples at the master through the bridge."""
    node_id = f"site-{uuid.uuid4().hex[:6]}"
    central = MosquittoBroker(tmp_path / "central").start()
    link = MqttProxy(central.port)
    site_broker = SiteBroker(
        tmp_path / "site", users={node_id: NODE_PASSWORD}, central_port=link.port
    )
    running: Site | None = None
    try:
        site_broker.start()
        master = start_master(central.url, tmp_path / "master", "--no-ha-discovery")
        running = Site(central, link, site_broker, master, node_id, tmp_path)
        running.states = Watcher(central.host, central.port, "$SYS/broker/connection/+/state")
        running.wait_bridge(b"1")
        running.seen = Watcher(central.host, central.port, f"cluster/{node_id}/+")
        running.node = start_node(
            site_broker.url,
            tmp_path,
            node_id,
            "--keepalive", "2",
            interval=1.0,
            env={"CLUSTER_PASSWORD": NODE_PASSWORD},
        )  # fmt: skip
        running.wait_delivered(2, timeout_s=30)
        yield running
    finally:
        if running is not None:
            if running.node is not None:
                running.node.stop()
            for watcher in (running.states, running.seen):
                if watcher is not None:
                    watcher.close()
            running.master.stop()
        site_broker.stop()
        link.close()
        central.stop()


def publish(broker: MosquittoBroker, topic: str, payload: bytes) -> None:
    """Publish at QoS 1 as the master would, and wait for the broker's PUBACK."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        client.publish(topic, payload, qos=1).wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


def cut_for(site: Site, samples: int) -> tuple[int, int]:
    """Cut the link while the node publishes `samples` more; return (node seq at the cut, now).

    Asserts what the master's side sees meanwhile: nothing at all.
    """
    site.link.cut()
    site.wait_bridge(b"0")  # the central broker saw the bridge go: its will
    # Whatever had crossed before the cut is at the master once the node published once more.
    at_cut = site.wait_node_seq(site.node_seq() + 1)
    master_before, central_before = site.master_seq(), len(site.central_seqs())
    during = site.wait_node_seq(at_cut + samples, timeout_s=samples + 15)
    assert site.master_seq() == master_before, "the master received data through a cut link"
    assert len(site.central_seqs()) == central_before, "data crossed a cut link"
    assert during - master_before >= samples, (during, master_before)
    # The site broker acknowledged every sample: the node's own spool is empty, so what rides
    # out the cut is the site broker's queue for the bridge.
    assert site.spooled() <= 1  # bar the newest sample in flight
    return at_cut, during


def assert_all_arrived(site: Site, first: int, last: int) -> None:
    """Every seq from `first` to `last` reached the central broker, and the master has them."""
    wait_until(
        lambda: max(site.central_seqs(), default=-1) >= last,
        40,
        0.1,
        f"seq {last} at the central broker (node at {site.node_seq()})",
    )
    missing = sorted(set(range(first, last + 1)) - set(site.central_seqs()))
    assert not missing, f"lost across the bridge: {missing}"
    site.wait_delivered(last)


def test_a_cut_link_loses_nothing(site: Site) -> None:
    """The node keeps publishing through a cut; afterwards every sample arrives centrally.

    Loss is checked seq by seq at the central broker, and by the master's gap counter: the
    bridge resends the node's retained birth and details as live messages at each reconnect,
    which the master must not take for a restart (it once counted 5-20 gaps per cut).
    """
    central_status = Watcher(site.central.host, site.central.port, f"cluster/{site.node_id}/+")
    try:
        # The node's status is retained on the central broker too (seen by a new subscriber).
        status = central_status.wait_for(f"cluster/{site.node_id}/status")[0]
        assert status.retain
        assert json.loads(status.payload)["payload"]["state"] == "online"
    finally:
        central_status.close()
    connections = site.link.connections

    at_cut, during = cut_for(site, CUT_SAMPLES)
    site.link.restore()
    site.wait_bridge(b"1")
    assert_all_arrived(site, at_cut, during + 1)
    assert site.link.connections == connections + 1  # one new bridge connection carried it all
    assert site.master.node(site.node_id)["state"] == "online"  # type: ignore[index]
    assert site.counters()["seq_gaps"] == 0


def test_a_command_reaches_the_site_and_its_reply_comes_back(site: Site) -> None:
    """The master's ping crosses the bridge to the node, and the answer crosses back."""
    request = urllib.request.Request(
        f"{site.master.api}/api/nodes/{site.node_id}/commands",
        data=json.dumps({"command": "ping", "args": {}, "timeout_s": 10}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    started = time.monotonic()
    with urllib.request.urlopen(request, timeout=15) as response:
        assert response.status == 200
        record = json.load(response)
    assert record["status"] == "ok", record
    assert record["ok"] is True
    assert record["result"]["agent_version"]
    assert time.monotonic() - started < 5


def test_a_command_sent_during_a_cut_is_delivered_when_the_link_returns(site: Site) -> None:
    """The central broker keeps the bridge's session, so a command waits there for the site."""
    replies = Watcher(site.central.host, site.central.port, f"cluster/{site.node_id}/reply")
    try:
        site.link.cut()
        site.wait_bridge(b"0")
        command_id = uuid.uuid4().hex
        body = {"id": command_id, "args": {}, "expires": time.time() + 120}
        publish(site.central, f"cluster/{site.node_id}/cmd/ping", json.dumps(body).encode())
        site.wait_node_seq(site.node_seq() + 2)
        assert not replies.on(f"cluster/{site.node_id}/reply")  # nothing can cross yet

        site.link.restore()
        site.wait_bridge(b"1")
        seen = replies.wait_for(f"cluster/{site.node_id}/reply", timeout_s=40)
        reply = json.loads(seen[0].payload)["payload"]
        assert reply["id"] == command_id
        assert reply["ok"] is True, reply
    finally:
        replies.close()


def test_a_site_broker_restarted_during_a_cut_keeps_its_queue(site: Site) -> None:
    """SIGTERM saves the bridge's queue; started again, it sends it once the link is back."""
    at_cut, _ = cut_for(site, CUT_SAMPLES // 2)
    site.site.stop(signal.SIGTERM)
    site.site.start()  # same port, same persistence directory
    # The node reconnects to the restarted site broker and goes on publishing.
    during = site.wait_node_seq(site.node_seq() + CUT_SAMPLES // 2, timeout_s=30)
    site.link.restore()
    site.wait_bridge(b"1")
    assert_all_arrived(site, at_cut, during + 1)
    assert site.counters()["seq_gaps"] == 0

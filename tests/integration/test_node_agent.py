"""The node agent against a real Mosquitto: topics, retain, will, SIGTERM, outages, spool, say."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cluster_protocol import (
    MACHINE_DETAILS_FIELDS,
    METRICS_FIELDS,
    REQUIRED_MACHINE_DETAILS,
    Envelope,
    EnvelopeError,
    decode_envelope,
    encode_envelope,
)
from node_publisher.app import NodeAgent
from node_publisher.settings import load_settings
from node_publisher.spool import Spool
from tests.support.broker import MosquittoBroker
from tests.support.waiting import wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]
KEEPALIVE_S = 2


class NodeProcess:
    """`python -m node_publisher run` as a child process, stopped by its PID."""

    def __init__(self, url: str, node_id: str, state_dir: Path, interval: float = 0.2) -> None:
        self.log_path = state_dir / f"{node_id}.log"
        state_dir.mkdir(parents=True, exist_ok=True)
        self.state_dir = state_dir
        self.node_id = node_id
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "node_publisher",
                    "run",
                    "--broker",
                    url,
                    "--node-id",
                    node_id,
                    "--interval",
                    str(interval),
                    "--keepalive",
                    str(KEEPALIVE_S),
                    "--state-dir",
                    str(state_dir),
                    "--log-level",
                    "DEBUG",
                ],
                cwd=REPO_ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def spooled(self) -> int:
        """Envelopes waiting in the node's spool right now."""
        path = self.state_dir / f"spool-{self.node_id}.sqlite3"
        if not path.exists():
            return 0
        with sqlite3.connect(path, timeout=5) as db:
            (count,) = db.execute("SELECT COUNT(*) FROM outbox").fetchone()
        return int(count)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def start_node(tmp_path: Path) -> Iterator[Callable[..., NodeProcess]]:
    started: list[NodeProcess] = []

    def start(url: str, node_id: str, interval: float = 0.2, state: str = "state") -> NodeProcess:
        node = NodeProcess(url, node_id, tmp_path / state, interval)
        started.append(node)
        return node

    yield start
    for node in started:
        node.stop()


class SessionWatcher:
    """A subscriber with a persistent session, so a broker restart loses none of its messages."""

    def __init__(self, broker: MosquittoBroker, topic_filter: str) -> None:
        self.envelopes: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._filter = topic_filter
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"watch-{os.getpid()}", protocol=mqtt.MQTTv5
        )
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *args: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(1, 1)
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = 300
        self.client.connect(broker.host, broker.port, clean_start=False, properties=properties)
        self.client.loop_start()
        assert self._subscribed.wait(10)

    def _on_connect(self, client: mqtt.Client, *args: Any) -> None:
        client.subscribe(self._filter, qos=1)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.envelopes.append(json.loads(msg.payload))

    def seqs(self, message_type: str | None = None) -> list[int]:
        with self._lock:
            return [
                e["seq"]
                for e in self.envelopes
                if e["type"] != "status" and message_type in (None, e["type"])
            ]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def first_occurrences(values: list[int]) -> list[int]:
    seen: set[int] = set()
    return [v for v in values if not (v in seen or seen.add(v))]  # type: ignore[func-returns-value]


def decoded(seen: Any, node: str, message_type: str) -> Any:
    return decode_envelope(seen.payload, node, message_type, 0.0)


def test_subscriber_sees_status_details_and_metrics_on_the_documented_topics(
    broker, watch, start_node
):
    live = watch("cluster/doc-1/#")
    node = start_node(broker.url, "doc-1")
    metrics = live.wait_for("cluster/doc-1/metrics", count=3)
    for seen in metrics:
        envelope = decoded(seen, "doc-1", "metrics")
        assert seen.qos == 1
        assert set(envelope.payload) == set(METRICS_FIELDS)
    seqs = [json.loads(m.payload)["seq"] for m in metrics]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == len(seqs)
    # A subscriber arriving later gets status and details from the broker's retained store.
    late = watch("cluster/doc-1/#")
    (status,) = late.wait_for("cluster/doc-1/status")
    assert (status.retain, status.qos) == (True, 1)
    assert decoded(status, "doc-1", "status").payload == {"state": "online"}
    (details,) = late.wait_for("cluster/doc-1/machine_details")
    assert (details.retain, details.qos) == (True, 1)
    payload = decoded(details, "doc-1", "machine_details").payload
    assert set(REQUIRED_MACHINE_DETAILS) <= set(payload)
    assert set(payload) == set(MACHINE_DETAILS_FIELDS)
    assert payload["interval_s"] == 0.2
    assert node.process.poll() is None


def test_a_node_started_before_its_broker_connects_when_it_appears(tmp_path, watch, start_node):
    broker = MosquittoBroker(tmp_path / "late-broker")
    node = start_node(broker.url, "early-1")
    try:
        wait_until(lambda: "cannot reach broker" in node.log(), message="a failed connect")
        broker.start()
        live = watch("cluster/early-1/#", on=broker)
        live.wait_for("cluster/early-1/metrics", count=2, timeout_s=15)
    finally:
        broker.stop()


def test_kill_9_publishes_the_retained_offline_will(broker, watch, start_node):
    live = watch("cluster/will-1/status")
    node = start_node(broker.url, "will-1")
    live.wait_for("cluster/will-1/status")
    node.process.send_signal(signal.SIGKILL)
    statuses = live.wait_for("cluster/will-1/status", count=2, timeout_s=1.5 * KEEPALIVE_S)
    assert json.loads(statuses[-1].payload)["payload"] == {"state": "offline"}
    (retained,) = watch("cluster/will-1/status").wait_for("cluster/will-1/status")
    assert retained.retain
    assert json.loads(retained.payload)["payload"] == {"state": "offline"}


def test_sigterm_publishes_offline_and_exits_0(broker, watch, start_node):
    live = watch("cluster/term-1/status")
    node = start_node(broker.url, "term-1")
    live.wait_for("cluster/term-1/status")
    node.process.send_signal(signal.SIGTERM)
    assert node.process.wait(10) == 0
    statuses = live.wait_for("cluster/term-1/status", count=2)
    assert [json.loads(s.payload)["payload"]["state"] for s in statuses] == ["online", "offline"]
    (retained,) = watch("cluster/term-1/status").wait_for("cluster/term-1/status")
    assert json.loads(retained.payload)["payload"] == {"state": "offline"}


def assert_every_seq_arrived_in_order(watcher: SessionWatcher, last_seq: int) -> None:
    received = watcher.seqs()
    assert sorted(set(received)) == list(range(1, last_seq + 1)), "missing seqs"
    metrics = first_occurrences(watcher.seqs("metrics"))
    assert metrics == sorted(metrics), "metrics out of order"


def test_broker_outage_loses_nothing_and_keeps_order(make_broker, start_node):
    broker = make_broker(persistence=True)  # for the watcher's session only
    watcher = SessionWatcher(broker, "cluster/outage-1/#")
    try:
        node = start_node(broker.url, "outage-1")
        wait_until(lambda: len(watcher.seqs("metrics")) >= 3, message="metrics before outage")
        broker.stop()
        wait_until(lambda: node.spooled() >= 8, message="metrics spooled during the outage")
        broker.start()
        wait_until(lambda: node.spooled() == 0, timeout_s=20, message="spool drained")
        last = max(watcher.seqs())
        wait_until(lambda: set(range(1, last + 1)) <= set(watcher.seqs()), message="all seqs")
        assert_every_seq_arrived_in_order(watcher, last)
        assert node.process.poll() is None
    finally:
        watcher.close()


def test_node_killed_during_an_outage_delivers_its_spool_after_restart(make_broker, start_node):
    broker = make_broker(persistence=True)
    watcher = SessionWatcher(broker, "cluster/crash-1/#")
    try:
        first = start_node(broker.url, "crash-1")
        wait_until(lambda: len(watcher.seqs("metrics")) >= 2, message="metrics before outage")
        broker.stop()
        wait_until(lambda: first.spooled() >= 5, message="metrics spooled during the outage")
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(10)
        broker.start()
        second = start_node(broker.url, "crash-1")
        wait_until(lambda: second.spooled() == 0, timeout_s=20, message="spool drained")
        before_kill = max(watcher.seqs())
        wait_until(
            lambda: max(watcher.seqs()) > before_kill + 2, message="new seqs after the restart"
        )
        last = max(watcher.seqs())
        wait_until(lambda: set(range(1, last + 1)) <= set(watcher.seqs()), message="all seqs")
        assert_every_seq_arrived_in_order(watcher, last)
    finally:
        watcher.close()


def test_a_spool_backlog_drains_in_order_after_the_birth(broker, watch, tmp_path):
    settings = load_settings(
        ["--broker", broker.url, "--node-id", "backlog-1", "--state-dir", str(tmp_path)], {}
    )
    spool = Spool(settings.spool_path, settings.spool_max)
    for _ in range(1000):  # what a node collects in almost 3 hours at the default interval
        spool.append(
            "cluster/backlog-1/metrics",
            lambda seq: encode_envelope(Envelope("metrics", "backlog-1", 1.0, seq, {})),
        )
    spool.close()
    live = watch("cluster/backlog-1/#")
    agent = NodeAgent(settings)
    agent.start()
    try:
        live.wait_for("cluster/backlog-1/metrics", count=1000, timeout_s=30)
    finally:
        agent.stop()
    topics = [m.topic for m in live.messages]
    assert topics.index("cluster/backlog-1/status") < 20  # not behind the backlog
    seqs = [json.loads(m.payload)["seq"] for m in live.on("cluster/backlog-1/metrics")]
    assert first_occurrences(seqs)[:1000] == list(range(1, 1001))


@pytest.fixture
def agent_for(broker: MosquittoBroker, tmp_path: Path) -> Iterator[Callable[..., NodeAgent]]:
    agents: list[NodeAgent] = []

    def make(node_id: str, **kwargs: Any) -> NodeAgent:
        argv = ["--broker", broker.url, "--node-id", node_id, "--state-dir", str(tmp_path)]
        agent = NodeAgent(load_settings([*argv, "--interval", "0.2"], {}), **kwargs)
        agent.start()
        agents.append(agent)
        assert agent.wait_ready(10)
        return agent

    yield make
    for agent in agents:
        agent.stop()


def test_an_oversize_message_is_refused_before_publishing_and_traffic_continues(watch, agent_for):
    live = watch("cluster/big-1/message")
    agent = agent_for("big-1")
    with pytest.raises(EnvelopeError, match="over the 65536-byte limit"):
        agent.publish_message("x" * 70_000)
    seq = agent.publish_message("small one")
    (seen,) = live.wait_for("cluster/big-1/message")
    assert json.loads(seen.payload)["payload"] == "small one"
    assert json.loads(seen.payload)["seq"] == seq
    assert agent.oversize == 1
    assert all(len(m.payload) < 1000 for m in live.on("cluster/big-1/message"))


def test_commands_reach_the_handler_and_a_failing_handler_does_not_deafen_the_node(
    broker, agent_for
):
    received: list[tuple[str, bytes, bool]] = []

    def handler(name: str, payload: bytes, retained: bool) -> None:
        received.append((name, payload, retained))
        if name == "explode":
            raise RuntimeError("bug in a handler")

    agent = agent_for("cmd-1", command_handler=handler)
    sender = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    sender.connect(broker.host, broker.port)
    sender.loop_start()
    try:
        sender.publish("cluster/cmd-1/cmd/explode", b"{}", qos=1).wait_for_publish(5)
        sender.publish("cluster/cmd-1/cmd/ping", b'{"id":"1"}', qos=1).wait_for_publish(5)
        wait_until(lambda: len(received) == 2, message="both commands handled")
    finally:
        sender.disconnect()
        sender.loop_stop()
    assert received == [("explode", b"{}", False), ("ping", b'{"id":"1"}', False)]
    assert agent.callback_errors == 1


def run_cli(*args: str, timeout_s: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "node_publisher", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def test_say_publishes_one_message_envelope(broker, watch, tmp_path):
    live = watch("cluster/say-1/#")
    result = run_cli(
        "say", "disk replaced", "--broker", broker.url, "--node-id", "say-1",
        "--state-dir", str(tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (seen,) = live.wait_for("cluster/say-1/message")
    assert seen.qos == 1
    envelope = decode_envelope(seen.payload, "say-1", "message", 0.0)
    assert (envelope.payload, envelope.seq) == ("disk replaced", 1)


def test_say_fails_clearly_without_a_broker_or_when_oversize(broker, watch, tmp_path):
    down = MosquittoBroker(tmp_path / "nobody")  # a free port nothing listens on
    result = run_cli(
        "say", "hello", "--broker", down.url, "--node-id", "say-2", "--state-dir", str(tmp_path),
        "--timeout", "3",
    )  # fmt: skip
    assert result.returncode == 1
    assert "cannot connect to mqtt://127.0.0.1" in result.stderr
    assert "Traceback" not in result.stderr
    live = watch("cluster/say-2/#")
    big = run_cli(
        "say", "y" * 70_000, "--broker", broker.url, "--node-id", "say-2",
        "--state-dir", str(tmp_path),
    )  # fmt: skip
    assert big.returncode == 1
    assert "over the 65536-byte limit" in big.stderr
    ok = run_cli(
        "say", "after", "--broker", broker.url, "--node-id", "say-2", "--state-dir", str(tmp_path)
    )
    assert ok.returncode == 0, ok.stderr
    assert [json.loads(m.payload)["payload"] for m in live.wait_for("cluster/say-2/message")] == [
        "after"
    ]


def test_sample_prints_two_envelopes_without_a_broker(tmp_path):
    result = run_cli("sample", "--node-id", "sample-1", "--state-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [json.loads(line)["type"] for line in lines] == ["machine_details", "metrics"]
    details = decode_envelope(lines[0].encode(), "sample-1", "machine_details", 0.0)
    assert set(details.payload) == set(MACHINE_DETAILS_FIELDS)
    metrics = decode_envelope(lines[1].encode(), "sample-1", "metrics", 0.0)
    assert set(metrics.payload) == set(METRICS_FIELDS)

"""Home Assistant discovery of a large cluster, paced by PUBACKs, over a real Mosquitto."""

from __future__ import annotations

import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cluster_protocol.payloads import MachineDetails
from master_service.home_assistant.publisher import DiscoveryPublisher
from tests.support.broker import MosquittoBroker
from tests.support.waiting import wait_until
from tests.support.watcher import Watcher

NODES = 600
WINDOW = 8
DETAILS: MachineDetails = {
    "hostname": "raspberrypi",
    "cpu_percent_used": 3.0,
    "cpu": "Cortex-A72",
    "ram": 4 * 1024**3,
    "cpu_cores": 4,
    "model": "Raspberry Pi 4 Model B Rev 1.4",
    "agent_version": "0.1.0",
    "interval_s": 10,
}


@dataclass
class CountingPublish:
    """paho's publish (its receipts pace the publisher), noting how many await a PUBACK."""

    client: mqtt.Client
    unacked: deque[mqtt.MQTTMessageInfo] = field(default_factory=deque)
    most_unacked: int = 0
    by_thread: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(
        self, topic: str, payload: bytes | None, qos: int, retain: bool
    ) -> mqtt.MQTTMessageInfo:
        with self.lock:
            # The broker acknowledges one client's messages in order: drop from the front.
            while self.unacked and self.unacked[0].is_published():
                self.unacked.popleft()
            receipt = self.client.publish(topic, payload or None, qos=qos, retain=retain)
            if "/device/picluster_pi-" in topic:  # node announcements (not the cluster's)
                self.unacked.append(receipt)
                self.most_unacked = max(self.most_unacked, len(self.unacked))
                name = threading.current_thread().name
                self.by_thread[name] = self.by_thread.get(name, 0) + 1
            return receipt


@pytest.fixture
def paho_publish(broker: MosquittoBroker) -> Iterator[CountingPublish]:
    connected = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.on_connect = lambda *args: connected.set()
    client.connect(broker.host, broker.port)
    client.loop_start()
    assert connected.wait(10), "publisher client could not connect"
    yield CountingPublish(client)
    client.disconnect()
    client.loop_stop()


def device_topics(watcher: Watcher, prefix: str) -> set[str]:
    """Device config topics seen with a config (not a clear)."""
    return {m.topic for m in list(watcher.messages) if m.payload and "/device/" in m.topic}


def node_ids(count: int) -> list[str]:
    """`count` node ids."""
    return [f"pi-{index:04d}" for index in range(count)]


def announce_nodes(publisher: DiscoveryPublisher, nodes: list[str]) -> None:
    """Details, then the first metrics: what makes the publisher announce a node."""
    for node in nodes:
        publisher.node_details(node, {**DETAILS, "hostname": node})
        publisher.node_metrics_shape(node, ["/"], False)


def until_announced(
    watcher: Watcher, prefix: str, expected: set[str]
) -> Callable[[], set[str] | None]:
    """A wait_until condition: every expected device topic was seen."""
    return lambda: seen if (seen := device_topics(watcher, prefix)) >= expected else None


def test_a_large_cluster_is_announced_completely_with_few_publishes_in_flight(
    broker, paho_publish, watch
):
    prefix = f"ha-{uuid.uuid4().hex[:8]}"
    watcher = watch(f"{prefix}/#")
    connected = threading.Event()  # the master is not connected yet: everything waits
    publisher = DiscoveryPublisher(paho_publish, prefix=prefix, window=WINDOW, connected=connected)
    nodes = node_ids(NODES)
    announce_nodes(publisher, nodes)
    assert publisher.pending == NODES
    assert paho_publish.by_thread == {}

    connected.set()
    expected = {f"{prefix}/device/picluster_{node}/config" for node in nodes}
    wait_until(until_announced(watcher, prefix, expected), 60, message="every node announced")
    wait_until(lambda: publisher.pending == 0, 10, message="nothing left to announce")
    assert device_topics(watcher, prefix) == expected
    assert paho_publish.most_unacked <= WINDOW
    assert paho_publish.by_thread == {"picluster-ha-pacer": NODES}

    # Home Assistant restarts: its birth re-announces every node, paced the same way.
    watcher.messages.clear()
    paho_publish.most_unacked = 0
    publisher.on_ha_status(b"online")
    wait_until(until_announced(watcher, prefix, expected), 60, message="every node re-announced")
    assert paho_publish.most_unacked <= WINDOW
    assert publisher.announced == 2 * NODES


def test_a_node_forgotten_while_waiting_is_never_announced(broker, paho_publish, watch):
    prefix = f"ha-{uuid.uuid4().hex[:8]}"
    watcher = watch(f"{prefix}/#")
    connected = threading.Event()
    publisher = DiscoveryPublisher(paho_publish, prefix=prefix, window=2, connected=connected)
    nodes = node_ids(40)
    announce_nodes(publisher, nodes)
    forgotten = nodes[::4]
    for node in forgotten:
        publisher.forget(node)
    assert publisher.pending == len(nodes) - len(forgotten)

    connected.set()
    kept = {f"{prefix}/device/picluster_{n}/config" for n in nodes if n not in forgotten}
    wait_until(until_announced(watcher, prefix, kept), 30, message="the kept nodes announced")
    wait_until(lambda: publisher.pending == 0, 10, message="nothing left to announce")
    assert device_topics(watcher, prefix) == kept


def test_without_receipts_every_announcement_goes_out_at_once():
    sent: list[str] = []
    publisher = DiscoveryPublisher(lambda topic, *rest: sent.append(topic), window=1)
    announce_nodes(publisher, node_ids(5))
    assert publisher.pending == 0
    assert len([t for t in sent if "/device/" in t]) == 5

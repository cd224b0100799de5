"""The listing the API serves is fresh: a value is there as soon as its flush committed.

A real master (`MasterService` over a real Mosquitto) and a node's envelopes published with
paho; the test waits for the commit that holds them (a commit listener, no sleeping) and reads
/api/nodes, ?tag=, /api/nodes/{node} and /metrics at once, with no retry.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cluster_protocol import Envelope, encode_envelope, topic_for
from master_service.app import MasterService, build
from master_service.settings import MasterSettings
from tests.support.broker import MosquittoBroker
from tests.support.processes import master_database
from tests.support.waiting import wait_until

DETAILS: dict[str, Any] = {
    "hostname": "raspberrypi",
    "cpu_percent_used": 3.0,
    "ram": 4 * 1024**3,
    "cpu": "Cortex-A72",
    "cpu_cores": 4,
    "interval_s": 60,
}


class Master:
    """An in-process master, its commits awaited as events, its routes called over ASGI."""

    def __init__(self, service: MasterService) -> None:
        self.service = service
        self._commits = threading.Condition()
        service.ingestor.commit_listeners.append(self._committed)

    def _committed(self, count: int) -> None:
        with self._commits:
            self._commits.notify_all()

    def wait_committed(self, target: int) -> None:
        """Return once `target` messages in all are committed (state listeners ran first)."""
        with self._commits:
            done = self._commits.wait_for(lambda: self.service.ingestor.committed >= target, 10)
        assert done, f"{target} messages not committed within 10 s"

    def get(self, path: str) -> httpx.Response:
        async def call() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.service.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://m") as client:
                return await client.get(path)

        return asyncio.run(call())


class Node:
    """Publishes one node's envelopes at QoS 1 and waits for the broker's PUBACK."""

    def __init__(self, broker: MosquittoBroker, prefix: str, node: str) -> None:
        self.prefix, self.node, self.seq = prefix, node, 0
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def send(self, kind: str, payload: dict[str, Any]) -> None:
        self.seq += 1
        envelope = Envelope(kind, self.node, time.time(), self.seq, payload)
        topic = topic_for(self.node, kind, self.prefix)
        self.client.publish(topic, encode_envelope(envelope), 1).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def master(broker: MosquittoBroker, tmp_path: Path) -> Iterator[Master]:
    database = master_database(tmp_path)
    settings = MasterSettings(
        broker=broker.url,
        db=database.target,
        db_password=database.env.get("CLUSTER_DB_PASSWORD"),
        client_id=f"test-master-{uuid.uuid4().hex[:8]}",
        prefix=f"ls{uuid.uuid4().hex[:8]}",
        ha_discovery=False,
    )
    service = build(settings)
    service.start()
    wait_until(service.listener.connected.is_set, 10, message="master connected")
    yield Master(service)
    service.stop()


def cpu_in_list(master: Master, query: str = "") -> dict[str, float]:
    answer = master.get(f"/api/nodes{query}")
    assert answer.status_code == 200
    return {n["node"]: n["metrics"]["cpu_percent"] for n in answer.json()["nodes"]}


def test_a_committed_value_is_served_at_once(master: Master, broker: MosquittoBroker) -> None:
    prefix = master.service.settings.prefix
    rack = Node(broker, prefix, "pi-rack")
    other = Node(broker, prefix, "pi-other")
    try:
        rack.send("machine_details", {**DETAILS, "tags": ["rack1"]})
        other.send("machine_details", DETAILS)
        rack.send("metrics", {"cpu_percent": 11.0})
        other.send("metrics", {"cpu_percent": 12.0})
        master.wait_committed(4)
        assert cpu_in_list(master) == {"pi-rack": 11.0, "pi-other": 12.0}
        assert cpu_in_list(master) == {"pi-rack": 11.0, "pi-other": 12.0}  # as kept

        for cpu in (22.0, 33.0):
            committed = master.service.ingestor.committed
            rack.send("metrics", {"cpu_percent": cpu})
            master.wait_committed(committed + 1)
            # Right after the commit, with no retry: every read shows the new value.
            assert cpu_in_list(master) == {"pi-rack": cpu, "pi-other": 12.0}
            assert cpu_in_list(master, "?tag=rack1") == {"pi-rack": cpu}
            one = master.get("/api/nodes/pi-rack")
            assert one.status_code == 200
            assert one.json()["metrics"]["cpu_percent"] == cpu
            metrics = master.get("/metrics").text
            assert f'picluster_node_cpu_usage_ratio{{node="pi-rack"}} {cpu / 100}\n' in metrics

        assert master.get("/api/nodes/pi-nowhere").status_code == 404
        assert cpu_in_list(master, "?tag=nowhere") == {}
        # After the first, each commit's listing and text were made from the last ones (the
        # flush told the state which nodes changed), not encoded again in full.
        builds = master.service.state.builds
        assert builds["listing", "full"] == 1
        assert builds["listing", "incremental"] >= 2
        assert builds["prometheus-nodes", "incremental"] >= 1
    finally:
        rack.close()
        other.close()

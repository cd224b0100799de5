"""Home Assistant discovery over a real Mosquitto: retained configs, re-announce, forget, quiet."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cluster_protocol.payloads import MachineDetails
from master_service.app import build
from master_service.home_assistant import discovery as hd
from master_service.home_assistant.publisher import DiscoveryPublisher
from master_service.settings import MasterSettings
from tests.support.broker import MosquittoBroker
from tests.support.processes import master_database
from tests.support.watcher import Seen, Watcher

GIB = 1024**3
DETAILS: MachineDetails = {
    "hostname": "raspberrypi",  # the image's default: every node of the tests shares it
    "cpu_percent_used": 3.0,
    "ram": 4 * GIB,
    "cpu": "Cortex-A72",
    "cpu_cores": 4,
    "model": "Raspberry Pi 4 Model B Rev 1.4",
    "boot_time": 1_700_000_000.0,
    "agent_version": "0.1.0",
    "interval_s": 5,
}


class PahoPublish:
    """The master's side in miniature: a paho client behind a thread-safe publish callable."""

    def __init__(self, broker: MosquittoBroker) -> None:
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._handlers: dict[str, Callable[[bytes], None]] = {}
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert self._connected.wait(10), "publisher client could not connect"

    def __call__(self, topic: str, payload: bytes | None, qos: int, retain: bool) -> None:
        with self._lock:
            self.client.publish(topic, payload or None, qos=qos, retain=retain)

    def flush(self, topic: str) -> None:
        """Return once the broker has everything published so far (it handles one client's
        packets in order, so the PUBACK of a last message covers all before it)."""
        with self._lock:
            info = self.client.publish(topic, b"flush", qos=1)
        info.wait_for_publish(10)
        assert info.is_published(), "broker did not acknowledge in time"

    def route(self, topic: str, handler: Callable[[bytes], None]) -> None:
        """Subscribe and hand payloads to `handler`, as the master's message path will."""
        subscribed = threading.Event()
        self._handlers[topic] = handler
        self.client.on_subscribe = lambda *args: subscribed.set()
        self.client.subscribe(topic, qos=1)
        assert subscribed.wait(10), f"could not subscribe to {topic}"

    def _on_connect(self, client: mqtt.Client, *args: Any) -> None:
        self._connected.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        handler = self._handlers.get(msg.topic)
        if handler is not None:
            handler(bytes(msg.payload))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def prefixes() -> tuple[str, str]:
    """A discovery prefix and a cluster prefix of the test's own (retained state is shared)."""
    tag = uuid.uuid4().hex[:8]
    return f"ha-{tag}", f"cl-{tag}"


@pytest.fixture
def adapter(broker: MosquittoBroker) -> Iterator[PahoPublish]:
    opened = PahoPublish(broker)
    yield opened
    opened.close()


def retained_now(watch: Callable[..., Watcher], adapter: PahoPublish, prefix: str) -> list[Seen]:
    """What a newcomer (HA starting up) finds retained under the prefix."""
    adapter.flush(f"{prefix}/flush")
    watcher = watch(f"{prefix}/#")
    # Retained messages are queued at subscribe time, before anything published later.
    marker = f"{prefix}/marker/{uuid.uuid4().hex}"
    adapter(marker, b"x", 1, False)
    watcher.wait_for(marker)
    return [m for m in watcher.messages if m.retain]


def config(messages: list[Seen], topic: str) -> dict[str, Any]:
    [message] = [m for m in messages if m.topic == topic]
    body: dict[str, Any] = json.loads(message.payload)
    return body


def announce(publisher: DiscoveryPublisher, node: str = "pi-01") -> None:
    publisher.announce_cluster()
    publisher.node_details(node, DETAILS)
    publisher.node_metrics_shape(node, ["/", "/boot/firmware"], True)


def test_node_and_cluster_configs_are_retained_for_home_assistant(watch, adapter, prefixes):
    prefix, cluster = prefixes
    publisher = DiscoveryPublisher(adapter, prefix=prefix, cluster_prefix=cluster)
    announce(publisher)

    retained = retained_now(watch, adapter, prefix)
    assert sorted(m.topic for m in retained) == [
        f"{prefix}/device/picluster__cluster/config",
        f"{prefix}/device/picluster_pi-01/config",
    ]
    assert all(m.qos == 1 for m in retained)

    node = config(retained, f"{prefix}/device/picluster_pi-01/config")
    assert node["o"]["name"] == "picluster"
    assert node["dev"]["ids"] == ["picluster_pi-01"]
    assert node["dev"]["name"] == "pi-01"
    assert node["dev"]["via_device"] == "picluster__cluster"
    assert node["dev"]["mf"] == "Raspberry Pi Ltd"
    cmps = node["cmps"]
    for key, component in cmps.items():
        assert component["unique_id"] == f"picluster_pi-01_{key}"
        assert component["default_entity_id"] == f"{component['p']}.pi_01_{key}"
        if component["p"] == "button":  # buttons read nothing: they publish presses
            assert {"command_topic", "command_template", "availability"} <= set(component)
            continue
        assert {"p", "unique_id", "state_topic", "value_template", "availability"} <= set(component)
    assert [a["topic"] for a in cmps["cpu_percent"]["availability"]] == [
        f"{cluster}/pi-01/status",
        f"{cluster}/_master/status",
    ]
    assert cmps["cpu_percent"]["availability_mode"] == "all"
    assert cmps["cpu_percent"]["state_topic"] == f"{cluster}/pi-01/metrics"
    assert cmps["cpu_percent"]["expire_after"] == 15
    assert cmps["disk_boot_firmware_percent"]["unit_of_measurement"] == "%"
    temperature = cmps["temperature_celsius"]
    assert (temperature["device_class"], temperature["unit_of_measurement"]) == (
        "temperature",
        "°C",
    )
    assert cmps["net_tx_bytes_per_s"]["device_class"] == "data_rate"
    assert cmps["boot_time"]["device_class"] == "timestamp"
    throttled = cmps["throttled"]
    assert (throttled["p"], throttled["device_class"]) == ("binary_sensor", "problem")
    assert cmps["online"]["device_class"] == "connectivity"
    assert [a["topic"] for a in cmps["online"]["availability"]] == [f"{cluster}/_master/status"]
    assert cmps["refresh"]["command_topic"] == f"{cluster}/_master/ha_command"
    assert "reboot" not in cmps  # DETAILS advertise no reboot

    totals = config(retained, f"{prefix}/device/picluster__cluster/config")["cmps"]
    assert {c["state_topic"] for c in totals.values()} == {f"{cluster}/_master/cluster"}
    assert totals["ram_total"]["device_class"] == "data_size"


def test_two_nodes_on_one_hostname_are_announced_as_two_named_devices(watch, adapter, prefixes):
    prefix, cluster = prefixes
    publisher = DiscoveryPublisher(adapter, prefix=prefix, cluster_prefix=cluster)
    announce(publisher, "pi-01")
    announce(publisher, "pi-02")  # same DETAILS: hostname "raspberrypi" for both

    retained = retained_now(watch, adapter, prefix)
    devices = {
        node: config(retained, f"{prefix}/device/picluster_{node}/config")
        for node in ("pi-01", "pi-02")
    }
    assert {node: d["dev"]["name"] for node, d in devices.items()} == {
        "pi-01": "pi-01",
        "pi-02": "pi-02",
    }
    entity_ids = {
        node: {c["default_entity_id"] for c in d["cmps"].values()} for node, d in devices.items()
    }
    assert entity_ids["pi-01"].isdisjoint(entity_ids["pi-02"])
    assert "sensor.pi_01_cpu_percent" in entity_ids["pi-01"]
    assert "sensor.pi_02_cpu_percent" in entity_ids["pi-02"]
    for d in devices.values():  # the shared hostname is shown, as a diagnostic sensor
        assert d["cmps"]["hostname"]["state_topic"].endswith("/machine_details")


def test_home_assistant_birth_triggers_a_reannounce(watch, adapter, broker, prefixes):
    prefix, cluster = prefixes
    publisher = DiscoveryPublisher(adapter, prefix=prefix, cluster_prefix=cluster)
    adapter.route(publisher.ha_status_topic, publisher.on_ha_status)
    announce(publisher)
    device = f"{prefix}/device/picluster_pi-01/config"
    watcher = watch(f"{prefix}/#")
    watcher.wait_for(device)  # the retained copy

    home_assistant = PahoPublish(broker)
    try:
        home_assistant(f"{prefix}/status", b"offline", 1, False)  # HA's will: nothing to do
        home_assistant(f"{prefix}/status", b"online", 1, False)  # HA's birth
        watcher.wait_for(device, count=2)
        watcher.wait_for(f"{prefix}/device/picluster__cluster/config", count=2)
    finally:
        home_assistant.close()
    again = watcher.on(device)[1]
    assert (again.retain, again.payload) == (False, watcher.on(device)[0].payload)
    assert len(watcher.on(device)) == 2  # "offline" did not announce


def test_ordinary_metrics_cause_no_discovery_traffic(watch, adapter, prefixes):
    prefix, cluster = prefixes
    publisher = DiscoveryPublisher(adapter, prefix=prefix, cluster_prefix=cluster)
    watcher = watch(f"{prefix}/#")
    announce(publisher)
    for _ in range(500):
        publisher.node_metrics_shape("pi-01", ["/", "/boot/firmware"], True)
        publisher.node_metrics_shape("pi-01", ["/"], False)  # a mount or flags gone a while
    publisher.node_details("pi-01", {**DETAILS, "cpu_percent_used": 80.0})
    marker = f"{prefix}/marker"
    adapter(marker, b"x", 1, False)  # same client, so it arrives after anything sent before
    watcher.wait_for(marker)
    configs = [m.topic for m in watcher.messages if m.topic.endswith("/config")]
    assert sorted(configs) == [
        f"{prefix}/device/picluster__cluster/config",
        f"{prefix}/device/picluster_pi-01/config",
    ]


def test_forget_leaves_nothing_for_home_assistant_to_find(watch, adapter, prefixes):
    prefix, cluster = prefixes
    publisher = DiscoveryPublisher(adapter, prefix=prefix, cluster_prefix=cluster)
    announce(publisher, "pi-01")
    announce(publisher, "pi-02")
    watcher = watch(f"{prefix}/#")
    device = f"{prefix}/device/picluster_pi-01/config"
    watcher.wait_for(device)

    publisher.forget("pi-01")
    [_, cleared] = watcher.wait_for(device, count=2)
    assert cleared.payload == b""
    assert sorted(m.topic for m in retained_now(watch, adapter, prefix)) == [
        f"{prefix}/device/picluster__cluster/config",
        f"{prefix}/device/picluster_pi-02/config",
    ]


def test_per_entity_form_is_retained_and_forgotten(watch, adapter, prefixes):
    prefix, cluster = prefixes
    publisher = DiscoveryPublisher(adapter, prefix=prefix, cluster_prefix=cluster, per_entity=True)
    announce(publisher)
    retained = retained_now(watch, adapter, prefix)
    node_topics = sorted(m.topic for m in retained if "/picluster_pi-01/" in m.topic)
    assert f"{prefix}/sensor/picluster_pi-01/cpu_percent/config" in node_topics
    assert f"{prefix}/binary_sensor/picluster_pi-01/online/config" in node_topics
    assert f"{prefix}/button/picluster_pi-01/refresh/config" in node_topics
    # One topic per entity, the Refresh button included.
    shape = hd.NodeShape(("/", "/boot/firmware"), has_throttled=True)
    assert len(node_topics) == len(hd.node_components("pi-01", DETAILS, shape))
    cpu = config(retained, f"{prefix}/sensor/picluster_pi-01/cpu_percent/config")
    assert "p" not in cpu
    assert cpu["unique_id"] == "picluster_pi-01_cpu_percent"
    assert cpu["dev"]["ids"] == ["picluster_pi-01"]

    publisher.forget("pi-01")
    left = [m.topic for m in retained_now(watch, adapter, prefix)]
    assert not [t for t in left if "picluster_pi-01" in t]
    assert len(left) == 4  # the cluster's own entities stay


def test_forget_on_a_running_master_clears_the_node_from_home_assistant(
    watch, adapter, broker, prefixes, tmp_path
):
    """Found against a real Home Assistant (scripts/verify-home-assistant.sh): `cluster-master
    forget` answered "forgot" while the node's device stayed in Home Assistant."""
    prefix, cluster = prefixes
    database = master_database(tmp_path)
    settings = MasterSettings(
        broker=broker.url,
        db=database.target,
        db_password=database.env.get("CLUSTER_DB_PASSWORD"),
        client_id=f"test-master-{uuid.uuid4().hex[:8]}",
        prefix=cluster,
        ha_prefix=prefix,
    )
    service = build(settings)
    service.start()
    try:
        assert service.listener.connected.wait(10), "the master did not connect"
        assert service.home_assistant is not None
        device = f"{prefix}/device/picluster_pi-01/config"
        watcher = watch(f"{prefix}/#")
        service.home_assistant.node_details("pi-01", DETAILS)
        service.home_assistant.node_metrics(
            "pi-01",
            {"disks": [{"mount": "/", "total_bytes": 100, "used_bytes": 5, "percent": 5.0}]},
        )
        watcher.wait_for(device)

        service.forget("pi-01")
        [_, cleared] = watcher.wait_for(device, count=2)
        assert cleared.payload == b""
    finally:
        service.stop()
    left = [m.topic for m in retained_now(watch, adapter, prefix)]
    assert left == [f"{prefix}/device/picluster__cluster/config"]

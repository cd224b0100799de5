"""The shipped ACL (mosquitto/acl) on a real Mosquitto: who may write and read what."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from tests.conftest import REPO_ROOT
from tests.support.broker import MosquittoBroker
from tests.support.dynsec_broker import DynsecBroker
from tests.support.waiting import wait_until
from tests.support.watcher import Watcher

SHIPPED_ACL = REPO_ROOT / "mosquitto" / "acl"
NOT_AUTHORIZED = 135
ACCEPTED = (0, 16)  # success, and "no matching subscribers" (still a success)
MASTER = "picluster-master"
HOME_ASSISTANT = "homeassistant"
USERS = {
    MASTER: "master-secret",
    HOME_ASSISTANT: "ha-secret",
    "node-a": "a-secret",
    "node-b": "b-secret",
}


class Session:
    """An MQTT 5 client that records its CONNACK and every PUBACK's reason code."""

    def __init__(
        self,
        broker: MosquittoBroker,
        username: str | None,
        password: str | None = None,
        client_id: str = "",
        clean_start: bool = True,
        session_expiry_s: int = 0,
        on_message: Callable[[mqtt.Client, Any, mqtt.MQTTMessage], None] | None = None,
    ) -> None:
        self.connack: ReasonCode | None = None
        self.acks: dict[int, ReasonCode] = {}
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5, client_id=client_id
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.on_connect = self._on_connect
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = lambda *args: self._subscribed.set()
        if on_message is not None:
            # Before connecting: a resumed session delivers its queue right after CONNACK.
            self.client.on_message = on_message
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = session_expiry_s
        self.client.connect(
            broker.host, broker.port, clean_start=clean_start, properties=properties
        )
        self.client.loop_start()
        if not self._connected.wait(10):
            raise AssertionError(f"no CONNACK for {username!r}")

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: ReasonCode, props: Any
    ) -> None:
        self.connack = rc
        self._connected.set()

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, rc: ReasonCode, props: Any
    ) -> None:
        with self._lock:
            self.acks[mid] = rc

    @property
    def accepted(self) -> bool:
        """True when the broker accepted the connection."""
        return self.connack is not None and not self.connack.is_failure

    def publish(self, topic: str, payload: bytes = b"{}", retain: bool = False) -> int:
        """Publish at QoS 1 and return the PUBACK's reason code (0 = accepted)."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        rc = wait_until(lambda: self._ack(info.mid), message=f"PUBACK for {topic}")
        return int(rc.value)

    def subscribe(self, topic_filter: str) -> None:
        """Subscribe at QoS 1 and wait for the SUBACK."""
        self._subscribed.clear()
        self.client.subscribe(topic_filter, qos=1)
        if not self._subscribed.wait(10):
            raise AssertionError(f"no SUBACK for {topic_filter}")

    def _ack(self, mid: int) -> ReasonCode | None:
        with self._lock:
            return self.acks.get(mid)

    def close(self) -> None:
        """Disconnect and stop the network thread."""
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture(scope="module")
def acl_broker(
    tmp_path_factory: pytest.TempPathFactory, mosquitto_binary: str
) -> Iterator[MosquittoBroker]:
    """One broker with the four users and the ACL file exactly as shipped."""
    broker = MosquittoBroker(
        tmp_path_factory.mktemp("acl-broker"), users=USERS, acl=SHIPPED_ACL.read_text()
    )
    with broker as running:
        yield running


@pytest.fixture
def session(acl_broker: MosquittoBroker) -> Iterator[Any]:
    """Open sessions as a given user; all are closed after the test."""
    opened: list[Session] = []

    def open_session(username: str | None, password: str | None = None) -> Session:
        if password is None and username is not None:
            password = USERS[username]
        opened.append(Session(acl_broker, username, password))
        return opened[-1]

    yield open_session
    for item in opened:
        item.close()


@pytest.fixture
def watch_as(acl_broker: MosquittoBroker) -> Iterator[Any]:
    """Subscribe as a given user (Watcher waits for the SUBACK)."""
    opened: list[Watcher] = []

    def open_watcher(username: str, topic_filter: str) -> Watcher:
        watcher = Watcher(acl_broker.host, acl_broker.port, topic_filter, username, USERS[username])
        opened.append(watcher)
        return watcher

    yield open_watcher
    for watcher in opened:
        watcher.close()


def marker() -> bytes:
    """A payload no other test sends."""
    return uuid.uuid4().hex.encode()


def test_the_acl_file_is_the_one_the_config_names() -> None:
    conf = (REPO_ROOT / "mosquitto" / "mosquitto.conf").read_text().splitlines()
    assert "acl_file /etc/mosquitto/acl" in conf
    assert "allow_anonymous false" in conf


def test_anonymous_client_is_refused(session: Any) -> None:
    anonymous = session(None)
    assert not anonymous.accepted
    assert anonymous.connack.value in (134, 135)  # bad user name or password / not authorized


def test_wrong_password_is_refused(session: Any) -> None:
    assert not session("node-a", "not-the-password").accepted


@pytest.mark.parametrize(
    ("user", "topic", "allowed"),
    [
        # a node writes its own subtree, including its own cmd/ (it is its own subtree)
        ("node-a", "cluster/node-a/metrics", True),
        ("node-a", "cluster/node-a/status", True),
        ("node-a", "cluster/node-a/reply", True),
        ("node-a", "cluster/node-a/cmd/x", True),
        # ... and nothing else
        ("node-a", "cluster/node-b/metrics", False),
        ("node-a", "cluster/node-b/status", False),
        ("node-a", "cluster/node-b/cmd/x", False),
        ("node-a", "cluster/_master/status", False),
        ("node-a", "cluster/node-a", True),  # "x/#" also matches "x" (MQTT 4.7.1.2)
        ("node-a", "cluster", False),
        ("node-a", "homeassistant/sensor/x/config", False),
        ("node-a", "other/topic", False),
        # the master: its own status, commands to any node, discovery, clearing a removed
        # node's retained status and details; never a node's metrics or replies
        (MASTER, "cluster/_master/status", True),
        (MASTER, "cluster/node-a/cmd/x", True),
        (MASTER, "cluster/node-b/cmd/reboot", True),
        (MASTER, "homeassistant/device/node-a/config", True),
        (MASTER, "cluster/node-a/metrics", False),
        (MASTER, "cluster/node-a/status", True),  # clears a removed node's retained status
        (MASTER, "cluster/node-a/machine_details", True),
        (MASTER, "cluster/node-a/reply", False),
        # Home Assistant: only its birth/will
        (HOME_ASSISTANT, "homeassistant/status", True),
        (HOME_ASSISTANT, "homeassistant/sensor/x/config", False),
        (HOME_ASSISTANT, "cluster/node-a/cmd/x", False),
        (HOME_ASSISTANT, "cluster/node-a/status", False),
        # ... and its button presses, which only the master reads and acts on
        (HOME_ASSISTANT, "cluster/_master/ha_command", True),
        (HOME_ASSISTANT, "cluster/_master/status", False),
        ("node-a", "cluster/_master/ha_command", False),
        (MASTER, "cluster/_master/ha_command", True),  # under its own subtree; it ignores it
    ],
)
def test_publish_rights(session: Any, user: str, topic: str, allowed: bool) -> None:
    reason = session(user).publish(topic, marker())
    if allowed:
        assert reason in ACCEPTED
    else:
        assert reason == NOT_AUTHORIZED


def test_denied_publish_into_another_subtree_never_reaches_the_master(
    session: Any, watch_as: Any
) -> None:
    master = watch_as(MASTER, "cluster/#")
    node_a = session("node-a")
    spoofed, sentinel = marker(), marker()

    assert node_a.publish("cluster/node-b/metrics", spoofed) == NOT_AUTHORIZED
    assert node_a.publish("cluster/node-b/cmd/reboot", spoofed) == NOT_AUTHORIZED
    # The broker handles one client's publishes in order: once the sentinel is delivered,
    # anything published before it would have been too.
    assert node_a.publish("cluster/node-a/metrics", sentinel) in ACCEPTED
    master.wait_for("cluster/node-a/metrics")

    payloads = [m.payload for m in master.messages]
    assert sentinel in payloads
    assert spoofed not in payloads


def test_node_receives_its_own_commands_and_nothing_of_other_nodes(
    session: Any, watch_as: Any
) -> None:
    node_a = watch_as("node-a", "cluster/#")  # asks for everything, gets only what it may read
    master = session(MASTER)
    node_b = session("node-b")

    assert node_b.publish("cluster/node-b/metrics", marker()) in ACCEPTED
    assert master.publish("cluster/node-b/cmd/x", marker()) in ACCEPTED
    own = marker()
    assert master.publish("cluster/node-a/cmd/x", own) in ACCEPTED
    node_a.wait_for("cluster/node-a/cmd/x")

    assert [m.payload for m in node_a.messages] == [own]


def test_nodes_can_see_whether_a_master_listens(session: Any, watch_as: Any) -> None:
    node_a = watch_as("node-a", "cluster/_master/status")
    assert session(MASTER).publish("cluster/_master/status", b'{"state": "online"}') in ACCEPTED
    assert node_a.wait_for("cluster/_master/status")[0].payload == b'{"state": "online"}'


def test_only_the_master_can_command_a_node(session: Any, watch_as: Any) -> None:
    node_a = watch_as("node-a", "cluster/node-a/cmd/#")
    forged = marker()
    for intruder in ("node-b", HOME_ASSISTANT):
        assert session(intruder).publish("cluster/node-a/cmd/reboot", forged) == NOT_AUTHORIZED
    real = marker()
    assert session(MASTER).publish("cluster/node-a/cmd/reboot", real) in ACCEPTED
    node_a.wait_for("cluster/node-a/cmd/reboot")

    assert [m.payload for m in node_a.messages] == [real]


def test_home_assistant_reads_the_cluster_and_discovery(session: Any, watch_as: Any) -> None:
    ha_cluster = watch_as(HOME_ASSISTANT, "cluster/#")
    ha_discovery = watch_as(HOME_ASSISTANT, "homeassistant/#")
    assert session("node-a").publish("cluster/node-a/metrics", b"m") in ACCEPTED
    assert session(MASTER).publish("homeassistant/device/node-a/config", b"d") in ACCEPTED

    assert ha_cluster.wait_for("cluster/node-a/metrics")[0].payload == b"m"
    assert ha_discovery.wait_for("homeassistant/device/node-a/config")[0].payload == b"d"


def test_master_hears_home_assistant_come_online(session: Any, watch_as: Any) -> None:
    master = watch_as(MASTER, "homeassistant/status")
    assert session(HOME_ASSISTANT).publish("homeassistant/status", b"online") in ACCEPTED
    assert master.wait_for("homeassistant/status")[0].payload == b"online"


def test_master_hears_home_assistant_button_presses(session: Any, watch_as: Any) -> None:
    master = watch_as(MASTER, "cluster/#")
    forged = b'{"node": "node-a", "command": "reboot", "ts": 1}'
    assert session("node-b").publish("cluster/_master/ha_command", forged) == NOT_AUTHORIZED
    press = b'{"node": "node-a", "command": "refresh", "ts": 1}'
    assert session(HOME_ASSISTANT).publish("cluster/_master/ha_command", press) in ACCEPTED
    master.wait_for("cluster/_master/ha_command")

    assert [m.payload for m in master.on("cluster/_master/ha_command")] == [press]


def test_several_masters_share_the_metrics_under_the_shipped_acl(
    session: Any, watch_as: Any
) -> None:
    # `--several-masters`: the master user's `read cluster/#` covers the shared subscription.
    shared = watch_as(MASTER, "$share/picluster/cluster/+/metrics")
    payload = marker()
    assert session("node-a").publish("cluster/node-a/metrics", payload) in ACCEPTED
    assert shared.wait_for("cluster/node-a/metrics")[0].payload == payload


def test_several_masters_share_the_metrics_under_the_dynamic_security_roles(
    tmp_path: Path,
) -> None:
    # The same with the dynamic security plugin: the master's roles as install-head.sh sets
    # them up, and a node client with its own topics only.
    broker = DynsecBroker(tmp_path / "dynsec").start()
    try:
        broker.ctrl("createClient", "node-a", "-p", "a-secret")
        broker.ctrl("createRole", "node-a")
        broker.ctrl("addRoleACL", "node-a", "publishClientSend", "cluster/node-a/#", "allow")
        broker.ctrl("addClientRole", "node-a", "node-a")
        shared = Watcher(
            broker.host,
            broker.port,
            "$share/picluster/cluster/+/metrics",
            broker.admin,
            broker.admin_password,
        )
        try:
            payload = marker()
            node = Session(broker, "node-a", "a-secret")
            try:
                assert node.publish("cluster/node-a/metrics", payload) in ACCEPTED
            finally:
                node.close()
            assert shared.wait_for("cluster/node-a/metrics")[0].payload == payload
        finally:
            shared.close()
    finally:
        broker.stop()


def test_shipped_acl_has_no_anonymous_grants() -> None:
    # Lines before the first `user` apply to anonymous clients: there must be none.
    rules = [
        line.split()
        for line in SHIPPED_ACL.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert rules[0][0] == "user"


def test_passwd_example_holds_no_usable_hash(tmp_path: Path) -> None:
    example = (REPO_ROOT / "mosquitto" / "passwd.example").read_text()
    entries = [line for line in example.splitlines() if line and not line.startswith("#")]
    assert entries
    assert all("REPLACE-WITH-A-REAL-HASH" in line for line in entries)

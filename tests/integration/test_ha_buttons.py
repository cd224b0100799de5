"""Home Assistant's buttons over a real Mosquitto with the shipped ACL, a real master and node.

Home Assistant publishes a press as its own broker user on `cluster/_master/ha_command`; the
master (`cluster-master run`) checks it and commands the node (`cluster-node run`, which has
not enabled reboot). The ACL is the shipped one, so the press can only work the way it is meant to.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from tests.support.broker import MosquittoBroker
from tests.support.processes import RunningMaster, Service, start_master, start_node
from tests.support.waiting import wait_until
from tests.support.watcher import Watcher

ACL = (Path(__file__).resolve().parents[2] / "mosquitto" / "acl").read_text()
PRESS_TOPIC = "cluster/_master/ha_command"
NOT_AUTHORIZED = 135


class HomeAssistantClient:
    """Publishes presses as Home Assistant's broker user and reports each PUBACK's reason."""

    def __init__(self, broker: MosquittoBroker, username: str, password: str) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.username_pw_set(username, password)
        self._acks: dict[int, ReasonCode] = {}
        self._lock = threading.Lock()
        self.client.on_publish = self._on_publish
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def _on_publish(self, client: Any, userdata: Any, mid: int, rc: ReasonCode, p: Any) -> None:
        with self._lock:
            self._acks[mid] = rc

    def publish(self, payload: bytes) -> int:
        """Publish at QoS 1, as HA's button does, and return the broker's reason code."""
        info = self.client.publish(PRESS_TOPIC, payload, qos=1)
        rc = wait_until(lambda: self._ack(info.mid), message="PUBACK of the press")
        return int(rc.value)

    def press(self, node: str, command: str) -> int:
        """What HA sends when the button is pressed now (see ha_discovery.press_template)."""
        body = {"node": node, "command": command, "ts": round(time.time(), 3)}
        return self.publish(json.dumps(body, separators=(",", ":")).encode())

    def _ack(self, mid: int) -> ReasonCode | None:
        with self._lock:
            return self._acks.get(mid)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@dataclass
class Stack:
    broker: MosquittoBroker
    master: RunningMaster
    node: Service
    node_id: str
    ha: HomeAssistantClient
    commands_seen: Watcher  # what reaches the node's command topics

    def commands(self) -> list[dict[str, Any]]:
        listed: list[dict[str, Any]] = self.master.get(f"/api/nodes/{self.node_id}/commands")[
            "commands"
        ]
        return listed

    def refused(self) -> int:
        return int(self.master.get("/api/cluster")["master"]["rejected"].get("bad_ha_command", 0))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, mosquitto_binary: str) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("ha-buttons")
    node_id = f"hb-{uuid.uuid4().hex[:6]}"
    users = {"picluster-master": "m-secret", "homeassistant": "ha-secret", node_id: "n-secret"}
    (workdir / "master.pw").write_text("m-secret\n")
    (workdir / "node.pw").write_text("n-secret\n")
    broker = MosquittoBroker(workdir / "broker", users=users, acl=ACL)
    broker.workdir.mkdir()
    broker.start()
    master = start_master(
        f"mqtt://picluster-master@{broker.host}:{broker.port}",
        workdir / "master",
        "--password-file",
        str(workdir / "master.pw"),
    )
    node = start_node(
        f"mqtt://{node_id}@{broker.host}:{broker.port}",
        workdir,
        node_id,
        "--password-file",
        str(workdir / "node.pw"),
        interval=2,  # HA discovery waits for the first metrics; details go on change only
    )
    watcher = Watcher(broker.host, broker.port, "cluster/+/cmd/#", "picluster-master", "m-secret")
    ha = HomeAssistantClient(broker, "homeassistant", "ha-secret")
    try:
        wait_until(
            lambda: (view := master.node(node_id)) and view["metrics"] and view["details"],
            20,
            message="the node online with details and metrics",
        )
        yield Stack(broker, master, node, node_id, ha, watcher)
    finally:
        ha.close()
        watcher.close()
        node.stop()
        master.stop()
        broker.stop()


def test_the_node_gets_a_refresh_button_and_no_reboot_button(stack):
    device = f"homeassistant/device/picluster_{stack.node_id}/config"
    seen = Watcher(stack.broker.host, stack.broker.port, device, "homeassistant", "ha-secret")
    try:
        buttons = {
            key: c
            for key, c in json.loads(seen.wait_for(device)[0].payload)["cmps"].items()
            if c["p"] == "button"
        }
    finally:
        seen.close()
    assert list(buttons) == ["refresh"]  # reboot is not enabled in this node's config
    assert buttons["refresh"]["command_topic"] == PRESS_TOPIC


def test_a_press_reaches_the_node_as_one_refresh_and_it_answers(stack):
    before = stack.master.node(stack.node_id)["details_ts"]
    assert stack.ha.press(stack.node_id, "refresh") == 0  # the ACL lets HA publish presses

    def answered() -> dict[str, Any] | None:
        return next((c for c in stack.commands() if c["command"] == "refresh"), None)

    record = wait_until(
        lambda: (r := answered()) and r["status"] != "pending" and r,
        15,
        0.1,
        "the refresh and its reply at the master",
    )
    assert (record["status"], record["ok"]) == ("ok", True)
    wait_until(
        lambda: stack.master.node(stack.node_id)["details_ts"] != before,
        message="fresh machine details after the refresh",
    )
    refreshes = stack.commands_seen.on(f"cluster/{stack.node_id}/cmd/refresh")
    assert len(refreshes) == 1  # one press, one command: no double delivery
    assert "repeated press" not in stack.master.log()


def test_a_reboot_press_for_a_node_that_did_not_enable_it_never_reaches_it(stack):
    refused = stack.refused()
    assert stack.ha.press(stack.node_id, "reboot") == 0
    wait_until(lambda: stack.refused() == refused + 1, message="the press refused and counted")
    assert f"{stack.node_id} does not enable reboot" in stack.master.log()
    assert stack.commands_seen.on(f"cluster/{stack.node_id}/cmd/reboot") == []
    assert all(c["command"] != "reboot" for c in stack.commands())


def test_malformed_presses_are_counted_and_the_master_keeps_working(stack):
    refused = stack.refused()
    for bad in (b"PRESS", b"[1, 2]", b'{"node": "x"', b"\xff"):
        assert stack.ha.publish(bad) == 0
    assert stack.ha.press("no-such-node", "refresh") == 0
    wait_until(lambda: stack.refused() == refused + 5, message="five bad presses counted")
    oks = sum(c["ok"] is True for c in stack.commands())
    assert stack.ha.press(stack.node_id, "refresh") == 0
    wait_until(
        lambda: sum(c["ok"] is True for c in stack.commands()) == oks + 1,
        15,
        message="a good press still answered after the bad ones",
    )


def test_a_node_user_cannot_press_buttons(stack):
    node = HomeAssistantClient(stack.broker, stack.node_id, "n-secret")
    try:
        assert node.press(stack.node_id, "refresh") == NOT_AUTHORIZED
    finally:
        node.close()

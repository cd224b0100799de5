"""Enrollment over a real Mosquitto with the dynamic security plugin.

`cluster-master nodes add` makes the broker client and a one-time token; the token, exchanged
over the master's API, gives a real `cluster-node` what it needs to come online; `nodes remove`
deletes the client, which the broker disconnects at once and refuses after.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.support.dynsec_broker import DynsecBroker, plugin_path
from tests.support.processes import RunningMaster, Service, start_master, start_node
from tests.support.waiting import wait_until

pytestmark = pytest.mark.skipif(plugin_path() is None, reason="no dynamic security plugin")

PREFIX = "enr"
TOKEN = "enroll-t0ken"


@dataclass
class Head:
    """A dynsec broker and a master whose broker user is the plugin's admin."""

    broker: DynsecBroker
    master: RunningMaster
    workdir: Path

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run `cluster-master ...` against this master, as a user would."""
        return subprocess.run(
            [sys.executable, "-m", "master_service", *args, "--api", self.master.api],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "CLUSTER_API_TOKEN": TOKEN},
        )

    def api(
        self, method: str, path: str, body: Any = None, token: str | None = TOKEN
    ) -> tuple[int, Any]:
        """(status, JSON) of one API call."""
        request = urllib.request.Request(
            self.master.api + path,
            data=None if body is None else json.dumps(body).encode(),
            headers={
                "Content-Type": "application/json",
                **({"Authorization": f"Bearer {token}"} if token else {}),
            },
            method=method,
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as error:
            with error:
                return error.code, json.load(error)

    def add(self, node: str) -> str:
        """`nodes add NODE`: the printed command's token."""
        done = self.cli("nodes", "add", node)
        assert done.returncode == 0, done.stderr
        command = next(line for line in done.stdout.splitlines() if "curl" in line)
        assert "--enroll" in command
        assert "/install/node.sh" in command
        return command.split()[-1]

    def start_node(self, credentials: dict[str, Any]) -> Service:
        """A real `cluster-node` with exactly what the enrollment gave."""
        return start_node(
            credentials["broker"],
            self.workdir,
            credentials["node"],
            "--prefix",
            PREFIX,
            "--keepalive",
            "2",
            env={"CLUSTER_PASSWORD": credentials["password"]},
        )


@pytest.fixture
def head(tmp_path: Path) -> Iterator[Head]:
    """A fresh dynsec broker and master for one test."""
    broker = DynsecBroker(tmp_path / "broker", prefix=PREFIX).start()
    try:
        master = start_master(
            broker.admin_url(),
            tmp_path / "master",
            "--prefix",
            PREFIX,
            "--no-ha-discovery",
            env={"CLUSTER_PASSWORD": broker.admin_password, "CLUSTER_API_TOKEN": TOKEN},
        )
    except BaseException:
        broker.stop()
        raise
    yield Head(broker, master, tmp_path)
    master.stop()
    broker.stop()


def connect(broker: DynsecBroker, user: str, password: str) -> tuple[mqtt.Client, int]:
    """Log in as `user`; (client, CONNACK reason code value)."""
    answered = threading.Event()
    result: list[int] = []

    def on_connect(client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        result.append(reason.value)
        answered.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.username_pw_set(user, password)
    client.on_connect = on_connect
    client.connect(broker.host, broker.port)
    client.loop_start()
    assert answered.wait(10), "no CONNACK"
    return client, result[0]


def test_added_node_enrolls_once_and_comes_online(head: Head) -> None:
    token = head.add("pi-05")
    status, credentials = head.api("POST", "/api/enroll", {"token": token}, token=None)
    assert status == 200, credentials
    assert credentials["node"] == "pi-05"
    assert credentials["broker"] == f"mqtt://pi-05@127.0.0.1:{head.broker.port}"
    assert len(credentials["password"]) >= 24

    again, answer = head.api("POST", "/api/enroll", {"token": token}, token=None)
    assert again == 403
    assert "used" in answer["detail"]

    node = head.start_node(credentials)
    try:
        wait_until(
            lambda: (
                (view := head.master.node("pi-05"))
                and view["state"] == "online"
                and view["metrics"]
            ),
            20,
            0.1,
            "pi-05 online with metrics",
        )
    finally:
        node.stop()


def test_removed_node_is_kicked_and_refused(head: Head) -> None:
    token = head.add("pi-06")
    _, credentials = head.api("POST", "/api/enroll", {"token": token}, token=None)
    node = head.start_node(credentials)
    try:
        wait_until(lambda: head.master.node("pi-06"), 20, 0.1, "pi-06 known")
        watcher, code = connect(head.broker, "pi-06", credentials["password"])
        assert code == 0
        kicked = threading.Event()
        watcher.on_disconnect = lambda *args: kicked.set()

        done = head.cli("nodes", "remove", "pi-06")
        assert done.returncode == 0, done.stderr
        assert "deleted" in done.stdout
        assert kicked.wait(5), "the broker did not disconnect the removed client"
        watcher.loop_stop()

        _, refused = connect(head.broker, "pi-06", credentials["password"])
        assert refused == 135  # Not authorized
        # The agent itself keeps trying and is told why it is refused.
        wait_until(lambda: "authori" in node.log().lower(), 30, 0.2, "the node's refusal logged")
    finally:
        node.stop()
    assert head.master.node("pi-06") is None


def test_a_node_cannot_publish_as_another(head: Head) -> None:
    creds = {}
    for name in ("pi-07", "pi-08"):
        token = head.add(name)
        _, creds[name] = head.api("POST", "/api/enroll", {"token": token}, token=None)
    spy, code = connect(head.broker, head.broker.admin, head.broker.admin_password)
    assert code == 0
    seen: list[str] = []
    got = threading.Event()

    def on_message(client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        seen.append(message.topic)
        got.set()

    spy.on_message = on_message
    spy.subscribe(f"{PREFIX}/#", qos=1)
    pi07, code = connect(head.broker, "pi-07", creds["pi-07"]["password"])
    assert code == 0
    forged = pi07.publish(f"{PREFIX}/pi-08/message", b"forged", qos=1)
    forged.wait_for_publish(5)
    own = pi07.publish(f"{PREFIX}/pi-07/message", b"mine", qos=1)
    own.wait_for_publish(5)
    wait_until(lambda: f"{PREFIX}/pi-07/message" in seen, 5, message="pi-07's own message")
    assert f"{PREFIX}/pi-08/message" not in seen
    pi07.loop_stop()
    spy.loop_stop()


def test_token_expires_and_writes_need_the_api_token(head: Head) -> None:
    status, _ = head.api("POST", "/api/enrollments", {"node": "pi-09"}, token=None)
    assert status == 401
    status, issued = head.api("POST", "/api/enrollments", {"node": "pi-09", "ttl_s": 0.5})
    assert status == 201
    assert issued["command"].startswith("curl -fsSL ")

    def expired() -> bool:
        code, _ = head.api("POST", "/api/enroll", {"token": issued["token"]}, token=None)
        return code == 403

    wait_until(expired, 5, 0.1, "the token to expire")
    status, _ = head.api("POST", "/api/enroll", {"token": "not-a-token"}, token=None)
    assert status == 403
    status, answer = head.api("POST", "/api/enrollments", {"node": "picluster-master"})
    assert status == 422
    assert "reserved" in answer["detail"]


def test_master_serves_the_node_installer_and_picluster(head: Head, tmp_path: Path) -> None:
    with urllib.request.urlopen(head.master.api + "/install/node.sh", timeout=10) as response:
        script = response.read().decode()
    assert script.startswith("#!/bin/sh")
    assert "/install/picluster.tar.gz" in script
    archive = tmp_path / "picluster.tar.gz"
    with urllib.request.urlopen(head.master.api + "/install/picluster.tar.gz", timeout=30) as r:
        archive.write_bytes(r.read())
    with tarfile.open(archive) as opened:
        names = set(opened.getnames())
    assert "picluster/deploy/install-node.sh" in names
    assert "picluster/pyproject.toml" in names
    assert "picluster/node_publisher/app.py" in names
    assert not any("__pycache__" in name for name in names)

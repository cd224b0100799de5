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

from tests.conftest import REPO_ROOT
from tests.support.broker import MosquittoBroker
from tests.support.dynsec_broker import DynsecBroker, plugin_path
from tests.support.processes import RunningMaster, Service, start_master, start_node
from tests.support.waiting import wait_until

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


def test_the_printed_command_installs_and_enrolls_a_node(head: Head, tmp_path: Path) -> None:
    """The one command, as printed (sudo aside, into a prefix): the node ends up online."""
    done = head.cli("nodes", "add", "pi-10", "--master-url", head.master.api)
    assert done.returncode == 0, done.stderr
    command = next(line for line in done.stdout.splitlines() if "curl" in line).strip()
    assert command.startswith(f"curl -fsSL {head.master.api}/install/node.sh | sudo sh -s --")
    prefix = tmp_path / "node-root"
    # Root runs it without sudo; --prefix keeps it in tmp_path (no user, no systemctl).
    runnable = command.replace("| sudo sh", "| sh") + f" --prefix {prefix} --no-systemd"
    installed = subprocess.run(
        ["sh", "-c", runnable], capture_output=True, text=True, timeout=600, check=False
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    token = command.split()[-1]
    assert "enrolled as node 'pi-10'" in installed.stdout
    etc = prefix / "etc" / "picluster"
    config = (etc / "node.toml").read_text()
    assert f'broker = "mqtt://pi-10@127.0.0.1:{head.broker.port}"' in config
    password = (etc / "node.password").read_text().strip()
    assert len(password) >= 24
    assert password not in config
    assert password not in runnable
    assert token not in config

    agent = subprocess.Popen(
        [
            str(prefix / "opt" / "picluster" / "venv" / "bin" / "cluster-node"),
            "run",
            "--config",
            str(etc / "node.toml"),
            "--prefix",
            PREFIX,
            "--interval",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(
            lambda: (view := head.master.node("pi-10")) and view["state"] == "online",
            30,
            0.2,
            "the installed pi-10 online",
        )
    finally:
        agent.terminate()
        agent.wait(15)
    again = subprocess.run(
        ["sh", "-c", runnable], capture_output=True, text=True, timeout=600, check=False
    )
    assert again.returncode != 0
    assert "refused the enrollment (HTTP 403)" in again.stderr


@dataclass
class ShippedDynsecBroker(MosquittoBroker):
    """mosquitto/dynsec.conf as shipped, with only the listener, paths and plugin rewritten."""

    def write_config(self) -> Path:
        """The shipped file with this test's paths."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        text = (REPO_ROOT / "mosquitto" / "dynsec.conf").read_text()
        replacements = {
            "pid_file /run/mosquitto/mosquitto.pid": "",
            "listener 1883": f"listener {self.port} {self.host}",
            "plugin /usr/lib/aarch64-linux-gnu/mosquitto_dynamic_security.so": (
                f"plugin {plugin_path()}"
            ),
            "/var/lib/mosquitto/dynamic-security.json": str(self.workdir / "dynsec.json"),
            "persistence_location /var/lib/mosquitto/": f"persistence_location {self.workdir}/",
            "log_dest file /var/log/mosquitto/mosquitto.log": f"log_dest file {self.log_path}",
        }
        for old, new in replacements.items():
            assert old in text, old
            text = text.replace(old, new)
        if os.geteuid() == 0:
            text = "user root\n" + text
        config = self.workdir / "mosquitto.conf"
        config.write_text(text)
        return config


def test_shipped_dynsec_config_and_first_json_let_the_master_enroll(tmp_path: Path) -> None:
    """mosquitto/dynsec.conf with the JSON dynsec_init writes: master connects, adds a node."""
    broker = ShippedDynsecBroker(tmp_path / "broker")
    broker.workdir.mkdir(parents=True)
    init = [sys.executable, "-m", "master_service.enrollment.dynsec_init", "--prefix", PREFIX]
    made = subprocess.run(
        [*init, str(broker.workdir / "dynsec.json")],
        input="master-pw\n",
        capture_output=True,
        text=True,
        check=True,
    )
    assert "admin" in made.stdout
    assert "master-pw" not in (broker.workdir / "dynsec.json").read_text()
    broker.start()
    try:
        master = start_master(
            f"mqtt://picluster-master@{broker.host}:{broker.port}",
            tmp_path / "master",
            "--prefix",
            PREFIX,
            "--no-ha-discovery",
            env={"CLUSTER_PASSWORD": "master-pw"},
        )
        try:
            head = Head(broker, master, tmp_path)  # type: ignore[arg-type]
            token = head.add("pi-11")
            status, credentials = head.api("POST", "/api/enroll", {"token": token}, token=None)
            assert status == 200, credentials
            node = head.start_node(credentials)
            try:
                wait_until(
                    lambda: (view := master.node("pi-11")) and view["state"] == "online",
                    20,
                    0.1,
                    "pi-11 online through the shipped config",
                )
            finally:
                node.stop()
        finally:
            master.stop()
    finally:
        broker.stop()


def test_dynsec_config_differs_from_the_static_one_only_in_who_may_connect() -> None:
    def body(name: str) -> list[str]:
        lines = (REPO_ROOT / "mosquitto" / name).read_text().splitlines()
        start = next(i for i, line in enumerate(lines) if not line.startswith("#"))
        section = [i for i, line in enumerate(lines) if line.startswith("# --- ")]
        who = next(i for i in section if "Who may connect" in lines[i])
        after = section[section.index(who) + 1]
        return lines[start:who] + lines[after:]

    assert body("dynsec.conf") == body("mosquitto.conf")


def test_a_head_without_the_plugin_says_so_and_changes_nothing(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    """The static password file head: `nodes add` explains itself instead of hanging."""
    master = start_master(
        broker.url,
        tmp_path,
        "--prefix",
        "enrstatic",
        "--client-id",
        "picluster-master-enrstatic",
        "--no-ha-discovery",
    )
    try:
        head = Head(broker, master, tmp_path)  # type: ignore[arg-type]
        done = head.cli("nodes", "add", "pi-12")
        assert done.returncode == 4
        assert "dynamic security plugin" in done.stderr
        assert "HTTP 409" in done.stderr
        status, _ = head.api("POST", "/api/enroll", {"token": "whatever"}, token=None)
        assert status == 403
    finally:
        master.stop()


def test_remove_clears_the_nodes_retained_status_and_details(tmp_path: Path) -> None:
    """After `nodes remove`, the broker keeps no retained copy that would bring the node back."""
    broker = ShippedDynsecBroker(tmp_path / "broker")
    broker.workdir.mkdir(parents=True)
    init = [sys.executable, "-m", "master_service.enrollment.dynsec_init", "--prefix", PREFIX]
    subprocess.run(
        [*init, str(broker.workdir / "dynsec.json")], input="master-pw\n", text=True, check=True
    )
    broker.start()
    try:
        master = start_master(
            f"mqtt://picluster-master@{broker.host}:{broker.port}",
            tmp_path / "master",
            "--prefix",
            PREFIX,
            "--no-ha-discovery",
            env={"CLUSTER_PASSWORD": "master-pw"},
        )
        try:
            head = Head(broker, master, tmp_path)  # type: ignore[arg-type]
            token = head.add("pi-13")
            _, credentials = head.api("POST", "/api/enroll", {"token": token}, token=None)
            node = head.start_node(credentials)
            try:
                wait_until(
                    lambda: (view := master.node("pi-13")) and view["state"] == "online",
                    20,
                    0.1,
                    "pi-13 online",
                )
                assert set(retained(broker, "pi-13")) == {"status", "machine_details"}
                done = head.cli("nodes", "remove", "pi-13")
                assert done.returncode == 0, done.stderr
            finally:
                node.stop()
            assert retained(broker, "pi-13") == []
            assert master.node("pi-13") is None
        finally:
            master.stop()
    finally:
        broker.stop()


def retained(broker: MosquittoBroker, node: str) -> list[str]:
    """The types a new subscriber to the node's topics gets as retained messages.

    Retained messages are queued at the subscription, so they arrive before a marker sent
    after it on the same connection: once the marker is in, everything retained is.
    """
    seen: list[tuple[str, bool]] = []
    client, code = connect(broker, "picluster-master", "master-pw")  # type: ignore[arg-type]
    assert code == 0
    subscribed = threading.Event()
    client.on_subscribe = lambda *args: subscribed.set()
    client.on_message = lambda c, u, message: seen.append((message.topic, message.retain))
    try:
        client.subscribe(f"{PREFIX}/{node}/#", qos=1)
        assert subscribed.wait(5), "no SUBACK"
        marker = f"{PREFIX}/{node}/cmd/marker"
        client.publish(marker, b"{}", qos=1).wait_for_publish(5)
        wait_until(lambda: any(topic == marker for topic, _ in seen), 5, message="the marker")
    finally:
        client.disconnect()
        client.loop_stop()
    return [topic.rsplit("/", 1)[1] for topic, kept in seen if kept]

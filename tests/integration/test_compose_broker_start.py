"""The compose broker's start script, run for real: the users come from .env, nothing else.

docker-compose.yml runs mosquitto/docker-start.sh in the eclipse-mosquitto container. Here it
runs on this machine with the same Mosquitto, `mosquitto_ctrl` and `mosquitto_passwd`, its
directories pointed at temporary ones and listeners on free loopback ports, so a fresh
clone's `cp .env.example .env` + `docker compose up -d` is tested without a container engine:
by default with the dynamic security plugin (the shipped mosquitto/docker-dynsec.conf), and
with PICLUSTER_BROKER_AUTH=static the password file and ACL.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cluster_protocol.broker_url import parse_broker_url
from master_service.enrollment.dynsec import DynsecClient, NodeClients
from tests.conftest import REPO_ROOT
from tests.support.broker import free_port, wait_for_port
from tests.support.dynsec_broker import plugin_path
from tests.support.waiting import wait_until

SCRIPT = REPO_ROOT / "mosquitto" / "docker-start.sh"


def login(port: int, user: str, password: str) -> bool:
    """True when the broker accepts this login."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.username_pw_set(user, password)
    try:
        return client.connect("127.0.0.1", port, keepalive=5) == 0 and _connack(client)
    finally:
        client.disconnect()


def _connack(client: mqtt.Client) -> bool:
    accepted: list[bool] = []
    client.on_connect = lambda c, u, f, reason, p: accepted.append(not reason.is_failure)
    while not accepted:
        client.loop(timeout=1.0)
    return accepted[0]


def start(
    tmp_path: Path, env: dict[str, str], host_passwd: str | None = None
) -> tuple[int, subprocess.Popen[bytes]]:
    """The static mode (PICLUSTER_BROKER_AUTH=static) with a minimal broker config."""
    host = tmp_path / "host"
    host.mkdir()
    config = tmp_path / "config"
    config.mkdir()
    owner = pwd.getpwuid(os.getuid()).pw_name
    if os.geteuid() == 0:
        # As in the container: Mosquitto starts as root and drops to its own user, which must
        # be able to read the files the script wrote (pytest's temporary root is 0700).
        owner = "mosquitto"
        config = Path(tempfile.mkdtemp(prefix="picluster-docker-start-"))
        config.chmod(0o755)
        (tmp_path / "config-dir").write_text(str(config))
    shutil.copy(REPO_ROOT / "mosquitto" / "acl", host / "acl")
    env = {"PICLUSTER_BROKER_AUTH": "static", **env}
    if host_passwd is not None:
        (host / "passwd").write_text(host_passwd)
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous false\n"
        f"password_file {config}/passwd\nacl_file {config}/acl\n"
    )
    process = subprocess.Popen(
        ["sh", str(SCRIPT)],
        env={
            "PATH": os.environ["PATH"] + ":/usr/sbin",
            "PICLUSTER_HOST_DIR": str(host),
            "PICLUSTER_CONFIG_DIR": str(config),
            "PICLUSTER_MOSQUITTO_CONF": str(conf),
            "PICLUSTER_MOSQUITTO_USER": owner,
            **env,
        },
        stderr=subprocess.PIPE,
    )
    return port, process


@pytest.fixture
def stopped(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Brokers to stop by PID after the test; the config directory made outside is removed."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        process.terminate()  # by its PID; communicate() also closes the stderr pipe
        process.communicate(timeout=10)
    for name in ("config-dir", "data-dir"):
        made = tmp_path / name
        if made.exists():
            shutil.rmtree(made.read_text(), ignore_errors=True)


class DynsecStart:
    """The default (dynamic security) start, with the shipped docker-dynsec.conf.

    Only the listener, the container's paths and the plugin's path are rewritten; the data
    directory (the volume holding the plugin's JSON) is kept across starts.
    """

    def __init__(self, tmp_path: Path) -> None:
        plugin = plugin_path()
        if plugin is None:
            pytest.fail("mosquitto_dynamic_security.so is not installed: run the test command")
        self.plugin = plugin
        self.tmp_path = tmp_path
        self.port = free_port()
        self.owner = pwd.getpwuid(os.getuid()).pw_name
        if os.geteuid() == 0:
            # Mosquitto drops to its own user, which writes the JSON in the data volume.
            self.owner = "mosquitto"
            self.data = Path(tempfile.mkdtemp(prefix="picluster-docker-data-"))
            self.config = Path(tempfile.mkdtemp(prefix="picluster-docker-start-"))
            shutil.chown(self.data, "mosquitto", "mosquitto")
            self.config.chmod(0o755)
            (tmp_path / "data-dir").write_text(str(self.data))
            (tmp_path / "config-dir").write_text(str(self.config))
        else:
            self.data = tmp_path / "data"
            self.config = tmp_path / "config"
            self.data.mkdir()
            self.config.mkdir()
        self.conf = self.config / "docker-dynsec.conf"
        text = (REPO_ROOT / "mosquitto" / "docker-dynsec.conf").read_text()
        for old, new in {
            "\nlistener 1883\n": f"\nlistener {self.port} 127.0.0.1\n",
            "plugin /usr/lib/mosquitto_dynamic_security.so": f"plugin {plugin}",
            "/mosquitto/data/": f"{self.data}/",
            "log_dest file /mosquitto/log/mosquitto.log": f"log_dest file {self.data}/log",
        }.items():
            assert old in text, old
            text = text.replace(old, new)
        self.conf.write_text(text)

    @property
    def json(self) -> Path:
        """The plugin's JSON in the data volume."""
        return self.data / "dynamic-security.json"

    def run(self, env: dict[str, str]) -> subprocess.Popen[bytes]:
        """Run docker-start.sh as the container does (its set-up broker on a port of its own)."""
        return subprocess.Popen(
            ["sh", str(SCRIPT)],
            env={
                "PATH": os.environ["PATH"] + ":/usr/sbin",
                "PICLUSTER_HOST_DIR": str(REPO_ROOT / "mosquitto"),
                "PICLUSTER_CONFIG_DIR": str(self.config),
                "PICLUSTER_DATA_DIR": str(self.data),
                "PICLUSTER_MOSQUITTO_CONF": str(self.conf),
                "PICLUSTER_MOSQUITTO_USER": self.owner,
                "PICLUSTER_DYNSEC_PLUGIN": self.plugin,
                "PICLUSTER_INIT_PORT": str(free_port()),
                **env,
            },
            stderr=subprocess.PIPE,
        )

    def nodes(self, password: str) -> NodeClients:
        """What the master's `nodes add` and `nodes remove` use, as the master's user."""
        url = f"mqtt://picluster-master:{password}@127.0.0.1:{self.port}"
        return NodeClients(DynsecClient(parse_broker_url(url)), "cluster")


def stop(process: subprocess.Popen[bytes]) -> bytes:
    """Stop a started broker by its PID; its standard error."""
    process.terminate()
    _, stderr = process.communicate(timeout=10)
    return stderr


def test_first_start_writes_the_dynamic_security_json_and_the_master_adds_nodes(
    tmp_path: Path, stopped: list[subprocess.Popen[bytes]]
) -> None:
    broker = DynsecStart(tmp_path)
    env = {"CLUSTER_PASSWORD": "s3cret-master", "PICLUSTER_DEMO_NODE_PASSWORD": "demo-pw"}
    process = broker.run(env)
    stopped.append(process)
    wait_for_port("127.0.0.1", broker.port)
    assert login(broker.port, "picluster-master", "s3cret-master")
    assert login(broker.port, "demo-node", "demo-pw")
    assert not login(broker.port, "picluster-master", "wrong")
    assert "s3cret-master" not in broker.json.read_text()
    assert broker.json.stat().st_mode & 0o777 == 0o600
    assert not list(broker.config.glob("dynsec-init*"))

    # The master is the plugin's admin: `nodes add` works at once, no restart.
    nodes = broker.nodes("s3cret-master")
    assert nodes.ensure("pi-05", "node-pw")
    assert login(broker.port, "pi-05", "node-pw")
    # The demo node is a node like the others: `nodes remove` deletes it.
    assert nodes.delete("demo-node")
    assert not login(broker.port, "demo-node", "demo-pw")

    # A restart keeps the broker's JSON: what the master changed stays, .env is not re-read.
    stopped.remove(process)
    stop(process)
    again = broker.run({"CLUSTER_PASSWORD": "another", "PICLUSTER_DEMO_NODE_PASSWORD": "demo-pw"})
    stopped.append(again)
    wait_for_port("127.0.0.1", broker.port)
    assert login(broker.port, "pi-05", "node-pw")
    assert login(broker.port, "picluster-master", "s3cret-master")
    assert not login(broker.port, "demo-node", "demo-pw")


def test_the_master_role_reads_the_cluster_and_writes_commands(
    tmp_path: Path, stopped: list[subprocess.Popen[bytes]]
) -> None:
    broker = DynsecStart(tmp_path)
    process = broker.run({"CLUSTER_PASSWORD": "m-pw"})
    stopped.append(process)
    wait_for_port("127.0.0.1", broker.port)
    broker.nodes("m-pw").ensure("pi-07", "n-pw")
    master = Client(broker.port, "picluster-master", "m-pw")
    node = Client(broker.port, "pi-07", "n-pw")
    try:
        master.subscribe("cluster/#")
        node.subscribe("cluster/pi-07/cmd/#")
        assert node.publish("cluster/pi-07/metrics", b"{}")
        assert master.publish("cluster/pi-07/cmd/ping", b"{}")
        assert master.publish("cluster/_master/status", b"{}")
        # `nodes remove` clears a removed node's retained status and details.
        assert master.publish("cluster/pi-07/status", b"")
        assert master.publish("cluster/pi-07/machine_details", b"")
        assert not master.publish("cluster/pi-07/metrics", b"{}")
        assert not node.publish("cluster/pi-08/metrics", b"{}")  # another node's subtree
        master.wait_for("cluster/pi-07/metrics")
        node.wait_for("cluster/pi-07/cmd/ping")
    finally:
        master.close()
        node.close()


class Client:
    """A logged-in MQTT 5 client that records the topics it receives."""

    def __init__(self, port: int, user: str, password: str) -> None:
        self.topics: list[str] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.username_pw_set(user, password)
        self.client.on_message = lambda c, u, message: self.topics.append(message.topic)
        assert self.client.connect("127.0.0.1", port, keepalive=5) == 0
        self.client.loop_start()

    def subscribe(self, topic: str) -> None:
        """Subscribe and wait for the SUBACK."""
        acked = threading.Event()
        self.client.on_subscribe = lambda *args: acked.set()
        self.client.subscribe(topic, qos=1)
        assert acked.wait(5), f"no SUBACK for {topic}"

    def publish(self, topic: str, payload: bytes) -> bool:
        """Publish at QoS 1; True when the broker accepted it (PUBACK without an error)."""
        reasons: list[bool] = []
        acked = threading.Event()

        def on_publish(client: mqtt.Client, userdata: Any, mid: int, reason: Any, p: Any) -> None:
            reasons.append(not reason.is_failure)
            acked.set()

        self.client.on_publish = on_publish
        self.client.publish(topic, payload, qos=1).wait_for_publish(5)
        assert acked.wait(5), f"no PUBACK for {topic}"
        return reasons[0]

    def wait_for(self, topic: str) -> None:
        """Return once `topic` has arrived."""
        wait_until(lambda: topic in self.topics, 5, message=f"{topic} delivered")

    def close(self) -> None:
        """Disconnect."""
        self.client.disconnect()
        self.client.loop_stop()


def test_the_broker_takes_the_master_and_demo_users_from_the_environment(
    tmp_path: Path, stopped: list[subprocess.Popen[bytes]]
) -> None:
    port, process = start(
        tmp_path, {"CLUSTER_PASSWORD": "s3cret", "PICLUSTER_DEMO_NODE_PASSWORD": "demo-pw"}
    )
    stopped.append(process)
    wait_for_port("127.0.0.1", port)
    assert login(port, "picluster-master", "s3cret")
    assert login(port, "demo-node", "demo-pw")
    assert not login(port, "picluster-master", "wrong")
    config = Path((tmp_path / "config-dir").read_text()) if os.geteuid() == 0 else tmp_path
    passwd = (config if os.geteuid() == 0 else config / "config") / "passwd"
    assert passwd.stat().st_mode & 0o777 == 0o600


def test_users_an_admin_added_to_mosquitto_passwd_are_kept(
    tmp_path: Path, stopped: list[subprocess.Popen[bytes]]
) -> None:
    made = tmp_path / "made"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(made), "pi-05", "node-pw"], check=True)
    port, process = start(tmp_path, {"CLUSTER_PASSWORD": "s3cret"}, made.read_text())
    stopped.append(process)
    wait_for_port("127.0.0.1", port)
    assert login(port, "pi-05", "node-pw")
    assert login(port, "picluster-master", "s3cret")


def test_without_a_master_password_it_says_what_to_do(
    tmp_path: Path, stopped: list[subprocess.Popen[bytes]]
) -> None:
    _, process = start(tmp_path, {})
    _, stderr = process.communicate(timeout=20)
    assert process.returncode == 2
    assert b"copy .env.example to .env" in stderr


def test_an_unknown_broker_auth_mode_is_refused(tmp_path: Path) -> None:
    done = subprocess.run(
        ["sh", str(SCRIPT)],
        env={"PATH": os.environ["PATH"], "CLUSTER_PASSWORD": "x", "PICLUSTER_BROKER_AUTH": "ldap"},
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert done.returncode == 2
    assert "must be dynsec or static" in done.stderr

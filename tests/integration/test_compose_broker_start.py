"""The compose broker's start script, run for real: the users come from .env, nothing else.

docker-compose.yml runs mosquitto/docker-start.sh in the eclipse-mosquitto container. Here it
runs on this machine with the same Mosquitto and `mosquitto_passwd`, its directories pointed
at a temporary one and a listener on a free loopback port, so a fresh clone's
`cp .env.example .env` + `docker compose up -d` is tested without a container engine.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.conftest import REPO_ROOT
from tests.support.broker import free_port, wait_for_port

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
    made = tmp_path / "config-dir"
    if made.exists():
        shutil.rmtree(made.read_text(), ignore_errors=True)


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

"""Authentication with the shipped broker config: who gets in, who writes where, no leaks."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO_ROOT
from tests.integration.test_hostile_input import RawPublisher, metrics_bytes
from tests.integration.test_mosquitto_acl import NOT_AUTHORIZED, Session
from tests.integration.test_mosquitto_config import ShippedBroker
from tests.support.processes import start_master, start_node
from tests.support.waiting import wait_until

MASTER_PASSWORD = "m4ster-Pa55-never-shown"
NODE_A_PASSWORD = "a-Pa55-never-shown"
NODE_B_PASSWORD = "b-Pa55-never-shown"


@pytest.fixture
def shipped(tmp_path_factory: pytest.TempPathFactory, mosquitto_binary: str) -> Iterator[Any]:
    """The shipped mosquitto.conf and ACL with a master and two node users."""
    suffix = uuid.uuid4().hex[:6]
    nodes = {"a": f"auth-a-{suffix}", "b": f"auth-b-{suffix}"}
    broker = ShippedBroker(
        tmp_path_factory.mktemp("shipped-auth"),
        users={
            "picluster-master": MASTER_PASSWORD,
            nodes["a"]: NODE_A_PASSWORD,
            nodes["b"]: NODE_B_PASSWORD,
        },
    )
    broker.start()
    yield broker, nodes
    broker.stop()


def say(
    url: str, node_id: str, state_dir: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable, "-m", "node_publisher", "say", "hello", "--timeout", "5",
            "--broker", url, "--node-id", node_id, "--state-dir", str(state_dir),
        ],
        capture_output=True, text=True, timeout=30, cwd=REPO_ROOT, check=False,
        env={"PATH": "/usr/bin:/bin", **env},
    )  # fmt: skip


def test_anonymous_and_wrong_password_are_refused_with_a_clear_message(
    shipped: Any, tmp_path: Path
) -> None:
    broker, nodes = shipped
    anonymous = say(broker.url, nodes["a"], tmp_path, {})
    wrong = say(broker.url, nodes["a"], tmp_path, {"CLUSTER_PASSWORD": "not-it"})
    right = say(broker.url, nodes["a"], tmp_path, {"CLUSTER_PASSWORD": NODE_A_PASSWORD})
    for refused in (anonymous, wrong):
        assert refused.returncode == 1
        assert "refused the connection" in refused.stderr
        assert "Not authorized" in refused.stderr or "Bad user name or password" in refused.stderr
        assert "Traceback" not in refused.stderr
    assert "not-it" not in wrong.stderr
    assert right.returncode == 0, right.stderr


def test_each_node_writes_only_its_own_subtree_and_only_the_master_commands(
    shipped: Any, tmp_path: Path
) -> None:
    broker, nodes = shipped
    a, b = nodes["a"], nodes["b"]
    node_a = Session(broker, a, NODE_A_PASSWORD)
    master_session = Session(broker, "picluster-master", MASTER_PASSWORD)
    try:
        assert node_a.publish(f"cluster/{a}/metrics") in (0, 16)
        # Spoofing another node, or commanding one, is refused by the broker (MQTT 5 reason 135).
        assert node_a.publish(f"cluster/{b}/metrics") == NOT_AUTHORIZED
        assert node_a.publish(f"cluster/{b}/cmd/reboot") == NOT_AUTHORIZED
        assert node_a.publish("cluster/_master/status") == NOT_AUTHORIZED
        assert master_session.publish(f"cluster/{b}/cmd/reboot") in (0, 16)
    finally:
        node_a.close()
        master_session.close()


def test_a_spoofing_node_never_reaches_the_master(shipped: Any, tmp_path: Path) -> None:
    broker, nodes = shipped
    a, b = nodes["a"], nodes["b"]
    password_file = tmp_path / "master.password"
    password_file.write_text(MASTER_PASSWORD + "\n")
    master = start_master(
        f"mqtt://picluster-master@{broker.host}:{broker.port}",
        tmp_path / "master",
        "--password-file", str(password_file), "--no-ha-discovery",
    )  # fmt: skip
    sender = RawPublisher(broker.host, broker.port, a, NODE_A_PASSWORD)
    try:
        sender.send(f"cluster/{b}/metrics", metrics_bytes(1, node=b))
        sender.send(f"cluster/{a}/metrics", metrics_bytes(1, node=a))
        wait_until(lambda: master.node(a), message="node a's own metrics at the master")
        assert master.node(b) is None
    finally:
        sender.close()
        master.stop()


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def http_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        body: bytes = response.read()
    return body.decode()


def test_passwords_stay_out_of_logs_ps_and_the_api(shipped: Any, tmp_path: Path) -> None:
    broker, nodes = shipped
    a, b = nodes["a"], nodes["b"]
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    (secrets_dir / "master").write_text(MASTER_PASSWORD + "\n")
    (secrets_dir / "a").write_text(NODE_A_PASSWORD + "\n")
    url = f"mqtt://{broker.host}:{broker.port}"
    master = start_master(
        f"mqtt://picluster-master@{broker.host}:{broker.port}",
        tmp_path / "master",
        "--password-file", str(secrets_dir / "master"), "--log-level", "DEBUG",
    )  # fmt: skip
    from_file = start_node(
        url, tmp_path, a, "--password-file", str(secrets_dir / "a"), "--log-level", "DEBUG"
    )
    from_env = start_node(
        url, tmp_path, b, "--log-level", "DEBUG", env={"CLUSTER_PASSWORD": NODE_B_PASSWORD}
    )
    secrets = (MASTER_PASSWORD, NODE_A_PASSWORD, NODE_B_PASSWORD)
    try:
        for node_id in (a, b):

            def has_metrics(n: str = node_id) -> bool:
                view = master.node(n)
                return bool(view and view["metrics"])

            wait_until(has_metrics, 15, message=f"{node_id}'s metrics")
        shown = " ".join(
            [
                cmdline(master.process.pid),
                cmdline(from_file.process.pid),
                cmdline(from_env.process.pid),
                *(http_get(master.api + path) for path in ("/api/nodes", "/api/cluster")),
                *(http_get(f"{master.api}/api/nodes/{n}") for n in (a, b)),
                http_get(master.api + "/healthz"),
                http_get(master.api + "/metrics"),
                http_get(master.api + "/openapi.json"),
            ]
        )
        assert "password-file" in shown  # the check looks at the right command lines
        for secret in secrets:
            assert secret not in shown
    finally:
        for node in (from_file, from_env):
            node.stop()
        master.stop()
    logs = master.log() + from_file.log() + from_env.log() + broker.log_path.read_text()
    assert "DEBUG" in master.log()
    for secret in secrets:
        assert secret not in logs

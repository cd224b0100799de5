"""The shipped broker configs on a real Mosquitto: mosquitto.conf, dev.conf and add-user.sh.

The production config is used as shipped, with only its listener and file paths pointed at a
temporary directory (1883 and /etc, /var are not the tests' to take).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest

from tests.conftest import REPO_ROOT
from tests.integration.test_mosquitto_acl import ACCEPTED, SHIPPED_ACL, Session
from tests.support.broker import MosquittoBroker, free_port, wait_for_port
from tests.support.waiting import wait_until
from tests.support.watcher import Watcher

SHIPPED_CONF = REPO_ROOT / "mosquitto" / "mosquitto.conf"
DEV_CONF = REPO_ROOT / "mosquitto" / "dev.conf"
ADD_USER = REPO_ROOT / "mosquitto" / "add-user.sh"
PAYLOAD_LIMIT_BYTES = 64 * 1024
MASTER_PASSWORD = "master-secret"


def add_user(name: str, password: str, password_file: Path) -> subprocess.CompletedProcess[str]:
    """Run the shipped add-user.sh, feeding the password on stdin as a script would."""
    return subprocess.run(
        [str(ADD_USER), name, "--password-file", str(password_file)],
        input=password + "\n",
        capture_output=True,
        text=True,
        check=False,
    )


@dataclass
class ShippedBroker(MosquittoBroker):
    """Mosquitto running mosquitto/mosquitto.conf with only the listener and paths rewritten."""

    password_file: Path | None = None
    source: ClassVar[Path] = SHIPPED_CONF

    def more_lines(self) -> dict[str, str]:
        """Lines of `source` to rewrite beyond the listener and the paths (a subclass's)."""
        return {}

    def write_config(self) -> Path:
        """Rewrite the shipped config's listener and paths into workdir; return its path."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        password_file = self.password_file or self.workdir / "passwd"
        if self.users is not None:
            for name, password in self.users.items():
                add_user(name, password, password_file).check_returncode()
        acl_file = self.workdir / "acl"
        acl_file.write_text(SHIPPED_ACL.read_text())
        replacements = {
            "listener 1883": f"listener {self.port} {self.host}",
            "pid_file /run/mosquitto/mosquitto.pid": "",
            "password_file /etc/mosquitto/passwd": f"password_file {password_file}",
            "acl_file /etc/mosquitto/acl": f"acl_file {acl_file}",
            "persistence_location /var/lib/mosquitto/": f"persistence_location {self.workdir}/",
            "log_dest file /var/log/mosquitto/mosquitto.log": f"log_dest file {self.log_path}",
            **self.more_lines(),
        }
        lines = self.source.read_text().splitlines()
        missing = sorted(set(replacements) - set(lines))
        assert not missing, f"{self.source.name} no longer has {missing}: update this test"
        rewritten = [replacements.get(line, line) for line in lines]
        if os.geteuid() == 0:
            # Root-run Mosquitto drops to 'mosquitto' before reading the test's 0600 files.
            rewritten.insert(0, "user root")
        config = self.workdir / "mosquitto.conf"
        config.write_text("\n".join(rewritten) + "\n")
        return config


@pytest.fixture
def shipped_broker(
    tmp_path_factory: pytest.TempPathFactory, mosquitto_binary: str
) -> Iterator[Any]:
    """Start brokers running the shipped config; all are stopped after the test."""
    started: list[ShippedBroker] = []

    def start(users: Mapping[str, str] | None = None, **options: Any) -> ShippedBroker:
        broker = ShippedBroker(tmp_path_factory.mktemp("shipped"), users=users, **options)
        broker.start()
        started.append(broker)
        return broker

    yield start
    for broker in started:
        broker.stop()


def test_shipped_config_refuses_anonymous_and_admits_users(shipped_broker: Any) -> None:
    broker = shipped_broker({"node-a": "a-secret"})
    anonymous = Session(broker, None)
    node = Session(broker, "node-a", "a-secret")
    try:
        assert not anonymous.accepted
        assert node.accepted
        assert node.publish("cluster/node-a/metrics") in ACCEPTED
    finally:
        anonymous.close()
        node.close()


def test_queue_holds_a_master_outage_across_a_broker_restart(shipped_broker: Any) -> None:
    # Mosquitto's default max_queued_messages (1000) would silently drop most of these.
    count = 5000
    broker = shipped_broker({"picluster-master": MASTER_PASSWORD, "node-a": "a-secret"})
    master = Session(
        broker,
        "picluster-master",
        MASTER_PASSWORD,
        client_id="picluster-master",
        clean_start=False,
        session_expiry_s=3600,
    )
    master.subscribe("cluster/#")
    master.close()

    node = Session(broker, "node-a", "a-secret")
    for i in range(count):
        node.client.publish("cluster/node-a/metrics", b"%d" % i, qos=1)
    wait_until(lambda: len(node.acks) == count, timeout_s=30, message="all PUBACKs")
    node.close()
    broker.restart()  # SIGTERM: persistence must bring the queue back

    received: list[bytes] = []
    back = Session(
        broker,
        "picluster-master",
        MASTER_PASSWORD,
        client_id="picluster-master",
        clean_start=False,
        session_expiry_s=3600,
        on_message=lambda client, userdata, msg: received.append(bytes(msg.payload)),
    )
    try:
        wait_until(lambda: len(received) >= count, timeout_s=30, message=f"{count} messages")
        assert sorted(int(p) for p in received) == list(range(count))
    finally:
        back.close()


def test_payload_limit_admits_64_kib_and_drops_more(shipped_broker: Any) -> None:
    broker = shipped_broker({"picluster-master": MASTER_PASSWORD, "node-a": "a-secret"})
    watcher = Watcher(broker.host, broker.port, "cluster/#", "picluster-master", MASTER_PASSWORD)
    node = Session(broker, "node-a", "a-secret")
    try:
        # The largest envelope a node may send passes with room to spare.
        assert node.publish("cluster/node-a/message", b"x" * PAYLOAD_LIMIT_BYTES) in ACCEPTED
        # Above the limit the broker drops it with reason 149 "Packet too large". paho 2.2 cannot
        # parse that PUBACK reason code and reconnects in a loop (hence mosquitto_pub here, and
        # the senders' own size check).
        oversize = subprocess.run(
            [
                "mosquitto_pub",
                "-h",
                broker.host,
                "-p",
                str(broker.port),
                "-V",
                "5",
                "-q",
                "1",
                "-u",
                "node-a",
                "-P",
                "a-secret",
                "-t",
                "cluster/node-a/message",
                "-s",
            ],
            input=b"y" * (PAYLOAD_LIMIT_BYTES + 8192),
            capture_output=True,
            check=False,
            timeout=10,
        )
        assert b"Packet too large" in oversize.stderr
        assert node.publish("cluster/node-a/status", b"after") in ACCEPTED
        watcher.wait_for("cluster/node-a/status")
        sizes = [len(m.payload) for m in watcher.on("cluster/node-a/message")]
        assert sizes == [PAYLOAD_LIMIT_BYTES]
    finally:
        node.close()
        watcher.close()


def test_add_user_creates_a_user_the_running_broker_admits_after_reload(
    shipped_broker: Any, tmp_path: Path
) -> None:
    password_file = tmp_path / "passwd"
    assert add_user("picluster-master", MASTER_PASSWORD, password_file).returncode == 0
    broker = shipped_broker(password_file=password_file)
    assert not Session(broker, "pi-07", "pi-07-secret").accepted

    result = add_user("pi-07", "pi-07-secret", password_file)
    assert result.returncode == 0, result.stderr
    assert "systemctl reload mosquitto" in result.stdout
    assert "pi-07-secret" not in password_file.read_text()
    assert broker.process is not None
    broker.process.send_signal(signal.SIGHUP)

    def admitted() -> bool:
        session = Session(broker, "pi-07", "pi-07-secret")
        session.close()
        return session.accepted

    wait_until(admitted, message="pi-07 admitted after SIGHUP")


def test_add_user_changes_a_password(tmp_path: Path, shipped_broker: Any) -> None:
    password_file = tmp_path / "passwd"
    add_user("pi-07", "old-secret", password_file).check_returncode()
    add_user("pi-07", "new-secret", password_file).check_returncode()
    assert password_file.read_text().count("pi-07:") == 1
    broker = shipped_broker(password_file=password_file)
    old, new = Session(broker, "pi-07", "old-secret"), Session(broker, "pi-07", "new-secret")
    old.close()
    new.close()
    assert (old.accepted, new.accepted) == (False, True)


@pytest.mark.parametrize("name", ["Pi-07", "-pi", "pi.07", "a" * 64, "", "pi 07", "_master"])
def test_add_user_rejects_names_that_are_not_node_ids(tmp_path: Path, name: str) -> None:
    result = add_user(name, "secret", tmp_path / "passwd")
    assert result.returncode != 0
    assert not (tmp_path / "passwd").exists()


def test_add_user_never_takes_the_password_as_an_argument(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(ADD_USER), "pi-07", "secret", "--password-file", str(tmp_path / "passwd")],
        input="secret\n",
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "only one NAME" in result.stderr


def test_add_user_help() -> None:
    result = subprocess.run([str(ADD_USER), "--help"], capture_output=True, text=True, check=True)
    assert "Usage: add-user.sh NAME" in result.stdout


def _as_unprivileged_user() -> tuple[list[str], int | None]:
    """A command prefix that drops root (the dev broker must work for a normal user)."""
    if os.geteuid() != 0:
        return [], None
    setpriv = shutil.which("setpriv")
    assert setpriv, "setpriv (util-linux) is needed to run the dev broker as a normal user"
    nobody = pwd.getpwnam("nobody")
    prefix = [setpriv, f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups"]
    return prefix, nobody.pw_uid


def test_dev_config_runs_from_a_checkout_as_a_normal_user(tmp_path: Path) -> None:
    conf_lines = DEV_CONF.read_text().splitlines()
    assert "listener 1883 127.0.0.1" in conf_lines  # loopback only
    assert "allow_anonymous true" in conf_lines
    port = free_port()
    checkout = tmp_path / "checkout"
    (checkout / "mosquitto").mkdir(parents=True)
    (checkout / "mosquitto" / "dev.conf").write_text(
        DEV_CONF.read_text().replace("listener 1883 127.0.0.1", f"listener {port} 127.0.0.1")
    )
    (checkout / ".run" / "mosquitto").mkdir(parents=True)
    prefix, uid = _as_unprivileged_user()
    if uid is not None:
        for path in (checkout, checkout / ".run", checkout / ".run" / "mosquitto"):
            os.chown(path, uid, -1)

    def start() -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            [*prefix, "mosquitto", "-c", "mosquitto/dev.conf"],
            cwd=checkout,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port("127.0.0.1", port)
        return process

    def stop(process: subprocess.Popen[bytes]) -> None:
        process.terminate()
        process.wait(timeout=10)

    process = start()
    try:
        broker = MosquittoBroker(tmp_path, port=port)
        publisher = Session(broker, None)
        assert publisher.accepted
        assert publisher.publish("cluster/dev/status", b"kept", retain=True) in ACCEPTED
        publisher.close()
        stop(process)
        assert (checkout / ".run" / "mosquitto" / "mosquitto.db").exists()
        assert (
            "Opening ipv4 listen socket"
            in (checkout / ".run" / "mosquitto" / "mosquitto.log").read_text()
        )

        process = start()
        watcher = Watcher("127.0.0.1", port, "cluster/dev/status")
        try:
            seen = watcher.wait_for("cluster/dev/status")[0]
            assert (seen.payload, seen.retain) == (b"kept", True)
        finally:
            watcher.close()
    finally:
        stop(process)

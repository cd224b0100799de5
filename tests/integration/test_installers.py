"""The installers run for real into a temporary prefix: idempotent, clean uninstall, refusals.

With --prefix the scripts create no system user and call no systemctl, so these tests touch
nothing outside tmp_path. pip installs picluster from this checkout (dependencies from PyPI).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.integration.test_mosquitto_acl import Session
from tests.support.broker import MosquittoBroker, free_port, wait_for_port

DEPLOY = REPO_ROOT / "deploy"
INSTALL_NODE = DEPLOY / "install-node.sh"
INSTALL_HEAD = DEPLOY / "install-head.sh"
SCRIPTS = [
    INSTALL_NODE,
    INSTALL_HEAD,
    DEPLOY / "installer-lib.sh",
    REPO_ROOT / "mosquitto" / "add-user.sh",
]
INSTALL_TIMEOUT_S = 300


def run(script: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """Run an installer; its output is kept for the assertion messages."""
    return subprocess.run(
        [str(script), *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
        timeout=INSTALL_TIMEOUT_S,
    )


def snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every path under root with its size, modification time and mode."""
    state = {}
    for path in [root, *root.rglob("*")]:
        info = path.lstat()
        state[str(path.relative_to(root))] = (info.st_size, info.st_mtime_ns, info.st_mode)
    return state


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    """Assert success, showing the installer's output when it failed."""
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shellcheck_is_clean(script: Path) -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.fail("shellcheck is not installed: apt-get install -y shellcheck")
    result = subprocess.run(
        [shellcheck, "-x", str(script)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("script", [INSTALL_NODE, INSTALL_HEAD], ids=lambda p: p.name)
def test_help(script: Path) -> None:
    result = ok(run(script, "--help"))
    for option in ("--uninstall", "--prefix", "--no-systemd", "--source"):
        assert option in result.stdout


def test_node_install_is_idempotent_and_uninstalls_without_a_trace(tmp_path: Path) -> None:
    prefix = tmp_path / "root"
    secret = tmp_path / "secret"
    secret.write_text("node-secret\n")
    args = ["--prefix", str(prefix), "--no-systemd", "--node-id", "pi-01"]

    ok(run(INSTALL_NODE, *args, "--broker", "mqtt://head.local", "--password-file", str(secret)))
    etc = prefix / "etc" / "picluster"
    venv = prefix / "opt" / "picluster" / "venv"
    assert (venv / "bin" / "cluster-node").exists()
    assert (etc / "node.password").read_text() == "node-secret\n"
    assert oct((etc / "node.password").stat().st_mode & 0o777) == "0o640"
    config = (etc / "node.toml").read_text()
    assert 'broker = "mqtt://pi-01@head.local"' in config  # the user is the node id
    assert "node-secret" not in config
    assert not (prefix / "etc" / "systemd").exists()  # --no-systemd

    # The installed agent reads that config, password included.
    loaded = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import sys; from node_publisher.settings import load_settings; "
            "s = load_settings(['--config', sys.argv[1]], {}); print(s.node_id, s.password)",
            str(etc / "node.toml"),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert loaded.stdout.split() == ["pi-01", "node-secret"]

    before = snapshot(prefix)
    again = ok(run(INSTALL_NODE, *args))  # no password, no broker: keeps what is there
    assert "up to date" in again.stdout
    assert snapshot(prefix) == before
    same = ok(
        run(INSTALL_NODE, *args, "--broker", "mqtt://head.local", "--password-file", str(secret))
    )
    assert "wrote" not in same.stdout
    assert snapshot(prefix) == before

    ok(run(INSTALL_NODE, "--prefix", str(prefix), "--uninstall"))
    assert list(prefix.iterdir()) == []


def test_head_install_makes_a_working_broker_and_uninstalls_cleanly(
    tmp_path: Path, mosquitto_binary: str
) -> None:
    prefix = tmp_path / "root"
    args = ["--prefix", str(prefix), "--node", "pi-01", "--nodes", "pi-02,pi-03"]
    ok(run(INSTALL_HEAD, *args))
    etc = prefix / "etc" / "picluster"
    mosquitto_dir = prefix / "etc" / "mosquitto"
    assert (prefix / "opt" / "picluster" / "venv" / "bin" / "cluster-master").exists()
    unit = (prefix / "etc" / "systemd" / "system" / "picluster-master.service").read_text()
    assert f"--config {etc}/master.toml" in unit
    users = [line.split(":")[0] for line in (mosquitto_dir / "passwd").read_text().splitlines()]
    assert users == ["picluster-master", "homeassistant", "pi-01", "pi-02", "pi-03"]
    master_password = (etc / "master.password").read_text().strip()
    assert len(master_password) >= 24
    assert master_password not in (etc / "master.toml").read_text()
    assert oct((etc / "nodes" / "pi-01.password").stat().st_mode & 0o777) == "0o600"

    before = snapshot(prefix)
    again = ok(run(INSTALL_HEAD, *args))
    assert "up to date" in again.stdout
    assert snapshot(prefix) == before

    # The installed broker config works as written (only the listener moved off 1883).
    conf = (mosquitto_dir / "mosquitto.conf").read_text()
    port = free_port()
    test_conf = tmp_path / "test.conf"
    user_root = "user root\n" if os.geteuid() == 0 else ""
    test_conf.write_text(
        user_root + conf.replace("\nlistener 1883\n", f"\nlistener {port} 127.0.0.1\n")
    )
    broker = subprocess.Popen(
        ["mosquitto", "-c", str(test_conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        address = MosquittoBroker(tmp_path, port=port)
        wait_for_port("127.0.0.1", port)
        node_password = (etc / "nodes" / "pi-02.password").read_text().strip()
        sessions = [
            Session(address, "picluster-master", master_password),
            Session(address, "pi-02", node_password),
            Session(address, "pi-02", "wrong"),
        ]
        for session in sessions:
            session.close()
        assert [s.accepted for s in sessions] == [True, True, False]
    finally:
        broker.terminate()
        broker.wait(timeout=10)
        if broker.stderr is not None:
            broker.stderr.close()

    ok(run(INSTALL_HEAD, "--prefix", str(prefix), "--uninstall"))
    assert list(prefix.iterdir()) == []


def test_head_and_node_on_one_machine_share_the_venv(tmp_path: Path) -> None:
    prefix = tmp_path / "root"
    ok(run(INSTALL_HEAD, "--prefix", str(prefix), "--no-systemd", "--node", "head-01"))
    node_password = prefix / "etc" / "picluster" / "nodes" / "head-01.password"
    node = ok(
        run(
            INSTALL_NODE,
            "--prefix",
            str(prefix),
            "--no-systemd",
            "--node-id",
            "head-01",
            "--broker",
            "mqtt://127.0.0.1",
            "--password-file",
            str(node_password),
        )
    )
    assert "up to date" in node.stdout  # the master's venv serves the node

    ok(run(INSTALL_HEAD, "--prefix", str(prefix), "--uninstall"))
    assert (prefix / "opt" / "picluster" / "venv" / "bin" / "cluster-node").exists()
    ok(run(INSTALL_NODE, "--prefix", str(prefix), "--uninstall"))
    assert list(prefix.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (["--node-id", "Pi_01", "--broker", "mqtt://h"], "pw\n", "is not valid"),
        (["--node-id", "pi-01", "--broker", "mqtt://pi-01:pw@h"], "pw\n", "out of the broker URL"),
        (["--node-id", "pi-01", "--broker", "mqtt://pi-02@h"], "pw\n", "must equal the node id"),
        (["--node-id", "pi-01", "--broker", "http://h"], "pw\n", "must look like"),
        (["--node-id", "pi-01", "--broker", "mqtt://h"], "", "no password"),
        (["--node-id", "pi-01"], "pw\n", "no broker"),
        (
            ["--node-id", "pi-01", "--broker", "mqtt://h", "--source", "/nonexistent"],
            "",
            "does not exist",
        ),
        (["--bogus"], "", "unknown argument"),
    ],
)
def test_node_installer_refuses_bad_input_before_changing_anything(
    tmp_path: Path, args: list[str], stdin: str, message: str
) -> None:
    prefix = tmp_path / "root"
    result = run(INSTALL_NODE, "--prefix", str(prefix), "--no-systemd", *args, stdin=stdin)
    assert result.returncode != 0
    assert message in result.stderr
    assert not prefix.exists()


@pytest.mark.parametrize("script", [INSTALL_NODE, INSTALL_HEAD], ids=lambda p: p.name)
def test_installers_refuse_an_old_python(tmp_path: Path, script: Path) -> None:
    old_python = tmp_path / "python3"
    old_python.write_text('#!/bin/sh\n[ "$1" = -V ] && echo "Python 3.9.2"\nexit 1\n')
    old_python.chmod(0o755)
    prefix = tmp_path / "root"
    result = (
        run(
            script,
            "--prefix",
            str(prefix),
            "--no-systemd",
            "--python",
            str(old_python),
            "--broker",
            "mqtt://h",
            "--node-id",
            "pi-01",
            stdin="pw\n",
        )
        if script == INSTALL_NODE
        else run(script, "--prefix", str(prefix), "--no-systemd", "--python", str(old_python))
    )
    assert result.returncode != 0
    assert "Python 3.9.2 is too old" in result.stderr
    assert not prefix.exists()


def test_real_system_install_needs_root(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        # As root, check through an unprivileged user that the script refuses at once.
        setpriv = shutil.which("setpriv")
        assert setpriv, "setpriv (util-linux) is needed"
        command = [setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    else:
        command = []
    result = subprocess.run(
        [*command, str(INSTALL_NODE), "--broker", "mqtt://h", "--node-id", "pi-01"],
        input="",
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "needs root" in result.stderr

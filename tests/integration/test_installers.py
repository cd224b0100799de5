"""The installers run for real into a temporary prefix: idempotent, clean uninstall, refusals.

With --prefix the scripts create no system user and call no systemctl (unless
PICLUSTER_SYSTEMCTL names one: here a stand-in that records its calls), so these tests touch
nothing outside tmp_path. pip installs picluster from a copy of this checkout taken once per
session (dependencies from PyPI), so edits to the tree during the run do not look like an
upgrade.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from cluster_protocol.broker_url import parse_broker_url
from master_service.enrollment.dynsec import DynsecClient, NodeClients
from tests.conftest import REPO_ROOT
from tests.integration.test_mosquitto_acl import Session
from tests.support.broker import MosquittoBroker, free_port, wait_for_port
from tests.support.dynsec_broker import plugin_path
from tests.support.processes import RunningMaster
from tests.support.waiting import wait_until

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
SOURCE_PATHS = (
    "pyproject.toml",
    "README.md",
    "cluster_protocol",
    "node_publisher",
    "master_service",
    "deploy",  # the node's installer files, which the master serves beside the source
)
# What changes a service's state; is-active and is-enabled only ask.
MUTATING = {"daemon-reload", "enable", "disable", "start", "stop", "restart", "reload",
            "reload-or-restart", "try-restart"}  # fmt: skip
# Records every call in $SYSTEMCTL_LOG and keeps which units are enabled and active in files,
# so that is-active and is-enabled answer like systemd would after the earlier calls.
SYSTEMCTL_STAND_IN = """#!/bin/sh
echo "$*" >>"$SYSTEMCTL_LOG"
state="$SYSTEMCTL_LOG.state"
mkdir -p "$state"
case "$1" in
    is-active) test -e "$state/active-$3" ;;
    is-enabled) test -e "$state/enabled-$3" ;;
    enable) shift; for unit in "$@"; do touch "$state/enabled-$unit"; done ;;
    start | restart | reload-or-restart) touch "$state/active-$2" ;;
    *) exit 0 ;;
esac
"""


def run(
    script: Path, *args: str, stdin: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run an installer; its output is kept for the assertion messages."""
    return subprocess.run(
        [str(script), *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
        timeout=INSTALL_TIMEOUT_S,
        env=env,
    )


def copy_source(dest: Path) -> Path:
    """A copy of what the installers build from this checkout."""
    dest.mkdir(exist_ok=True)
    for name in SOURCE_PATHS:
        path = REPO_ROOT / name
        if path.is_dir():
            shutil.copytree(path, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, dest / name)
    return dest


@pytest.fixture(scope="session")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The checkout as it was when the session started."""
    return copy_source(tmp_path_factory.mktemp("source"))


class Systemctl:
    """A systemctl stand-in for the installers (via PICLUSTER_SYSTEMCTL) that records calls."""

    def __init__(self, workdir: Path) -> None:
        self.log = workdir / "systemctl.log"
        self.path = workdir / "bin" / "systemctl"
        self.path.parent.mkdir()
        self.path.write_text(SYSTEMCTL_STAND_IN)
        self.path.chmod(0o755)
        self.env = {
            **os.environ,
            "PATH": f"{self.path.parent}:{os.environ['PATH']}",
            "PICLUSTER_SYSTEMCTL": "systemctl",
            "SYSTEMCTL_LOG": str(self.log),
        }

    def take_changes(self) -> list[str]:
        """The calls that changed something since the last take, oldest first."""
        calls = self.log.read_text().splitlines() if self.log.exists() else []
        self.log.write_text("")
        return [call for call in calls if call.split()[0] in MUTATING]


@pytest.fixture
def systemctl(tmp_path: Path) -> Systemctl:
    """A recording systemctl on PATH, driven by the installers even with --prefix."""
    return Systemctl(tmp_path)


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
    if script == INSTALL_HEAD:
        assert "--static-passwords" in result.stdout
        assert "nodes add" in result.stdout
    else:
        assert "--tags" in result.stdout


def test_node_install_is_idempotent_and_uninstalls_without_a_trace(
    tmp_path: Path, source: Path
) -> None:
    prefix = tmp_path / "root"
    secret = tmp_path / "secret"
    secret.write_text("node-secret\n")
    args = ["--prefix", str(prefix), "--no-systemd", "--node-id", "pi-01", "--source", str(source)]

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


class InstalledBroker:
    """The broker config an installer wrote, run for real with only the listener moved."""

    def __init__(self, tmp_path: Path, conf: str) -> None:
        self.port = free_port()
        test_conf = tmp_path / "test.conf"
        user_root = "user root\n" if os.geteuid() == 0 else ""
        assert "\nlistener 1883\n" in conf
        test_conf.write_text(
            user_root + conf.replace("\nlistener 1883\n", f"\nlistener {self.port} 127.0.0.1\n")
        )
        self.address = MosquittoBroker(tmp_path, port=self.port)
        self.process = subprocess.Popen(
            ["mosquitto", "-c", str(test_conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        wait_for_port("127.0.0.1", self.port)

    def logins(self, *users: tuple[str, str]) -> list[bool]:
        """Whether each (user, password) is accepted."""
        sessions = [Session(self.address, user, password) for user, password in users]
        for session in sessions:
            session.close()
        return [session.accepted for session in sessions]

    def stop(self) -> None:
        """Stop it by its PID."""
        self.process.terminate()
        self.process.wait(timeout=10)
        if self.process.stderr is not None:
            self.process.stderr.close()


def test_head_install_uses_dynamic_security_and_the_master_can_add_a_node(
    tmp_path: Path, mosquitto_binary: str, source: Path
) -> None:
    """The shipped head: the plugin, its JSON with the master as admin, nothing static."""
    prefix = tmp_path / "root"
    args = ["--prefix", str(prefix), "--no-systemd", "--source", str(source)]
    ok(run(INSTALL_HEAD, *args))
    etc = prefix / "etc" / "picluster"
    mosquitto_dir = prefix / "etc" / "mosquitto"
    dynsec_json = prefix / "var" / "lib" / "mosquitto" / "dynamic-security.json"
    conf = (mosquitto_dir / "mosquitto.conf").read_text()
    assert f"\nplugin {plugin_path()}\n" in conf
    assert f"\nplugin_opt_config_file {dynsec_json}\n" in conf
    assert "\npassword_file" not in conf
    assert not (mosquitto_dir / "passwd").exists()
    assert not (mosquitto_dir / "acl").exists()
    master_password = (etc / "master.password").read_text().strip()
    ha_password = (etc / "homeassistant.password").read_text().strip()
    assert len(master_password) >= 24
    assert master_password not in dynsec_json.read_text()
    assert oct(dynsec_json.stat().st_mode & 0o777) == "0o600"

    # The master runs from a source tree it can serve to new nodes (GET /install/...).
    python = prefix / "opt" / "picluster" / "venv" / "bin" / "python"
    served = subprocess.run(
        [str(python), "-c", "from master_service.enrollment.installer import source_root; "
         "print(source_root())"],
        capture_output=True, text=True, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert served.returncode == 0, served.stderr
    assert served.stdout.strip() == str(prefix / "opt" / "picluster" / "src")

    before = snapshot(prefix)
    again = ok(run(INSTALL_HEAD, *args))
    assert "up to date" in again.stdout
    assert snapshot(prefix) == before

    refused = run(INSTALL_HEAD, *args, "--node", "pi-05")
    assert refused.returncode != 0
    assert "nodes add" in refused.stderr
    assert snapshot(prefix) == before

    broker = InstalledBroker(tmp_path, conf)
    try:
        assert broker.logins(
            ("picluster-master", master_password),
            ("homeassistant", ha_password),
            ("picluster-master", "wrong"),
        ) == [True, True, False]
        # What `cluster-master nodes add` does, as the installed master's user.
        url = f"mqtt://picluster-master:{master_password}@127.0.0.1:{broker.port}"
        clients = NodeClients(DynsecClient(parse_broker_url(url)), "cluster")
        assert clients.ensure("pi-05", "node-pw-05")
        assert broker.logins(("pi-05", "node-pw-05"), ("pi-05", "wrong")) == [True, False]
    finally:
        broker.stop()

    ok(run(INSTALL_HEAD, "--prefix", str(prefix), "--uninstall"))
    assert list(prefix.iterdir()) == []


def test_head_install_with_static_passwords_makes_a_working_broker_and_uninstalls_cleanly(
    tmp_path: Path, mosquitto_binary: str, source: Path
) -> None:
    prefix = tmp_path / "root"
    args = ["--prefix", str(prefix), "--static-passwords", "--node", "pi-01"]
    args += ["--nodes", "pi-02,pi-03"]
    args += ["--source", str(source)]
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
    # Without the mode flag a re-run keeps the installed mode (and its users).
    ok(run(INSTALL_HEAD, "--prefix", str(prefix), "--source", str(source), "--node", "pi-04"))
    assert "\npi-04:" in (mosquitto_dir / "passwd").read_text()

    # The installed broker config works as written (only the listener moved off 1883).
    broker = InstalledBroker(tmp_path, (mosquitto_dir / "mosquitto.conf").read_text())
    try:
        node_password = (etc / "nodes" / "pi-02.password").read_text().strip()
        assert broker.logins(
            ("picluster-master", master_password),
            ("pi-02", node_password),
            ("pi-02", "wrong"),
        ) == [True, True, False]
    finally:
        broker.stop()

    ok(run(INSTALL_HEAD, "--prefix", str(prefix), "--uninstall"))
    assert list(prefix.iterdir()) == []


def test_head_and_node_on_one_machine_share_the_venv(tmp_path: Path, source: Path) -> None:
    prefix = tmp_path / "root"
    ok(
        run(
            INSTALL_HEAD,
            *("--prefix", str(prefix), "--no-systemd", "--static-passwords", "--node", "head-01"),
            *("--source", str(source)),
        )
    )
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
            "--source",
            str(source),
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
        (["--node-id", "pi-01", "--interval", "5"], "pw\n", "no broker"),
        (
            ["--node-id", "pi-01", "--broker", "mqtt://h", "--tags", "rack1,-poe"],
            "pw\n",
            "'-poe' is not a valid tag",
        ),
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


def test_node_reinstall_applies_each_change_and_restarts_only_the_agent(
    tmp_path: Path, systemctl: Systemctl
) -> None:
    source = copy_source(tmp_path / "source")  # its own: this test upgrades it
    prefix = tmp_path / "root"
    etc = prefix / "etc" / "picluster"
    unit = prefix / "etc" / "systemd" / "system" / "picluster-node.service"
    secret = tmp_path / "secret"
    secret.write_text("node-secret\n")
    base = ["--prefix", str(prefix), "--node-id", "pi-01", "--source", str(source)]

    def install(*args: str) -> list[str]:
        ok(run(INSTALL_NODE, *base, *args, env=systemctl.env))
        return systemctl.take_changes()

    first = ["--broker", "mqtt://head.local", "--password-file", str(secret)]
    assert install(*first) == [
        "daemon-reload",
        "enable picluster-node.service",
        "restart picluster-node.service",
    ]
    before = snapshot(prefix)
    assert install(*first) == []  # the same again: nothing restarted, nothing written
    assert install() == []
    assert snapshot(prefix) == before

    # --interval alone (no --broker) is applied, and only that key changes.
    config = (etc / "node.toml").read_text()
    assert install("--interval", "5") == ["restart picluster-node.service"]
    assert (etc / "node.toml").read_text() == config.replace("interval = 10", "interval = 5")

    # A new broker keeps the interval and what the admin edited by hand.
    hand_edited = (etc / "node.toml").read_text().replace('"INFO"', '"DEBUG"')
    (etc / "node.toml").write_text(hand_edited)
    assert install("--broker", "mqtt://head2.local:1884") == ["restart picluster-node.service"]
    assert (etc / "node.toml").read_text() == hand_edited.replace(
        "mqtt://pi-01@head.local", "mqtt://pi-01@head2.local:1884"
    )

    # A new password.
    secret.write_text("new-secret\n")
    assert install("--password-file", str(secret)) == ["restart picluster-node.service"]
    assert (etc / "node.password").read_text() == "new-secret\n"

    # A unit file that differs from the project's (an upgrade that changed it).
    unit.write_text(unit.read_text().replace("RestartSec=5", "RestartSec=1"))
    assert install() == ["daemon-reload", "restart picluster-node.service"]
    assert "RestartSec=5" in unit.read_text()

    # New code: reinstalled and restarted.
    (source / "README.md").write_text((source / "README.md").read_text() + "\nupgraded\n")
    assert install() == ["restart picluster-node.service"]
    assert install() == []


def test_node_reinstall_with_a_new_node_id_needs_its_password(tmp_path: Path, source: Path) -> None:
    prefix = tmp_path / "root"
    etc = prefix / "etc" / "picluster"
    base = ["--prefix", str(prefix), "--no-systemd", "--source", str(source)]
    ok(run(INSTALL_NODE, *base, "--node-id", "pi-01", "--broker", "mqtt://head", stdin="pw1\n"))

    refused = run(INSTALL_NODE, *base, "--node-id", "pi-02")
    assert refused.returncode != 0
    assert "no password" in refused.stderr
    assert 'node_id = "pi-01"' in (etc / "node.toml").read_text()

    ok(run(INSTALL_NODE, *base, "--node-id", "pi-02", stdin="pw2\n"))
    config = (etc / "node.toml").read_text()
    assert 'node_id = "pi-02"' in config
    assert 'broker = "mqtt://pi-02@head"' in config  # the broker user follows the node id
    assert (etc / "node.password").read_text() == "pw2\n"


def test_head_reinstall_keeps_settings_and_restarts_exactly_what_changed(
    tmp_path: Path, systemctl: Systemctl, source: Path
) -> None:
    prefix = tmp_path / "root"
    etc = prefix / "etc" / "picluster"
    mosquitto_conf = prefix / "etc" / "mosquitto" / "mosquitto.conf"
    unit = prefix / "etc" / "systemd" / "system" / "picluster-master.service"
    base = ["--prefix", str(prefix), "--source", str(source)]

    def install(*args: str) -> list[str]:
        ok(run(INSTALL_HEAD, *base, *args, env=systemctl.env))
        return systemctl.take_changes()

    first = ["--static-passwords", "--nodes", "pi-01,pi-02", "--http", "0.0.0.0:8080"]
    assert install(*first) == [
        "daemon-reload",
        "enable mosquitto.service",
        "restart mosquitto.service",
        "enable picluster-master.service",
        "restart picluster-master.service",
    ]
    config = (etc / "master.toml").read_text()
    assert 'http = "0.0.0.0:8080"' in config
    token = next(line for line in config.splitlines() if line.startswith("api_token = "))
    before = snapshot(prefix)
    assert install(*first) == []
    assert install() == []
    assert snapshot(prefix) == before

    # The documented way to add a node: the broker reloads its users, the master keeps its
    # address and token and is left alone.
    assert install("--node", "pi-05") == ["reload-or-restart mosquitto.service"]
    assert (etc / "master.toml").read_text() == config
    passwd = (prefix / "etc" / "mosquitto" / "passwd").read_text()
    assert "\npi-05:" in passwd

    # A new address: only that key changes, the token stays, only the master restarts.
    assert install("--http", "0.0.0.0:9090") == ["restart picluster-master.service"]
    assert (etc / "master.toml").read_text() == config.replace("0.0.0.0:8080", "0.0.0.0:9090")
    assert token in (etc / "master.toml").read_text()

    # mosquitto.conf alone differs from the project's: Mosquitto restarts, the master does not.
    mosquitto_conf.write_text(mosquitto_conf.read_text() + "max_keepalive 60\n")
    assert install() == ["restart mosquitto.service"]
    assert "max_keepalive 60" not in mosquitto_conf.read_text()

    # The master's unit file differs: systemd reloads it and the master restarts.
    unit.write_text(unit.read_text().replace("RestartSec=5", "RestartSec=1"))
    assert install() == ["daemon-reload", "restart picluster-master.service"]
    assert install() == []


def test_head_first_install_on_loopback_has_no_token_until_it_leaves_loopback(
    tmp_path: Path, source: Path
) -> None:
    prefix = tmp_path / "root"
    config = prefix / "etc" / "picluster" / "master.toml"
    base = ["--prefix", str(prefix), "--no-systemd", "--source", str(source)]
    base.append("--static-passwords")
    ok(run(INSTALL_HEAD, *base))
    assert 'http = "127.0.0.1:8080"' in config.read_text()
    assert "\napi_token = " not in config.read_text()

    ok(run(INSTALL_HEAD, *base, "--http", "0.0.0.0:8080"))
    text = config.read_text()
    assert 'http = "0.0.0.0:8080"' in text
    token = next(line for line in text.splitlines() if line.startswith("api_token = "))
    assert len(token) > len('api_token = ""') + 24

    ok(run(INSTALL_HEAD, *base, "--node", "pi-05"))
    assert config.read_text() == text


def test_head_reinstall_with_dynamic_security_restarts_exactly_what_changed(
    tmp_path: Path, systemctl: Systemctl, source: Path
) -> None:
    prefix = tmp_path / "root"
    etc = prefix / "etc" / "picluster"
    mosquitto_conf = prefix / "etc" / "mosquitto" / "mosquitto.conf"
    dynsec_json = prefix / "var" / "lib" / "mosquitto" / "dynamic-security.json"
    base = ["--prefix", str(prefix), "--source", str(source)]

    def install(*args: str) -> list[str]:
        ok(run(INSTALL_HEAD, *base, *args, env=systemctl.env))
        return systemctl.take_changes()

    assert install("--http", "0.0.0.0:8080") == [
        "daemon-reload",
        "enable mosquitto.service",
        "restart mosquitto.service",
        "enable picluster-master.service",
        "restart picluster-master.service",
    ]
    config = (etc / "master.toml").read_text()
    assert "\napi_token = " in config
    before = snapshot(prefix)
    assert install() == []
    assert install("--dynamic-security") == []
    assert snapshot(prefix) == before

    # A new address: only the master restarts, its token stays.
    assert install("--http", "0.0.0.0:9090") == ["restart picluster-master.service"]
    assert (etc / "master.toml").read_text() == config.replace("0.0.0.0:8080", "0.0.0.0:9090")

    # mosquitto.conf alone differs: Mosquitto restarts, the master does not.
    mosquitto_conf.write_text(mosquitto_conf.read_text() + "max_keepalive 60\n")
    assert install() == ["restart mosquitto.service"]
    assert "max_keepalive 60" not in mosquitto_conf.read_text()

    # A lost plugin JSON is written again, and the broker restarts to read it.
    dynsec_json.unlink()
    assert install() == ["restart mosquitto.service"]
    assert dynsec_json.exists()
    assert install() == []

    # The documented alternative: static passwords, with nodes; kept by later re-runs.
    assert install("--static-passwords", "--node", "pi-05") == ["restart mosquitto.service"]
    assert "\npassword_file " in mosquitto_conf.read_text()
    assert (etc / "nodes" / "pi-05.password").exists()
    assert install() == []
    assert install("--node", "pi-06") == ["reload-or-restart mosquitto.service"]
    # And back: the plugin again, the JSON (still there) kept.
    assert install("--dynamic-security") == ["restart mosquitto.service"]
    assert "\nplugin_opt_config_file " in mosquitto_conf.read_text()


def load_node_config(prefix: Path) -> tuple[str, ...]:
    """The tags the installed agent reads from its installed config."""
    python = prefix / "opt" / "picluster" / "venv" / "bin" / "python"
    loaded = subprocess.run(
        [
            str(python),
            "-c",
            "import sys; from node_publisher.settings import load_settings; "
            "print(','.join(load_settings(['--config', sys.argv[1]], {}).tags))",
            str(prefix / "etc" / "picluster" / "node.toml"),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return tuple(tag for tag in loaded.stdout.strip().split(",") if tag)


def test_node_install_writes_its_tags_and_a_rerun_changes_them(
    tmp_path: Path, systemctl: Systemctl, source: Path
) -> None:
    prefix = tmp_path / "root"
    config = prefix / "etc" / "picluster" / "node.toml"
    base = ["--prefix", str(prefix), "--node-id", "pi-01", "--source", str(source)]

    def install(*args: str) -> list[str]:
        ok(run(INSTALL_NODE, *base, *args, stdin="pw\n", env=systemctl.env))
        return systemctl.take_changes()

    install("--broker", "mqtt://head.local", "--tags", "rack1, poe,rack1")
    assert '\ntags = ["rack1", "poe"]\n' in config.read_text()
    assert load_node_config(prefix) == ("rack1", "poe")
    assert install("--tags", "rack1,poe") == []

    text = config.read_text()
    assert install("--tags", "rack2") == ["restart picluster-node.service"]
    assert config.read_text() == text.replace('["rack1", "poe"]', '["rack2"]')
    assert install("--tags", "") == ["restart picluster-node.service"]
    assert "\ntags = []\n" in config.read_text()
    assert load_node_config(prefix) == ()

    before = snapshot(prefix)
    refused = run(INSTALL_NODE, *base, "--tags", "rack1,Rack_2", env=systemctl.env)
    assert refused.returncode != 0
    assert "'Rack_2' is not a valid tag" in refused.stderr
    assert snapshot(prefix) == before
    assert systemctl.take_changes() == []


def test_installed_head_enrolls_a_node_with_the_printed_command(
    tmp_path: Path, mosquitto_binary: str, source: Path
) -> None:
    """docs/deploy.md's steps 2 and 3 as installed (into prefixes, no systemd): the installed
    master adds a node, serves it the installer, and the node comes online with its tags."""
    head = tmp_path / "head"
    http = f"127.0.0.1:{free_port()}"
    api = f"http://{http}"
    ok(
        run(
            INSTALL_HEAD,
            "--prefix",
            str(head),
            "--no-systemd",
            "--source",
            str(source),
            "--http",
            http,
        )
    )
    broker = InstalledBroker(tmp_path, (head / "etc" / "mosquitto" / "mosquitto.conf").read_text())
    bin_dir = head / "opt" / "picluster" / "venv" / "bin"
    log_path = tmp_path / "master.log"
    with log_path.open("wb") as log:
        master = RunningMaster(
            subprocess.Popen(
                [
                    str(bin_dir / "cluster-master"),
                    "run",
                    "--config",
                    str(head / "etc" / "picluster" / "master.toml"),
                    "--broker",
                    f"mqtt://picluster-master@127.0.0.1:{broker.port}",
                    "--no-ha-discovery",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=tmp_path,
            ),
            log_path,
            api=api,
        )
    agent: subprocess.Popen[bytes] | None = None
    try:

        def connected() -> bool:
            assert master.process.poll() is None, master.log()
            try:
                return bool(master.get("/healthz")["mqtt_connected"])
            except OSError:
                return False

        wait_until(connected, 30, 0.1, "the installed master up and connected")
        added = subprocess.run(
            [
                str(bin_dir / "cluster-master"),
                "nodes",
                "add",
                "pi-20",
                "--master-url",
                api,
                "--api",
                api,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert added.returncode == 0, added.stderr + master.log()
        command = next(line for line in added.stdout.splitlines() if "curl" in line).strip()
        node = tmp_path / "node"
        runnable = command.replace("| sudo sh", "| sh")
        runnable += f" --tags rack1,poe --prefix {node} --no-systemd"
        installed = subprocess.run(
            ["sh", "-c", runnable],
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT_S,
            check=False,
        )
        assert installed.returncode == 0, installed.stdout + installed.stderr
        config = node / "etc" / "picluster" / "node.toml"
        assert f'broker = "mqtt://pi-20@127.0.0.1:{broker.port}"' in config.read_text()
        assert load_node_config(node) == ("rack1", "poe")
        agent = subprocess.Popen(
            [
                str(node / "opt" / "picluster" / "venv" / "bin" / "cluster-node"),
                "run",
                "--config",
                str(config),
                "--interval",
                "1",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(
            lambda: (
                (view := master.node("pi-20"))
                and view["state"] == "online"
                and "rack1" in view.get("tags", [])
            ),
            30,
            0.2,
            "pi-20 online with its tags",
        )
    finally:
        if agent is not None:
            agent.terminate()
            agent.wait(15)
        master.stop()
        broker.stop()

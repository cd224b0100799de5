"""A head and two nodes on a real (namespaced) LAN: a pulled cable and a silent drop.

On loopback a killed process's socket is closed by the kernel and its will fires at once, which
hides what a pulled cable or a dead Wi-Fi does: nothing closes, and only the keepalive can tell.
Here each machine is a network namespace on a bridge (tests/support/netns.py), the head runs
the broker with the dynamic security plugin and `cluster-master run` on its LAN address, and
each node is installed and enrolled the documented way: `cluster-master nodes add NODE` on the
head, then the command it prints, run on the node. Then a node's cable is pulled at the switch,
and later the other node's frames are silently dropped by the switch (link up): each must be
declared stale, then offline within the documented bounds while the other stays online, and
once its link is back every envelope it spooled meanwhile must reach the master.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import secrets
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO_ROOT
from tests.support.netns import Host, Lan, NetnsDynsecBroker, NetnsUnavailableError
from tests.support.processes import RunningMaster, Service
from tests.support.waiting import wait_until

logger = logging.getLogger(__name__)

KEEPALIVE_S = 5  # the nodes' MQTT keepalive: short, so a dead link is found in seconds
INTERVAL_S = 1.0  # the nodes' metrics interval
STALE_FACTOR = 3  # the master's default stale_factor
# docs/api.md: a node that goes silent is stale after stale_factor x its interval. docs/deploy.md:
# the broker gives up on a dead link about 1.5 x keepalive after it last heard from the node,
# "up to a few seconds more than 1.5 x on its periodic check". That check, in Mosquitto 2.0
# (Debian's 2.0.11), runs once every 6 s (keepalive.c: `last_keepalive_check + 5 < now`) and
# compares whole seconds: the will is sent between 1.5 x keepalive and 1.5 x keepalive + 1 + 6 s
# after the last packet. The node sends every interval, so it was last heard just before the
# cut: both bounds are measured from the cut, with a margin for the master and the polls.
MOSQUITTO_SWEEP_S = 6.0
STALE_BOUND_S = STALE_FACTOR * INTERVAL_S + 1.0
OFFLINE_BOUND_S = 1.5 * KEEPALIVE_S + 1.0 + MOSQUITTO_SWEEP_S + 0.5
# A closed socket fires the will at once; a dead link cannot be noticed before the keepalive.
OFFLINE_EARLIEST_S = float(KEEPALIVE_S)
# paho reconnects with a backoff of 1, 2, 4, ... s: a node whose attempts failed during the
# cut may wait a while before its next one.
RECONNECT_TIMEOUT_S = 45.0
INSTALL_TIMEOUT_S = 300.0
NODES = ("pi-a", "pi-b")


# -- the LAN and the head ------------------------------------------------------------------


@pytest.fixture
def lan() -> Iterator[Lan]:
    """A fresh LAN, removed after the test whatever happened."""
    network = Lan()
    try:
        network.start()
    except NetnsUnavailableError as error:
        pytest.fail(f"cannot build the test LAN: {error}")
    try:
        yield network
    finally:
        network.close()


@dataclass
class Head:
    """The head machine: a dynsec broker and `cluster-master run` on its LAN address."""

    host: Host
    broker: NetnsDynsecBroker
    master: RunningMaster  # its API over the LAN, with the API token

    @property
    def api(self) -> str:
        """The master's API, as the nodes reach it."""
        return self.master.api

    def get(self, path: str) -> Any:
        """GET a JSON document from the master's API."""
        return self.master.get(path)

    def node(self, node: str) -> dict[str, Any] | None:
        """One node's view, or None while the master does not know it."""
        return self.master.node(node)

    def state(self, node: str) -> str | None:
        """The node's state as the API shows it."""
        view = self.node(node)
        return None if view is None else str(view["state"])

    def add(self, node: str) -> str:
        """`cluster-master nodes add NODE`, run on the head: the command it prints."""
        done = subprocess.run(
            self.host.argv(sys.executable, "-m", "master_service", "nodes", "add", node,
                           "--api", self.api),
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "CLUSTER_API_TOKEN": self.master.token or ""},
            check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        return next(line for line in done.stdout.splitlines() if "curl" in line).strip()


@pytest.fixture
def head(lan: Lan, tmp_path: Path) -> Iterator[Head]:
    """The head on the LAN: broker and master running, the master connected."""
    host = lan.add_host("head")
    broker = NetnsDynsecBroker(tmp_path / "broker", host=host.address, netns=host.netns)
    broker.start()
    token = secrets.token_urlsafe(16)
    api = f"http://{host.address}:8080"
    spawned = host.spawn(
        [sys.executable, "-m", "master_service", "run", "--broker", broker.admin_url(),
         "--db", str(tmp_path / "master" / "master.db"), "--http", f"{host.address}:8080",
         "--no-ha-discovery"],
        tmp_path / "master" / "master.log",
        env={"CLUSTER_PASSWORD": broker.admin_password, "CLUSTER_API_TOKEN": token},
    )  # fmt: skip
    master = RunningMaster(spawned.process, spawned.log_path, api=api, token=token)
    running = Head(host, broker, master)
    try:

        def connected() -> bool:
            if master.process.poll() is not None:
                raise AssertionError(f"master exited:\n{master.log()}")
            try:
                return bool(running.get("/healthz")["mqtt_connected"])
            except (urllib.error.URLError, OSError):
                return False

        wait_until(connected, 30, 0.1, "the master on the head, connected to its broker")
        yield running
    finally:
        master.stop()
        broker.stop()


# -- the nodes -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What pip needs to install a node, downloaded here: the nodes' LAN has no internet."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    wanted = [*project["project"]["dependencies"], *project["build-system"]["requires"]]
    target = tmp_path_factory.mktemp("wheelhouse")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(target), *wanted],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, f"pip download {wanted} failed:\n{done.stderr}"
    return target


@dataclass
class Node:
    """A node installed by the printed command, and its agent once started."""

    name: str
    host: Host
    root: Path
    agent: Service | None = None

    @property
    def config(self) -> Path:
        """The node.toml the installer wrote."""
        return self.root / "etc" / "picluster" / "node.toml"

    def start(self) -> None:
        """Start the installed agent on the node, with the test's short keepalive."""
        binary = self.root / "opt" / "picluster" / "venv" / "bin" / "cluster-node"
        self.agent = self.host.spawn(
            [str(binary), "run", "--config", str(self.config), "--keepalive", str(KEEPALIVE_S)],
            self.root / "agent.log",
        )


def install(
    head: Head, lan: Lan, names: tuple[str, ...], workdir: Path, wheels: Path
) -> list[Node]:
    """Enroll `names` the documented way: `nodes add` on the head, its command on each node.

    The installs run side by side. Root runs the command without sudo; `--prefix` keeps it in
    the test's directory and `--no-systemd` leaves starting the agent to the test (as the
    enrollment test does); pip installs from the wheelhouse, the LAN having no internet.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    running: list[tuple[Node, subprocess.Popen[bytes], Path]] = []
    try:
        for name in names:
            command = head.add(name)
            assert command.startswith(f"curl -fsSL {head.api}/install/node.sh | sudo sh -s --")
            node = Node(name, lan.add_host(name), workdir / name)
            runnable = command.replace("| sudo sh", "| sh")
            runnable += f" --prefix {node.root} --no-systemd --interval {INTERVAL_S:g}"
            log = workdir / f"install-{name}.log"
            with log.open("wb") as handle:
                process = subprocess.Popen(
                    node.host.argv("sh", "-c", runnable),
                    stdout=handle,
                    stderr=subprocess.STDOUT,
                    env={
                        **os.environ,
                        "PIP_NO_INDEX": "1",
                        "PIP_FIND_LINKS": str(wheels),
                        "NO_PROXY": head.host.address,
                        "no_proxy": head.host.address,
                    },
                )
            running.append((node, process, log))
        for node, process, log in running:
            code = process.wait(INSTALL_TIMEOUT_S)
            output = log.read_text(errors="replace")
            assert code == 0, f"installing {node.name} failed ({code}):\n{output}"
            assert f"enrolled as node '{node.name}'" in output, output
            config = node.config.read_text()
            assert f'broker = "mqtt://{node.name}@{head.host.address}:{head.broker.port}"' in config
    finally:
        for _, process, _ in running:
            if process.poll() is None:
                process.kill()
                process.wait(10)
    return [node for node, _, _ in running]


@pytest.fixture
def nodes(head: Head, lan: Lan, tmp_path: Path, wheelhouse: Path) -> Iterator[list[Node]]:
    """The two nodes installed, enrolled and started; stopped by their PIDs after the test."""
    installed = install(head, lan, NODES, tmp_path / "nodes", wheelhouse)
    try:
        for node in installed:
            node.start()
        yield installed
    finally:
        for node in installed:
            if node.agent is not None:
                node.agent.stop()


# -- an outage -----------------------------------------------------------------------------


@dataclass
class Outage:
    """One node's link cut and restored, with what the master showed meanwhile (seconds)."""

    node: str
    cut_at: float  # wall clock, as the node's sample timestamps
    restored_at: float = 0.0
    back_at: float = 0.0
    stale_after: float | None = None
    offline_after: float | None = None
    back_after: float | None = None
    states: list[tuple[float, str | None]] = field(default_factory=list)


def ready(head: Head, names: list[str]) -> bool:
    """Every node online, with metrics and its interval known to the master."""
    for name in names:
        view = head.node(name)
        if not view or view["state"] != "online" or not view["metrics"]:
            return False
        if not view["details"] or view["details"].get("interval_s") != INTERVAL_S:
            return False
    return True


def cut_and_restore(
    head: Head, lan: Lan, node: Node, other: Node, cut: Callable[[Host], None]
) -> Outage:
    """Cut `node`'s link with `cut`; watch it go stale, then offline; restore; watch it return.

    `other` must stay online all along.
    """
    outage = Outage(node.name, cut_at=time.time())
    started = time.monotonic()
    cut(node.host)

    def offline() -> bool:
        elapsed = time.monotonic() - started
        state = head.state(node.name)
        other_state = head.state(other.name)
        if not outage.states or outage.states[-1][1] != state:
            outage.states.append((round(elapsed, 2), state))
        assert other_state == "online", (
            f"{other.name} went {other_state} {elapsed:.1f} s after {node.name}'s link was cut"
        )
        if state == "stale" and outage.stale_after is None:
            outage.stale_after = elapsed
        if state == "offline":
            outage.offline_after = elapsed
            return True
        return False

    wait_until(offline, OFFLINE_BOUND_S + 20, 0.1, f"{node.name} offline after its link was cut")
    outage.restored_at = time.time()
    restored = time.monotonic()
    lan.reconnect(node.host)

    def back() -> bool:
        assert head.state(other.name) == "online", f"{other.name} left while {node.name} returned"
        return head.state(node.name) == "online"

    wait_until(back, RECONNECT_TIMEOUT_S, 0.1, f"{node.name} online again after its link returned")
    outage.back_at = time.time()
    outage.back_after = time.monotonic() - restored
    logger.info("%s", outage)
    return outage


def samples(head: Head, node: str, since: float, until: float) -> list[float]:
    """The times of the node's raw CPU samples in the master's history between two times."""
    history = head.get(
        f"/api/nodes/{node}/history?metric=cpu_percent&since={since:.3f}&until={until:.3f}"
    )
    return [float(ts) for ts, _ in history["points"]]


def nothing_lost(head: Head, outage: Outage) -> bool:
    """No seq gap, and a sample for every interval from before the cut to after the return."""
    view = head.node(outage.node)
    if view is None or view["counters"]["seq_gaps"] != 0:
        return False
    since, until = outage.cut_at - 5 * INTERVAL_S, outage.back_at + 3 * INTERVAL_S
    times = samples(head, outage.node, since, until)
    if not times or times[0] > outage.cut_at or times[-1] < outage.back_at:
        return False
    return all(later - earlier < 1.5 * INTERVAL_S for earlier, later in itertools.pairwise(times))


@contextmanager
def logs_on_failure(head: Head, nodes: list[Node]) -> Iterator[None]:
    """Add the tails of the master's, the broker's and the agents' logs to a failed assertion."""
    try:
        yield
    except AssertionError as error:
        tails = [f"--- master\n{tail(head.master.log())}", f"--- broker\n{head.broker.log_tail()}"]
        tails += [f"--- {n.name}\n{tail(n.agent.log())}" for n in nodes if n.agent is not None]
        raise AssertionError(f"{error}\n" + "\n".join(tails)) from error


def tail(text: str, lines: int = 30) -> str:
    """The last lines of a log."""
    return "\n".join(text.splitlines()[-lines:])


def test_a_pulled_cable_and_a_silent_drop_are_found_in_time_and_lose_nothing(
    lan: Lan, head: Head, nodes: list[Node]
) -> None:
    with logs_on_failure(head, nodes):
        pulled_cable_then_silent_drop(lan, head, nodes)


def pulled_cable_then_silent_drop(lan: Lan, head: Head, nodes: list[Node]) -> None:
    """The test's steps (see the module's docstring)."""
    first, second = nodes
    names = [node.name for node in nodes]
    wait_until(lambda: ready(head, names), 30, 0.2, f"{names} online with metrics")
    wait_until(
        lambda: all(len(samples(head, name, time.time() - 10, time.time())) >= 3 for name in names),
        15,
        0.2,
        "a few seconds of history from each node",
    )

    def unplug(host: Host) -> None:
        lan.unplug(host)
        assert not lan.carrier(host), "the node still has a link after its cable was pulled"

    def black_hole(host: Host) -> None:
        lan.black_hole(host)
        assert lan.carrier(host), "a silent drop must leave the node's link up"

    outages = []
    for node, other, cut, how in (
        (first, second, unplug, "pulled cable"),
        (second, first, black_hole, "silent drop"),
    ):
        outage = cut_and_restore(head, lan, node, other, cut)
        assert outage.stale_after is not None, f"{how}: never shown stale: {outage}"
        assert outage.stale_after <= STALE_BOUND_S, f"{how}: stale too late: {outage}"
        assert outage.offline_after is not None
        assert outage.offline_after <= OFFLINE_BOUND_S, f"{how}: offline too late: {outage}"
        # Not a closed socket firing the will at once: the keepalive did it.
        assert outage.offline_after >= OFFLINE_EARLIEST_S, f"{how}: offline too early: {outage}"
        outages.append(outage)
    for outage in outages:
        wait_until(
            functools.partial(nothing_lost, head, outage),
            30,
            0.5,
            f"{outage.node}'s samples from before, during and after the outage, no seq gap",
        )
        during = samples(head, outage.node, outage.cut_at, outage.restored_at)
        logger.info("%s: %d samples taken while its link was down", outage.node, len(during))
    for node in nodes:
        assert node.agent is not None
        assert node.agent.process.poll() is None, node.agent.log()

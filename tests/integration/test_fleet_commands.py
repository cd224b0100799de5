"""Commands to many nodes and rolling reboots, over a real Mosquitto with real processes.

`cluster-master run` and several `cluster-node run`s. The nodes' reboot action is
`sh -c 'kill $PPID'`: the shell's parent is the agent, which stops as it would for a reboot
(it says "offline" and exits), and a supervisor here starts it again, as systemd's
`Restart=always` would. A node whose supervisor is told not to restart it never comes back.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.broker import MosquittoBroker
from tests.support.processes import RunningMaster, Service, start_master, start_node
from tests.support.waiting import wait_until

PY = sys.executable
KEEPALIVE_S = "2"
INTERVAL_S = 0.5

NODE_CONFIG = """
allow_reboot = true
reboot_command = ["sh", "-c", "kill $PPID"]

[tasks.hello]
command = ["{py}", "-c", "print('hello from the task')"]
"""


class Supervised:
    """A node process that is started again whenever it exits, while `restart` is set."""

    def __init__(self, start: Callable[[], Service]) -> None:
        self._start = start
        self.restart = True
        self.service = start()
        self.starts = 1
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    @property
    def pid(self) -> int:
        """The running process's id."""
        return self.service.process.pid

    def _watch(self) -> None:
        while not self._stopped.is_set():
            self.service.process.wait()
            if self._stopped.is_set() or not self.restart:
                return
            self.service = self._start()
            self.starts += 1

    def start_again(self) -> None:
        """Start it after the supervisor gave up on it, and supervise it again."""
        self.restart = True
        self.service = self._start()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop it for good."""
        self._stopped.set()
        self.service.stop()
        self._thread.join(10)


@dataclass
class Fleet:
    master: RunningMaster
    prefix: str
    nodes: dict[str, Supervised] = field(default_factory=dict)

    def cli(self, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PY, "-m", "master_service", *args, "--api", self.master.api],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env={k: v for k, v in os.environ.items() if k != "CLUSTER_API_TOKEN"},
        )

    def post(self, path: str, body: Any) -> tuple[int, Any]:
        request = urllib.request.Request(
            self.master.api + path,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as error:
            with error:
                return error.code, json.load(error)

    def state(self, node: str) -> str | None:
        view = self.master.node(node)
        return view["state"] if view else None

    def commands(self, node: str) -> list[str]:
        return [c["command"] for c in self.master.get(f"/api/nodes/{node}/commands")["commands"]]

    def wait_online(self, nodes: Sequence[str]) -> None:
        def ready() -> bool:
            views = [self.master.node(node) for node in nodes]
            return all(v and v["state"] == "online" and v["metrics"] for v in views)

        wait_until(ready, 30, 0.1, f"{list(nodes)} online with metrics")

    def stop(self) -> None:
        for node in self.nodes.values():
            node.stop()
        self.master.stop()


def make_fleet(broker: MosquittoBroker, workdir: Path, names: Sequence[str]) -> Fleet:
    prefix = f"fleet{uuid.uuid4().hex[:8]}"
    config = workdir / "node.toml"
    workdir.mkdir(parents=True, exist_ok=True)
    config.write_text(NODE_CONFIG.format(py=PY))
    master = start_master(
        broker.url,
        workdir / "master",
        "--prefix",
        prefix,
        "--client-id",
        f"m-{prefix}",
        "--no-ha-discovery",
    )
    fleet = Fleet(master, prefix)
    try:
        for name in names:
            node_id = f"{prefix}-{name}"

            def start(node_id: str = node_id) -> Service:
                return start_node(
                    broker.url,
                    workdir,
                    node_id,
                    "--prefix",
                    prefix,
                    "--keepalive",
                    KEEPALIVE_S,
                    "--config",
                    str(config),
                    interval=INTERVAL_S,
                )

            fleet.nodes[node_id] = Supervised(start)
        fleet.wait_online(list(fleet.nodes))
    except BaseException:
        fleet.stop()
        raise
    return fleet


@pytest.fixture
def fleet_of(broker: MosquittoBroker, tmp_path: Path) -> Iterator[Callable[[int], Fleet]]:
    started: list[Fleet] = []

    def make(count: int) -> Fleet:
        fleet = make_fleet(
            broker, tmp_path / f"fleet{len(started)}", [f"{i:02d}" for i in range(1, count + 1)]
        )
        started.append(fleet)
        return fleet

    yield make
    for fleet in started:
        fleet.stop()


def test_fan_out_with_one_node_offline_fails_its_row_and_the_exit_status(fleet_of):
    fleet = fleet_of(3)
    first, second, gone = fleet.nodes
    fleet.nodes[gone].restart = False
    fleet.nodes[gone].service.stop()
    wait_until(lambda: fleet.state(gone) == "offline", 10, message=f"{gone} offline")

    done = fleet.cli("send", first, second, gone, "ping")
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["NODE", "OK", "RESULT", "/", "ERROR", "TIME"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert set(rows) == {first, second, gone}
    assert rows[first].split()[1] == "yes"
    assert '"agent_version"' in rows[first]
    assert rows[second].split()[1] == "yes"
    assert rows[gone].split()[1] == "NO"
    assert f"refused: node {gone!r} is offline" in rows[gone]
    assert f"1 of 3 nodes did not answer ping ok: {gone}" in done.stderr

    # --all and the API: the same rows; the offline node is answered at once, not waited for.
    status, answer = fleet.post("/api/commands", {"command": "ping", "all": True, "timeout_s": 20})
    assert status == 200
    assert answer["ok"] is False
    by_node = {row["node"]: row for row in answer["results"]}
    assert [row["node"] for row in answer["results"]] == sorted(fleet.nodes)
    assert by_node[first]["ok"]
    assert by_node[first]["status"] == "ok"
    assert by_node[gone]["status"] == "refused"
    assert by_node[gone]["id"] is None
    assert by_node[gone]["duration_s"] < 1.0

    everyone = fleet.cli("send", "--all", "refresh")
    assert everyone.returncode == 1
    assert f"did not answer refresh ok: {gone}" in everyone.stderr

    # Everyone online again: exit 0, one row each.
    fleet.nodes[gone].start_again()
    fleet.wait_online([gone])
    healthy = fleet.cli("send", *fleet.nodes, "ping")
    assert healthy.returncode == 0, healthy.stderr
    assert len(healthy.stdout.splitlines()) == 4


def test_unknown_names_are_refused_rows_and_an_empty_tag_matches_nothing(fleet_of):
    fleet = fleet_of(1)
    (node,) = fleet.nodes
    done = fleet.cli("send", node, "no-such-node", "ping")
    assert done.returncode == 1
    assert "refused: no node 'no-such-node' is known" in done.stdout
    nothing = fleet.cli("send", "--tag", "rack-none", "ping")
    assert nothing.returncode == 1
    assert "no node matched tag 'rack-none'" in nothing.stderr
    placed = fleet.cli("place", "--tag", "rack-none")
    assert placed.returncode == 1
    assert placed.stdout.splitlines() == [
        "chosen (0 of 1 wanted among nodes tagged rack-none):",
        "  (none)",
    ]
    status, answer = fleet.post("/api/commands", {"command": "ping", "tag": "x", "all": True})
    assert status == 422
    assert "exactly one of nodes, tag, all" in answer["detail"]


def test_task_on_many_nodes_and_rolling(fleet_of):
    fleet = fleet_of(2)
    done = fleet.cli("task", "hello", "--all")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("hello from the task") == 2
    rolled = fleet.cli("task", "hello", "--all", "--rolling", "--timeout", "20")
    assert rolled.returncode == 0, rolled.stdout + rolled.stderr
    a, b = fleet.nodes
    out = rolled.stdout
    # One wave at a time: the second node runs the task once the first is healthy again.
    assert out.index(f"{a}: run answered ok") < out.index(f"{a}: back, sending metrics")
    assert out.index(f"{a}: back, sending metrics") < out.index(f"{b}: run answered ok")
    assert "done: 2 of 2 nodes" in out


class SilenceWatch:
    """Records, from another thread, which nodes had a "rolling reboot" silence at some point."""

    def __init__(self, master: RunningMaster) -> None:
        self.master = master
        self.seen: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            for silence in self.master.get("/api/alerts/silences")["silences"]:
                if silence["comment"] == "rolling reboot" and silence["rule"] is None:
                    self.seen.add(silence["node"])

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def test_rolling_reboot_goes_node_by_node_and_silences_each_while_it_reboots(fleet_of):
    fleet = fleet_of(3)
    names = list(fleet.nodes)
    pids = {node: fleet.nodes[node].pid for node in names}
    silences = SilenceWatch(fleet.master)
    try:
        done = fleet.cli("reboot", *names, "--rolling", "--max-unavailable", "1", "--timeout", "30")
    finally:
        silences.stop()
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    for node in names:
        assert fleet.nodes[node].starts == 2, f"{node} was not restarted once"
        assert fleet.nodes[node].pid != pids[node]
        for step in ("reboot accepted", "down", "online again", "back, sending metrics"):
            assert f"{node}: {step}" in out, out
    # Waves in order: a node is rebooted only once the one before is back.
    for before, after in itertools.pairwise(names):
        assert out.index(f"{before}: back, sending metrics") < out.index(
            f"{after}: reboot accepted"
        )
    assert "done: 3 of 3 nodes" in out
    assert silences.seen == set(names)
    assert fleet.master.get("/api/alerts/silences")["silences"] == []  # each ended once back


def test_a_node_that_does_not_come_back_stops_the_roll_and_the_rest_is_left_alone(fleet_of):
    fleet = fleet_of(3)
    first, dead, spared = fleet.nodes
    fleet.nodes[dead].restart = False  # its "reboot" never ends
    spared_pid = fleet.nodes[spared].pid
    done = fleet.cli("reboot", "--all", "--rolling", "--timeout", "8")
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"{first}: back, sending metrics" in done.stdout
    assert f"{dead}: reboot accepted" in done.stdout
    assert f"roll stopped at {dead}: did not come back within 8 s (now offline)" in done.stderr
    assert f"1 of 3 nodes done; left alone: {spared}" in done.stderr
    assert fleet.nodes[spared].pid == spared_pid
    assert fleet.nodes[spared].starts == 1
    assert "reboot" not in fleet.commands(spared)
    # The dead node's silence is gone, so its alerts speak again.
    assert fleet.master.get("/api/alerts/silences")["silences"] == []


def test_a_roll_does_not_start_while_a_chosen_node_is_offline(fleet_of):
    fleet = fleet_of(2)
    up, gone = fleet.nodes
    fleet.nodes[gone].restart = False
    fleet.nodes[gone].service.stop()
    wait_until(lambda: fleet.state(gone) == "offline", 10, message=f"{gone} offline")
    done = fleet.cli("reboot", up, gone, "--rolling")
    assert done.returncode == 1
    assert f"not online: {gone} (offline)" in done.stderr
    assert "reboot" not in fleet.commands(up)


def test_ctrl_c_stops_a_roll_and_ends_its_silence(fleet_of, tmp_path):
    fleet = fleet_of(2)
    stuck, spared = fleet.nodes
    fleet.nodes[stuck].restart = False
    output = tmp_path / "roll.out"
    argv = [PY, "-m", "master_service", "reboot", "--all", "--rolling", "--timeout", "60"]
    with output.open("w") as sink:
        rolling = subprocess.Popen(
            [*argv, "--api", fleet.master.api],
            stdout=sink,
            stderr=subprocess.STDOUT,
            text=True,
            env={k: v for k, v in os.environ.items() if k != "CLUSTER_API_TOKEN"},
        )
    try:
        wait_until(lambda: f"{stuck}: down" in output.read_text(), 20, message=f"{stuck} down")
        assert [s["node"] for s in fleet.master.get("/api/alerts/silences")["silences"]] == [stuck]
        rolling.send_signal(signal.SIGINT)
        assert rolling.wait(20) == 130
    finally:
        if rolling.poll() is None:
            rolling.kill()
    assert "roll interrupted; nothing more is sent" in output.read_text()
    assert fleet.master.get("/api/alerts/silences")["silences"] == []
    assert "reboot" not in fleet.commands(spared)


def tag(fleet: Fleet, node: str, name: str) -> None:
    """A master-side tag, as `cluster-master nodes tag` sets it."""
    request = urllib.request.Request(
        f"{fleet.master.api}/api/nodes/{node}/tags/{name}", method="PUT"
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 204


def test_by_tag_send_place_and_a_rolling_reboot_touch_only_the_tagged_nodes(fleet_of):
    fleet = fleet_of(3)
    first, other, tagged = fleet.nodes
    for node in (first, tagged):
        tag(fleet, node, "rack1")
    wait_until(
        lambda: all(
            "rack1" in (fleet.master.node(n) or {}).get("tags", []) for n in (first, tagged)
        ),
        10,
        message="the tags in the node views",
    )
    done = fleet.cli("send", "--tag", "rack1", "ping")
    assert done.returncode == 0, done.stderr
    assert [line.split()[0] for line in done.stdout.splitlines()[1:]] == [first, tagged]
    placed = fleet.cli("place", "--tag", "rack1", "--count", "2")
    assert placed.returncode == 0, placed.stdout
    assert other not in placed.stdout
    other_pid = fleet.nodes[other].pid
    rolled = fleet.cli("reboot", "--tag", "rack1", "--rolling", "--timeout", "30")
    assert rolled.returncode == 0, rolled.stdout + rolled.stderr
    assert "rolling reboot over 2 nodes, 1 at a time" in rolled.stdout
    assert [fleet.nodes[n].starts for n in (first, other, tagged)] == [2, 1, 2]
    assert fleet.nodes[other].pid == other_pid


def follow_rollout(fleet: Fleet, rollout_id: int, timeout_s: float) -> dict[str, Any]:
    """Poll `GET /api/rollouts/{id}` until the roll ends; its last state."""
    latest: dict[str, Any] = {}

    def ended() -> bool:
        latest.update(fleet.master.get(f"/api/rollouts/{rollout_id}"))
        return latest["running"] is False

    wait_until(ended, timeout_s, 0.2, f"roll {rollout_id} to end")
    return latest


def test_a_roll_run_by_the_master_goes_node_by_node_and_stops_at_one_that_does_not_return(
    fleet_of,
):
    # What the dashboard's "Rolling" starts: the master itself runs the waves.
    fleet = fleet_of(3)
    first, dead, spared = fleet.nodes
    fleet.nodes[dead].restart = False
    silences = SilenceWatch(fleet.master)
    try:
        status, started = fleet.post(
            "/api/rollouts", {"command": "reboot", "all": True, "timeout_s": 8}
        )
        assert status == 202, started
        assert started["running"] is True
        assert started["nodes"] == [first, dead, spared]
        # One roll at a time: a second could take more nodes down than either asked for.
        again, refused = fleet.post("/api/rollouts", {"command": "reboot", "nodes": [spared]})
        assert again == 409
        assert f"roll {started['id']} is still running" in refused["detail"]
        roll = follow_rollout(fleet, started["id"], 60)
    finally:
        silences.stop()
    assert roll["ok"] is False
    assert roll["done"] == [first]
    assert roll["failed"] == {dead: "did not come back within 8 s (now offline)"}
    assert roll["untouched"] == [spared]
    lines = "\n".join(roll["lines"])
    assert f"{first}: back, sending metrics" in lines
    assert lines.index(f"{first}: back, sending metrics") < lines.index(f"{dead}: reboot accepted")
    assert fleet.nodes[first].starts == 2
    assert fleet.nodes[spared].starts == 1
    assert "reboot" not in fleet.commands(spared)
    assert silences.seen == {first, dead}  # each silenced during its own turn only
    assert fleet.master.get("/api/alerts/silences")["silences"] == []
    listed = fleet.master.get("/api/rollouts")["rollouts"]
    assert [r["id"] for r in listed] == [started["id"]]


def test_a_roll_run_by_the_master_refuses_offline_nodes_and_bad_requests(fleet_of):
    fleet = fleet_of(2)
    up, gone = fleet.nodes
    fleet.nodes[gone].restart = False
    fleet.nodes[gone].stop()
    wait_until(lambda: fleet.state(gone) == "offline", 20, 0.1, f"{gone} offline")
    status, answer = fleet.post("/api/rollouts", {"command": "reboot", "nodes": [up, gone]})
    assert status == 409
    assert f"not online: {gone} (offline)" in answer["detail"]
    assert "reboot" not in fleet.commands(up)
    for body in (
        {"command": "run", "all": True},  # run needs a task
        {"command": "reboot", "task": "hello", "all": True},
        {"command": "shutdown", "all": True},
        {"command": "reboot", "all": True, "tag": "x"},  # one selection only
    ):
        status, answer = fleet.post("/api/rollouts", body)
        assert status == 422, (body, answer)
    assert fleet.master.get("/api/rollouts")["rollouts"] == []

"""Commands over a real Mosquitto: `cluster-master run` and `cluster-node run` as processes.

The node's config defines a few tasks and turns reboot on, pointed at a harmless stand-in.
Each module run uses its own topic prefix, so the session broker's other tests are not disturbed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from node_publisher.cli import build_agent
from node_publisher.settings import load_settings
from tests.support.broker import MosquittoBroker
from tests.support.processes import RunningMaster, Service, start_master, start_node
from tests.support.waiting import wait_until
from tests.support.watcher import Watcher

NODE = "cmd-01"
PY = sys.executable
ACL = (Path(__file__).resolve().parents[2] / "mosquitto" / "acl").read_text()

NODE_CONFIG = """
allow_reboot = true
reboot_command = ["{py}", "-c", "import pathlib; pathlib.Path('{dir}/rebooted').touch()"]

[tasks.hello]
command = ["{py}", "-c", "import sys; print('hello', sys.argv[1])", "{{who}}"]
args.who = {{ type = "string", pattern = "[a-z]+" }}

[tasks.mark]
command = ["{py}", "-c", "open('{dir}/marks', 'a').write('x')"]

[tasks.slow]
command = ["sleep", "30"]
timeout_s = 0.5

[tasks.chatty]
command = ["{py}", "-c", "print('y' * 50000)"]
max_output_bytes = 2000
"""


@dataclass
class Setup:
    broker: MosquittoBroker
    master: RunningMaster
    node: Service
    prefix: str
    workdir: Path
    config: Path

    def post(self, path: str, body: Any, timeout_s: float = 15) -> tuple[int, Any]:
        request = urllib.request.Request(
            self.master.api + path,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as error:
            with error:
                return error.code, json.load(error)

    def send(self, command: str, args: Any = None, timeout_s: float = 5) -> tuple[int, Any]:
        body = {"command": command, "args": args or {}, "timeout_s": timeout_s}
        return self.post(f"/api/nodes/{NODE}/commands", body)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PY, "-m", "master_service", *args, "--api", self.master.api],
            capture_output=True,
            text=True,
            timeout=60,
            env={k: v for k, v in os.environ.items() if k != "CLUSTER_API_TOKEN"},
        )

    def start_node(self) -> None:
        self.node = start_node(
            self.broker.url,
            self.workdir,
            NODE,
            "--prefix",
            self.prefix,
            "--config",
            str(self.config),
            interval=30,
        )
        wait_until(lambda: self.ping_ok(), 20, 0.2, f"{NODE} answering ping")

    def ping_ok(self) -> bool:
        view = self.master.node(NODE)
        if not view or view["state"] != "online":
            return False
        return self.send("ping", timeout_s=1)[0] == 200

    def raw_publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        """Publish as an outside client would (anonymous broker: no ACL here)."""
        client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        client.connect(self.broker.host, self.broker.port)
        client.loop_start()
        info = client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(10)
        client.disconnect()
        client.loop_stop()


@pytest.fixture(scope="module")
def setup(broker: MosquittoBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    workdir = tmp_path_factory.mktemp("commands")
    prefix = f"cmdtest{uuid.uuid4().hex[:8]}"
    config = workdir / "node.toml"
    config.write_text(NODE_CONFIG.format(py=PY, dir=workdir))
    master = start_master(
        broker.url, workdir / "master", "--prefix", prefix, "--client-id", f"m-{prefix}"
    )
    here = Setup(broker, master, None, prefix, workdir, config)  # type: ignore[arg-type]
    try:
        here.start_node()
        yield here
    finally:
        if here.node is not None:
            here.node.stop()
        master.stop()


def test_send_ping_answers_within_a_second(setup):
    started = time.monotonic()
    status, reply = setup.send("ping")
    assert time.monotonic() - started < 1.0
    assert status == 200
    assert reply["ok"] is True
    assert abs(reply["result"]["time"] - time.time()) < 5
    done = setup.cli("send", NODE, "ping")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["agent_version"]


def test_refresh_brings_fresh_details_and_metrics(setup):
    before = setup.master.node(NODE)
    status, reply = setup.send("refresh")
    assert (status, reply["ok"]) == (200, True)
    # The node samples every 30 s here, so new details and metrics come from the refresh.
    wait_until(
        lambda: (
            (v := setup.master.node(NODE))
            and v["details_ts"] > before["details_ts"]
            and v["metrics_ts"] > (before["metrics_ts"] or 0)
        ),
        10,
        message="fresh details and metrics after refresh",
    )


def test_unknown_command_and_bad_args_get_error_replies_and_the_cli_exits_1(setup):
    done = setup.cli("send", NODE, "selfdestruct")
    assert done.returncode == 1
    assert "answered selfdestruct with an error: unknown command 'selfdestruct'" in done.stderr
    status, reply = setup.send("ping", {"loud": True})
    assert (status, reply["ok"], reply["error"]) == (
        200,
        False,
        "ping takes no arguments, got loud",
    )


def test_run_only_defined_tasks_with_checked_args_time_limit_and_output_bound(setup):
    done = setup.cli("send", NODE, "run", "--arg", "task=hello", "--arg", 'args={"who": "pi"}')
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["stdout"] == "hello pi\n"
    _, undefined = setup.send("run", {"task": "bash", "args": {"c": "reboot"}})
    assert undefined["error"].startswith("no task 'bash' is defined on this node")
    _, injected = setup.send("run", {"task": "hello", "args": {"who": "pi; reboot"}})
    assert "does not match" in injected["error"]
    started = time.monotonic()
    _, slow = setup.send("run", {"task": "slow"})
    assert time.monotonic() - started < 4
    assert slow["error"] == "task 'slow' timed out after 0.5 s and was killed"
    _, chatty = setup.send("run", {"task": "chatty"})
    assert chatty["result"]["truncated"] is True
    assert len(chatty["result"]["stdout"]) == 2000


def test_reboot_runs_the_stand_in_and_shutdown_is_refused_when_not_enabled(setup):
    _, reboot = setup.send("reboot")
    assert reboot["ok"] is True
    wait_until(lambda: (setup.workdir / "rebooted").exists(), 10, message="reboot stand-in ran")
    done = setup.cli("send", NODE, "shutdown")
    assert done.returncode == 1
    assert "shutdown is not enabled on this node" in done.stderr


def test_a_retained_command_is_not_run_live_or_after_a_reconnect(setup):
    marks = setup.workdir / "marks"
    marks.unlink(missing_ok=True)
    topic = f"{setup.prefix}/{NODE}/cmd/run"
    body = {"id": "retained-1", "args": {"task": "mark"}, "expires": time.time() + 600}
    setup.raw_publish(topic, json.dumps(body).encode(), retain=True)
    try:
        assert setup.send("ping")[1]["ok"]  # handled after the retained one, in order
        setup.node.stop()
        setup.start_node()  # the broker replays the retained command on subscribe
        assert setup.send("ping")[1]["ok"]
        assert not marks.exists()
    finally:
        setup.raw_publish(topic, b"", retain=True)  # clear it


def test_a_repeated_command_id_runs_once(setup, watch):
    marks = setup.workdir / "marks"
    marks.unlink(missing_ok=True)
    replies = watch(f"{setup.prefix}/{NODE}/reply")
    body = {"id": f"dup-{uuid.uuid4().hex}", "args": {"task": "mark"}, "expires": time.time() + 60}
    for _ in range(2):
        setup.raw_publish(f"{setup.prefix}/{NODE}/cmd/run", json.dumps(body).encode())
    assert setup.send("ping")[1]["ok"]
    mine = [json.loads(m.payload)["payload"] for m in replies.on(f"{setup.prefix}/{NODE}/reply")]
    assert [r["ok"] for r in mine if r["id"] == body["id"]] == [True]
    assert marks.read_text() == "x"


def test_set_interval_is_announced_and_survives_a_restart(setup):
    status, reply = setup.send("set_interval", {"interval_s": 20})
    assert (status, reply["result"]["interval_s"]) == (200, 20.0)
    wait_until(
        lambda: setup.master.node(NODE)["details"]["interval_s"] == 20.0,
        10,
        message="details with the new interval",
    )
    setup.node.stop()
    details_ts = setup.master.node(NODE)["details_ts"]
    setup.start_node()
    wait_until(
        lambda: (
            (v := setup.master.node(NODE))["details_ts"] > details_ts
            and v["details"]["interval_s"] == 20.0
        ),
        10,
        message="restarted node still at 20 s",
    )


def test_a_frozen_node_times_out_then_its_late_command_expires_unrun(setup):
    setup.node.process.send_signal(signal.SIGSTOP)
    try:
        done = setup.cli("send", NODE, "run", "--arg", "task=mark", "--timeout", "1")
    finally:
        setup.node.process.send_signal(signal.SIGCONT)
    assert done.returncode == 3
    assert f"no reply from {NODE} to run within 1 s" in done.stderr
    # Woken up, the node finds the command expired, refuses it and says so; the master keeps it.
    with urllib.request.urlopen(f"{setup.master.api}/api/nodes/{NODE}/commands?limit=5") as r:
        latest = json.load(r)["commands"][0]

    def expired_reply() -> Any:
        with urllib.request.urlopen(f"{setup.master.api}/api/nodes/{NODE}/commands") as r:
            found = [c for c in json.load(r)["commands"] if c["id"] == latest["id"]]
        return found and found[0]["status"] == "error" and found[0]

    record = wait_until(expired_reply, 15, 0.1, "the late reply of the expired command")
    assert record["error"].startswith("expired")
    assert record["command"] == "run"


def test_commands_to_unknown_nodes_are_refused_by_the_cli(setup):
    done = setup.cli("send", "no-such-node", "ping")
    assert done.returncode == 4
    assert "no node 'no-such-node' is known" in done.stderr


# -- the shipped ACL -----------------------------------------------------------------------


def test_a_node_user_cannot_command_another_node(make_broker, tmp_path):
    users = {"picluster-master": "mpw", "acl-a": "apw", "acl-b": "bpw"}
    secured = make_broker(users=users, acl=ACL)
    settings = load_settings(
        [
            "--broker",
            f"mqtt://acl-b:bpw@{secured.host}:{secured.port}",
            "--node-id",
            "acl-b",
            "--state-dir",
            str(tmp_path),
            "--interval",
            "60",
        ],
        {},
    )
    agent, processor = build_agent(settings)
    processor.start()
    agent.start()
    replies = Watcher(secured.host, secured.port, "cluster/acl-b/reply", "picluster-master", "mpw")
    try:
        assert agent.wait_ready(10)
        refused = threading.Event()
        attacker = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        attacker.username_pw_set("acl-a", "apw")

        def on_publish(client: mqtt.Client, userdata: Any, mid: int, rc: Any, props: Any) -> None:
            if rc.is_failure:
                refused.set()

        attacker.on_publish = on_publish
        attacker.connect(secured.host, secured.port)
        attacker.loop_start()
        evil = {"id": "evil", "args": {}, "expires": time.time() + 60}
        attacker.publish("cluster/acl-b/cmd/refresh", json.dumps(evil), qos=1)
        assert refused.wait(10), "the broker should answer 'Not authorized' (reason 135)"
        attacker.disconnect()
        attacker.loop_stop()
        master = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        master.username_pw_set("picluster-master", "mpw")
        master.connect(secured.host, secured.port)
        master.loop_start()
        good = {"id": "good", "args": {}, "expires": time.time() + 60}
        master.publish("cluster/acl-b/cmd/ping", json.dumps(good), qos=1).wait_for_publish(10)
        (reply,) = replies.wait_for("cluster/acl-b/reply")
        assert json.loads(reply.payload)["payload"]["id"] == "good"
        assert processor.handled == 1  # only the master's ping ran
        master.disconnect()
        master.loop_stop()
    finally:
        replies.close()
        processor.stop()
        agent.stop()

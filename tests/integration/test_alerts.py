"""Alerts end to end: real Mosquitto, real `cluster-master` and `cluster-node` processes, and a
real HTTP receiver that Apprise (`json://`) posts the notifications to.

Each test runs its own master on its own topic prefix with a config file of its own; crafted
envelopes stand in for nodes where a test needs values a real machine will not produce on
demand (a 90 °C SoC, a flapping sensor).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cluster_protocol import Envelope, encode_envelope, topic_for
from tests.integration.conftest import start_prefixed_master
from tests.support.broker import MosquittoBroker
from tests.support.databases import MasterDatabase
from tests.support.processes import RunningMaster, master_database, start_master, start_node
from tests.support.receiver import Receiver
from tests.support.waiting import wait_until
from tests.support.watcher import Watcher

pytestmark = pytest.mark.integration

OFFLINE_FOR = "2s"
HOOK = "hook"


def title(node: str, rule: str, word: str) -> str:
    return f"[picluster] {node} {rule} {word}"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    yield running
    running.close()


def alert_config(receiver: Receiver, extra: str = "") -> str:
    """A master config: the receiver as the one channel, short `for`s, a `for = 0` rule."""
    return f"""
[alerts]
channels = ["{receiver.url(HOOK)}"]

[alerts.builtin.node_offline]
for = "{OFFLINE_FOR}"

[[alerts.rules]]
name = "busy"
metric = "cpu_percent"
above = 50
for = 0
severity = "critical"
{extra}
"""


@dataclass
class Site:
    """A master with alerts on its own prefix, and a simulated node publisher."""

    broker: MosquittoBroker
    workdir: Path
    receiver: Receiver
    config: Path
    prefix: str = field(default_factory=lambda: f"al{uuid.uuid4().hex[:6]}")
    master: RunningMaster | None = None
    database: MasterDatabase = field(init=False)  # kept across the master's restarts
    seqs: dict[str, int] = field(default_factory=dict)
    _client: mqtt.Client | None = None

    def __post_init__(self) -> None:
        self.database = master_database(self.workdir)

    def start_master(self) -> RunningMaster:
        self.master = start_prefixed_master(
            self.broker, self.workdir, self.prefix, db=self.database
        )
        return self.master

    @property
    def client(self) -> mqtt.Client:
        if self._client is None:
            client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
            client.connect(self.broker.host, self.broker.port)
            client.loop_start()
            self._client = client
        return self._client

    def send(self, node: str, kind: str, payload: Any) -> None:
        """Publish one envelope as node `node` would, and wait for its PUBACK."""
        seq = self.seqs.get(node, 0) + 1
        self.seqs[node] = seq
        envelope = Envelope(kind, node, time.time(), seq, payload)
        info = self.client.publish(
            topic_for(node, kind, self.prefix),
            encode_envelope(envelope),
            1,
            retain=kind == "status",
        )
        info.wait_for_publish(10)

    def metrics(self, node: str, **values: Any) -> None:
        self.send(node, "metrics", {"cpu_percent": 10.0, "uptime_s": 1000.0, **values})

    def alerts(self) -> list[dict[str, Any]]:
        assert self.master is not None
        found: list[dict[str, Any]] = self.master.get("/api/alerts")["alerts"]
        return found

    def firing(self) -> set[tuple[str, str]]:
        return {(a["node"], a["rule"]) for a in self.alerts()}

    def outbox_empty(self) -> bool:
        assert self.master is not None
        pending: int = self.master.get("/api/alerts")["delivery"].get("pending", 0)
        return pending == 0

    def close(self) -> None:
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
        if self.master is not None:
            self.master.stop()


@pytest.fixture
def site(broker: MosquittoBroker, tmp_path: Path, receiver: Receiver) -> Iterator[Site]:
    config = tmp_path / "master.toml"
    config.write_text(alert_config(receiver))
    running = Site(broker, tmp_path, receiver, config)
    yield running
    running.close()


def start_alerting_master(site: Site) -> RunningMaster:
    site.master = start_master(
        site.broker.url,
        site.workdir,
        "--prefix", site.prefix,
        "--client-id", f"picluster-master-{site.prefix}",
        "--no-ha-discovery",
        "--config", str(site.config),
        db=site.database,
    )  # fmt: skip
    return site.master


def test_a_killed_node_fires_once_after_for_and_resolves_once_when_back(site: Site) -> None:
    master = start_alerting_master(site)
    node_id = "kill-01"
    node = start_node(
        site.broker.url, site.workdir, node_id, "--prefix", site.prefix, "--keepalive", "1"
    )
    try:
        wait_until(lambda: (master.node(node_id) or {}).get("state") == "online", 20,
                   message="the node online")  # fmt: skip
        node.stop(signal.SIGKILL)  # the broker sends its will after 1.5 x keepalive
        killed_at = time.monotonic()
        site.receiver.wait_accepted(HOOK, title(node_id, "node_offline", "firing"))
        assert time.monotonic() - killed_at >= 2.0  # not before `for`
        assert site.firing() == {(node_id, "node_offline")}
        node = start_node(
            site.broker.url, site.workdir, node_id, "--prefix", site.prefix, "--keepalive", "1"
        )
        site.receiver.wait_accepted(HOOK, title(node_id, "node_offline", "resolved"))
        wait_until(lambda: not site.firing() and site.outbox_empty(), 10, message="all quiet")
    finally:
        node.stop()
    assert site.receiver.accepted(HOOK) == [
        title(node_id, "node_offline", "firing"),
        title(node_id, "node_offline", "resolved"),
    ]
    body = site.receiver.requests[0].payload
    assert f"#/node/{node_id}" in body["message"]
    assert body["type"] == "failure"  # node_offline is critical


def test_alerts_are_held_while_a_node_is_offline_and_re_evaluated_when_back(site: Site) -> None:
    start_alerting_master(site)
    site.send("held-01", "status", {"state": "online"})
    site.metrics("held-01", cpu_percent=90.0)
    site.receiver.wait_accepted(HOOK, title("held-01", "busy", "firing"))
    site.send("held-01", "status", {"state": "offline"})
    site.receiver.wait_accepted(HOOK, title("held-01", "node_offline", "firing"))
    assert site.firing() == {("held-01", "busy"), ("held-01", "node_offline")}
    site.send("held-01", "status", {"state": "online"})
    site.metrics("held-01", cpu_percent=5.0)
    site.receiver.wait_accepted(HOOK, title("held-01", "busy", "resolved"))
    wait_until(lambda: not site.firing() and site.outbox_empty(), 10, message="all quiet")
    assert site.receiver.accepted(HOOK) == [
        title("held-01", "busy", "firing"),
        title("held-01", "node_offline", "firing"),
        title("held-01", "node_offline", "resolved"),
        title("held-01", "busy", "resolved"),
    ]


def test_a_flapping_rule_sends_one_notice_then_stays_quiet(site: Site) -> None:
    start_alerting_master(site)
    site.send("flap-01", "status", {"state": "online"})
    for _ in range(7):
        site.metrics("flap-01", cpu_percent=90.0)
        site.metrics("flap-01", cpu_percent=5.0)
    site.receiver.wait_accepted(HOOK, title("flap-01", "busy", "flapping"))
    wait_until(site.outbox_empty, 10, message="the outbox drained")
    delivered = site.receiver.accepted(HOOK)
    assert delivered.count(title("flap-01", "busy", "firing")) == 4
    assert delivered.count(title("flap-01", "busy", "resolved")) == 4
    assert delivered.count(title("flap-01", "busy", "flapping")) == 1
    assert len(delivered) == 9
    history = site.master.get("/api/alerts/history?limit=100")["events"]  # type: ignore[union-attr]
    assert sum(e["event"] == "firing" for e in history) == 7  # the state is still tracked


def test_a_channel_that_answers_500_for_a_while_gets_the_message_exactly_once(
    site: Site,
) -> None:
    start_alerting_master(site)
    site.receiver.down(HOOK)
    site.send("down-01", "status", {"state": "online"})
    site.metrics("down-01", cpu_percent=90.0)
    wanted = title("down-01", "busy", "firing")
    site.receiver.wait(lambda: site.receiver.count(HOOK, status=500) >= 1, "a refused attempt")
    assert site.master is not None
    stats = site.master.get("/api/alerts")["delivery"]
    assert stats["pending"] == 1
    assert stats["failed"] >= 1
    metrics = urllib_text(site.master.api + "/metrics")
    assert 'picluster_alert_firing{node="down-01",rule="busy",severity="critical"} 1.0' in metrics
    assert "picluster_alert_notifications_failed_total" in metrics
    site.receiver.up(HOOK)
    site.receiver.wait_accepted(HOOK, wanted, timeout_s=30)
    wait_until(site.outbox_empty, 10, message="the outbox drained")
    assert site.receiver.accepted(HOOK) == [wanted]


def test_a_master_killed_before_delivery_sends_once_after_restart(site: Site) -> None:
    master = start_alerting_master(site)
    site.receiver.down(HOOK)
    site.send("crash-01", "status", {"state": "online"})
    site.metrics("crash-01", cpu_percent=90.0)
    wanted = title("crash-01", "busy", "firing")
    site.receiver.wait(lambda: site.receiver.count(HOOK, status=500) >= 1, "a refused attempt")
    master.stop(signal.SIGKILL)
    site.receiver.up(HOOK)
    start_alerting_master(site)
    site.receiver.wait_accepted(HOOK, wanted)
    site.metrics("crash-01", cpu_percent=95.0)  # still busy: no second firing
    site.metrics("crash-01", cpu_percent=5.0)
    site.receiver.wait_accepted(HOOK, title("crash-01", "busy", "resolved"))
    wait_until(site.outbox_empty, 10, message="the outbox drained")
    assert site.receiver.accepted(HOOK) == [wanted, title("crash-01", "busy", "resolved")]


def test_a_silence_mutes_and_keeps_state_and_unsilence_sends_what_it_held(site: Site) -> None:
    master = start_alerting_master(site)
    cli = [sys.executable, "-m", "master_service", "alerts"]
    added = subprocess.run(
        [*cli, "silence", "quiet-*", "--for", "2h", "--comment", "maintenance",
         "--api", master.api, "--json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    silence = json.loads(added.stdout)
    assert silence["node"] == "quiet-*"
    assert silence["rule"] is None
    assert silence["ends"] - silence["starts"] == pytest.approx(7200, abs=1)
    site.send("quiet-01", "status", {"state": "online"})
    site.metrics("quiet-01", cpu_percent=90.0)
    wait_until(lambda: ("quiet-01", "busy") in site.firing(), 10, message="busy firing")
    assert site.alerts()[0]["silenced"] is True
    listed = subprocess.run([*cli, "silences", "--api", master.api], capture_output=True,
                            text=True, check=True)  # fmt: skip
    assert "quiet-*" in listed.stdout
    assert "maintenance" in listed.stdout
    assert site.receiver.accepted(HOOK) == []
    subprocess.run([*cli, "unsilence", str(silence["id"]), "--api", master.api], check=True)
    site.receiver.wait_accepted(HOOK, title("quiet-01", "busy", "firing"))
    assert master.get("/api/alerts/silences")["silences"] == []


def test_every_transition_is_an_alert_envelope_on_the_master_topic(site: Site) -> None:
    start_alerting_master(site)
    topic = f"{site.prefix}/_master/alert"
    watcher = Watcher(site.broker.host, site.broker.port, topic)
    try:
        site.send("env-01", "status", {"state": "online"})
        site.metrics("env-01", cpu_percent=90.0)
        (seen,) = watcher.wait_for(topic)
    finally:
        watcher.close()
    envelope = json.loads(seen.payload)
    assert envelope["type"] == "alert"
    assert envelope["node"] == "_master"
    assert envelope["payload"]["rule"] == "busy"
    assert envelope["payload"]["node"] == "env-01"
    assert envelope["payload"]["event"] == "firing"
    assert envelope["payload"]["value"] == 90.0
    assert seen.retain is False


def test_the_heartbeat_is_fetched_while_the_master_is_healthy(
    broker: MosquittoBroker, tmp_path: Path, receiver: Receiver
) -> None:
    config = tmp_path / "master.toml"
    config.write_text(
        f'[alerts]\nheartbeat_url = "{receiver.http_url("ping")}"\nheartbeat_interval = "1s"\n'
    )
    site = Site(broker, tmp_path, receiver, config)
    try:
        start_alerting_master(site)
        receiver.wait(lambda: receiver.count("ping", method="GET") >= 2, "two heartbeats")
        assert {r.path for r in receiver.requests} == {"ping"}
    finally:
        site.close()


def test_alerts_test_reports_each_channel(site: Site, tmp_path: Path) -> None:
    closed = Receiver()
    dead_url = closed.url(HOOK)
    closed.close()  # nothing listens there any more
    site.config.write_text(f'[alerts]\nchannels = ["{site.receiver.url(HOOK)}", "{dead_url}"]\n')
    master = start_alerting_master(site)
    result = subprocess.run(
        [sys.executable, "-m", "master_service", "alerts", "test", "--api", master.api],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert "accepted" in lines[1]
    assert "REFUSED" in lines[2]
    assert site.receiver.accepted(HOOK) == ["[picluster] test notification"]
    only = subprocess.run(
        [sys.executable, "-m", "master_service", "alerts", "test", "--channel", "0",
         "--api", master.api],
        capture_output=True, text=True,
    )  # fmt: skip
    assert only.returncode == 0, only.stdout + only.stderr


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ('[alerts]\nchannels = ["nosuchservice://x"]\n', "alerts.channels[0]"),
        ('[alerts.builtin.nope]\nfor = "1m"\n', "alerts.builtin.nope"),
        ('[alerts.builtin.temperature]\nfor = "two minutes"\n', "alerts.builtin.temperature.for"),
        ('[alerts.builtin.rebooted]\nfor = "1m"\n', "alerts.builtin.rebooted.for"),
        ('[[alerts.rules]]\nname = "x"\nmetric = "bogus"\nabove = 1\n', "alerts.rules[x].metric"),
        ('[[alerts.rules]]\nname = "x"\nmetric = "cpu_percent"\n', "alerts.rules[x]"),
        ('[[alerts.rules]]\nname = "x"\nmetric = "cpu_percent"\nabove = 1\nseverity = "bad"\n',
         "alerts.rules[x].severity"),
        ('[[alerts.rules]]\nname = "x"\nmetric = "cpu_percent"\nabove = 9\nclear_below = 10\n',
         "alerts.rules[x].clear_below"),
        ('[[alerts.rules]]\nname = "x"\nmetric = "cpu_percent"\nabove = 9\nnotify = ["pager"]\n',
         "alerts.rules[x].notify"),
        ('[[alerts.rules]]\nname = "memory"\nmetric = "cpu_percent"\nabove = 9\n',
         "alerts.rules[memory].name"),
        ('[alerts]\nheartbeat_url = "ftp://x"\n', "alerts.heartbeat_url"),
        ('[alerts]\nsurprise = 1\n', "alerts.surprise"),
    ],
)  # fmt: skip
def test_a_bad_alerts_config_exits_2_naming_the_field(
    tmp_path: Path, config: str, field: str
) -> None:
    path = tmp_path / "master.toml"
    path.write_text(config)
    # Port 9 of loopback: nothing is ever contacted, validation comes first.
    result = subprocess.run(
        [sys.executable, "-m", "master_service", "run", "--config", str(path),
         "--broker", "mqtt://127.0.0.1:9", "--db", str(tmp_path / "m.db")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert f"bad setting {field}:" in result.stderr
    assert not (tmp_path / "m.db").exists()


def urllib_text(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())

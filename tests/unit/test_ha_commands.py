"""Home Assistant button presses: which the master acts on, and that it never blocks doing so."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest

from cluster_protocol.payloads import MachineDetails
from master_service.control.commands import CommandRecord, CommandRefusedError
from master_service.home_assistant.presses import (
    MAX_IN_FLIGHT,
    MAX_PRESS_AGE_S,
    REJECT_CAUSE,
    ButtonPresses,
    Press,
    PressError,
    check_advertised,
    parse_press,
)
from master_service.ingest.counters import IngestCounters
from master_service.state import ClusterState
from tests.support.waiting import wait_until

NOW = 1_764_300_000.0
ADVERTISED = ["ping", "refresh", "set_interval", "run", "reboot"]


def machine_details(hostname: str, commands: list[str] | None = None) -> MachineDetails:
    details: MachineDetails = {
        "hostname": hostname,
        "cpu_percent_used": 3.0,
        "ram": 4 * 1024**3,
        "cpu": "Cortex-A72",
        "cpu_cores": 4,
    }
    if commands is not None:  # an older agent advertises none
        details["commands"] = commands
    return details


def press(node: Any = "n1", command: Any = "refresh", ts: Any = NOW, **extra: Any) -> bytes:
    return json.dumps({"node": node, "command": command, "ts": ts, **extra}).encode()


def test_a_good_press_parses():
    assert parse_press(press(), NOW + 1) == Press("n1", "refresh", NOW)
    assert parse_press(press(command="shutdown", ts=NOW - 100), NOW).command == "shutdown"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"PRESS", "not JSON"),  # HA's default payload_press: a button set up by hand
        (b"\xff\xfe", "not JSON"),
        (b'["n1", "refresh"]', "not a JSON object"),
        (press(node=None), "no node"),
        (press(node=""), "no node"),
        (press(command="ping"), "not one of"),
        (press(command="run"), "not one of"),  # tasks are never a button
        (press(command=None), "not one of"),
        (press(ts=None), "no press time"),
        (press(ts=True), "no press time"),
        (press(ts="1764300000"), "no press time"),
        (press(ts=NOW - MAX_PRESS_AGE_S - 1), "ago"),  # queued through a master outage
        (press(ts=NOW + MAX_PRESS_AGE_S + 1), "ago"),  # a clock far ahead
        (press(pad="x" * 2000), "bytes"),
    ],
)
def test_bad_presses_are_refused_with_a_reason(payload, reason):
    with pytest.raises(PressError, match=reason):
        parse_press(payload, NOW)


@pytest.mark.parametrize(
    ("command", "details", "allowed"),
    [
        ("refresh", {"commands": ADVERTISED}, True),
        ("reboot", {"commands": ADVERTISED}, True),
        ("shutdown", {"commands": ADVERTISED}, False),  # this node did not enable it
        ("refresh", {}, True),  # an older agent: refresh is harmless
        ("reboot", {}, False),
        ("reboot", None, False),
        ("refresh", {"commands": ["ping"]}, False),  # it says it does not do refresh
    ],
)
def test_only_advertised_commands_are_pressed(command, details, allowed):
    if allowed:
        check_advertised(Press("n1", command, NOW), details)
    else:
        with pytest.raises(PressError):
            check_advertised(Press("n1", command, NOW), details)


class FakeCommands:
    """Stands in for CommandService.send: records calls, can hold them until released."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []
        self.release = threading.Event()
        self.release.set()
        self.refuse: CommandRefusedError | None = None

    def send(self, node: str, command: str, args: Any = None, timeout_s: float = 5) -> Any:
        if self.refuse is not None:
            raise self.refuse
        self.sent.append((node, command))
        self.release.wait(10)
        return CommandRecord("id", node, command, {}, NOW, NOW + 5, "ok", {"pong": True})


@pytest.fixture
def cluster() -> ClusterState:
    state = ClusterState(lambda: NOW)
    with state.lock:
        state.node("n1").details = machine_details("n1", ADVERTISED)
        state.node("old").details = machine_details("old")
    return state


@pytest.fixture
def fake() -> FakeCommands:
    return FakeCommands()


@pytest.fixture
def counters() -> IngestCounters:
    return IngestCounters()


@pytest.fixture
def presses(fake: FakeCommands, cluster: ClusterState, counters: IngestCounters) -> ButtonPresses:
    return ButtonPresses(fake, cluster, counters, "lab", clock=lambda: NOW)  # type: ignore[arg-type]


def rejected(counters: IngestCounters) -> int:
    return int(counters.snapshot()["rejected"].get(REJECT_CAUSE, 0))


def test_press_sends_the_command(presses, fake):
    assert presses.topic == "lab/_master/ha_command"
    presses.submit(press(command="reboot"))
    presses.submit(press(node="old", ts=NOW + 0.5))
    wait_until(lambda: len(fake.sent) == 2, message="both presses sent")
    assert sorted(fake.sent) == [("n1", "reboot"), ("old", "refresh")]


def test_a_press_delivered_twice_runs_once(presses, fake, counters):
    presses.submit(press())
    presses.submit(press())  # QoS 1 redelivery: the very same bytes
    presses.submit(press(ts=NOW + 1))  # a second click
    wait_until(lambda: len(fake.sent) == 2, message="two distinct presses sent")
    assert fake.sent == [("n1", "refresh")] * 2
    assert rejected(counters) == 0


@pytest.mark.parametrize(
    "payload",
    [
        press(node="ghost"),  # unknown node
        press(command="shutdown"),  # not enabled on n1
        press(node="old", command="reboot"),  # advertises nothing
        b"{not json",
    ],
)
def test_refused_presses_are_counted_and_never_sent(presses, fake, counters, payload, caplog):
    presses.submit(payload)
    # The count comes first, the warning a moment later (outside the counters' lock).
    wait_until(lambda: "[bad_ha_command]" in caplog.text, message="a warning for the press")
    assert rejected(counters) == 1
    assert fake.sent == []


def test_a_press_for_an_offline_node_is_refused_not_fatal(presses, fake, counters):
    fake.refuse = CommandRefusedError(409, "node 'n1' is offline; nothing would receive it")
    presses.submit(press())
    wait_until(lambda: rejected(counters) == 1, message="the refusal counted")
    fake.refuse = None
    presses.submit(press(ts=NOW + 1))
    wait_until(lambda: fake.sent == [("n1", "refresh")], message="the next press still works")


def test_submit_never_waits_for_the_reply(presses, fake, counters):
    fake.release.clear()  # every node is slow to answer
    threads_before = threading.active_count()
    for i in range(MAX_IN_FLIGHT + 2):
        presses.submit(press(ts=NOW + i))  # returns at once (a wait would hang this test)
    wait_until(lambda: len(fake.sent) == MAX_IN_FLIGHT, message="presses in flight")
    assert rejected(counters) == 2  # beyond the limit: refused, not queued without bound
    assert threading.active_count() <= threads_before + MAX_IN_FLIGHT
    fake.release.set()
    wait_until(lambda: not any(t.name == "picluster-ha-press" for t in threading.enumerate()))
    presses.submit(press(ts=NOW + 100))
    wait_until(lambda: len(fake.sent) == MAX_IN_FLIGHT + 1, message="a slot freed again")

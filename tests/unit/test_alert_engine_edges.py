"""The alert engine at its edges: restarts mid-wait, removed rules, clock steps, gone values."""

from __future__ import annotations

from dataclasses import replace

from master_service.alerts.engine import AlertEngine
from master_service.alerts.model import Alert, AlertState
from master_service.alerts.rules import BUILTIN_RULES, CLUSTER_NODE, CLUSTER_RULE, Severity
from tests.unit.test_alert_engine import T0, Rig, title


def reported_gaps(rig: Rig) -> dict[str, int]:
    """What the stored `data_loss` bookkeeping holds after the rig's changes."""
    stored: dict[str, int] = {}
    for changes in rig.changes:
        for node, count in changes.gaps_reported.items():
            if count is None:
                stored.pop(node, None)
            else:
                stored[node] = count
    return stored


def test_a_gap_seen_just_before_a_restart_is_still_reported_once() -> None:
    rig = Rig()
    rig.sample("pi-01")
    rig.advance(1)
    rig.sample("pi-01")  # the bookkeeping starts
    with rig.state.lock:
        rig.state.node("pi-01").seq_gaps = 3
    rig.sample("pi-01")
    gaps = reported_gaps(rig)
    rig.restart()  # within the wait for late envelopes
    rig.engine = AlertEngine(
        rig.rules, rig.state, lambda: rig.now, link_base="http://head:8080/",
        alerts=rig.alerts, gaps_reported=gaps,
    )  # fmt: skip
    rig.every_second(30, pi_01={})
    assert rig.sent == [title("pi-01", "data_loss", "firing")]
    rig.restart()
    rig.engine = AlertEngine(
        rig.rules, rig.state, lambda: rig.now, link_base="http://head:8080/",
        gaps_reported=reported_gaps(rig),
    )  # fmt: skip
    rig.every_second(30, pi_01={})
    assert rig.sent == [title("pi-01", "data_loss", "firing")]  # not twice


def test_an_alert_of_a_rule_no_longer_configured_resolves_at_start() -> None:
    stale = Alert(
        node="pi-01", rule="cpu_hot", severity=Severity.WARNING, state=AlertState.FIRING,
        since=T0 - 600, value=99.0, threshold=90.0, detail="cpu_percent is 99%",
        notified=True, updated=T0 - 600,
    )  # fmt: skip
    rig = Rig(alerts=(stale,))
    rig.advance(0)
    assert rig.sent == [title("pi-01", "cpu_hot", "resolved")]
    assert rig.engine.firing() == []


def test_a_clock_step_forward_is_not_every_node_going_silent() -> None:
    rig = Rig()
    mono = [0.0]
    rig.engine = AlertEngine(
        rig.rules, rig.state, lambda: rig.now, link_base="http://head:8080/",
        monotonic=lambda: mono[0],
    )  # fmt: skip

    def tick(wall: float, steady: float) -> None:
        rig.now += wall
        mono[0] += steady
        rig._take(rig.engine.due(rig.now))
        for node in ("pi-01", "pi-02", "pi-03", "pi-04"):
            rig.sample(node)

    for _ in range(5):
        tick(1, 1)
    tick(300, 1)  # NTP steps the clock five minutes forward
    for _ in range(120):
        tick(1, 1)
    assert rig.sent == []


def test_a_clock_step_back_does_not_delay_an_offline_alert() -> None:
    rig = Rig()
    mono = [0.0]
    rig.engine = AlertEngine(
        rig.rules, rig.state, lambda: rig.now, link_base="http://head:8080/",
        monotonic=lambda: mono[0],
    )  # fmt: skip
    rig.sample("pi-01", uptime_s=500.0)
    rig.now -= 3600  # the clock steps an hour back
    mono[0] += 1
    rig._take(rig.engine.due(rig.now))
    rig.sample("pi-01", uptime_s=501.0)  # last heard now; then the node dies
    for _ in range(70):
        rig.now += 1
        mono[0] += 1
        rig._take(rig.engine.due(rig.now))
    assert rig.sent == [title("pi-01", "node_offline", "firing")]


def test_a_wait_ends_when_the_value_stops_coming() -> None:
    rig = Rig()
    rig.every_second(100, pi_01={"temperature_celsius": 85.0})
    rig.every_second(60, pi_01={"temperature_celsius": None})  # the sensor stopped answering
    rig.sample("pi-01", temperature_celsius=85.0)
    assert rig.sent == []  # hot again: the 2 minutes start again


def test_forgetting_the_nodes_that_were_down_ends_the_cluster_alert() -> None:
    rig = Rig()
    for node in ("pi-01", "pi-02", "pi-03", "pi-04"):
        rig.status(node, "online")
    for node in ("pi-01", "pi-02", "pi-03"):
        rig.status(node, "offline")
    rig.every_second(61, pi_04={})
    assert rig.sent == [title(CLUSTER_NODE, CLUSTER_RULE, "firing")]
    for node in ("pi-01", "pi-02", "pi-03"):
        with rig.state.lock:
            rig.state.forget(node)
        rig._take(rig.engine.forget(node, rig.now))
    assert rig.sent[-1] == title(CLUSTER_NODE, CLUSTER_RULE, "resolved")


def test_a_resolve_says_what_the_value_is_now() -> None:
    rig = Rig(rules=(replace(BUILTIN_RULES["temperature"], for_s=0.0),))
    rig.sample("pi-01", temperature_celsius=85.0)
    rig.sample("pi-01", temperature_celsius=50.0)
    (resolved,) = [e for c in rig.changes for e in c.events if e.kind == "resolved"]
    assert resolved.notification is not None
    assert resolved.notification.body.startswith("temperature_celsius is 50 °C")

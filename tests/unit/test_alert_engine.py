"""The alert engine with a fake clock: what fires, when, and what the channels are told."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from master_service.alerts.engine import AlertEngine
from master_service.alerts.model import Alert, Changes, EventKind, Silence
from master_service.alerts.rules import BUILTIN_RULES, CLUSTER_NODE, CLUSTER_RULE, Rule, Severity
from master_service.state import ClusterState, NodeStatus

INTERVAL_S = 1.0
T0 = 1_800_000_000.0


class Rig:
    """A cluster state driven by hand, the engine over it, and every title sent."""

    def __init__(
        self, rules: tuple[Rule, ...] | None = None, alerts: tuple[Alert, ...] = ()
    ) -> None:
        self.now = T0
        self.state = ClusterState(lambda: self.now, stale_factor=3.0)
        self.rules = rules if rules is not None else tuple(BUILTIN_RULES.values())
        self.alerts = alerts
        self.sent: list[str] = []
        self.changes: list[Changes] = []
        self.engine = self._engine()

    def _engine(self) -> AlertEngine:
        return AlertEngine(
            self.rules, self.state, lambda: self.now, link_base="http://head:8080/",
            alerts=self.alerts,
        )  # fmt: skip

    def restart(self) -> None:
        """A new engine over the rows the last one stored, as after a master restart."""
        stored: dict[tuple[str, str], Alert] = {}
        for changes in self.changes:
            for key in changes.deletes:
                stored.pop(key, None)
            stored.update({k: replace(a) for k, a in changes.upserts.items()})
        self.alerts = tuple(stored.values())
        self.engine = self._engine()

    def _take(self, changes: Changes) -> Changes:
        self.changes.append(changes)
        self.sent += [e.notification.title for e in changes.events if e.notification]
        self.sent += [n.title for n in changes.notifications]
        return changes

    def sample(self, node: str, **payload: Any) -> Changes:
        with self.state.lock:
            facts = self.state.node(node)
            facts.status, facts.last_heard, facts.interval_s = "online", self.now, INTERVAL_S
        payload.setdefault("uptime_s", 1000.0 + self.now - T0)
        return self._take(self.engine.metrics(node, payload, self.now))

    def status(self, node: str, state: str) -> Changes:
        with self.state.lock:
            facts = self.state.node(node)
            if facts.status != state:
                facts.state_since = self.now
            facts.status, facts.last_heard, facts.interval_s = state, self.now, INTERVAL_S
        return self._take(self.engine.node_event(node, self.now))

    def details(self, node: str, **details: Any) -> Changes:
        with self.state.lock:
            self.state.node(node).last_heard = self.now
        return self._take(self.engine.details(node, details, self.now))

    def advance(self, seconds: float) -> Changes:
        self.now += seconds
        return self._take(self.engine.due(self.now))

    def every_second(self, seconds: int, **nodes: dict[str, Any]) -> None:
        for _ in range(seconds):
            self.advance(1.0)
            for node, payload in nodes.items():
                self.sample(node.replace("_", "-"), **payload)


def title(node: str, rule: str, word: str) -> str:
    return f"[picluster] {node} {rule} {word}"


def test_temperature_fires_once_after_two_minutes_and_resolves_once() -> None:
    rig = Rig()
    rig.sample("pi-01", temperature_celsius=85.0)
    rig.every_second(119, pi_01={"temperature_celsius": 85.0})
    assert rig.sent == []  # hot, but not for 2 minutes yet
    rig.every_second(2, pi_01={"temperature_celsius": 85.0})
    assert rig.sent == [title("pi-01", "temperature", "firing")]
    rig.every_second(30, pi_01={"temperature_celsius": 86.0})
    rig.every_second(5, pi_01={"temperature_celsius": 60.0})
    assert rig.sent == [
        title("pi-01", "temperature", "firing"),
        title("pi-01", "temperature", "resolved"),
    ]
    assert rig.engine.firing() == []


def test_a_dip_below_the_limit_restarts_the_wait() -> None:
    rig = Rig()
    rig.every_second(100, pi_01={"temperature_celsius": 85.0})
    rig.sample("pi-01", temperature_celsius=70.0)
    rig.every_second(100, pi_01={"temperature_celsius": 85.0})
    assert rig.sent == []


def test_the_body_has_value_threshold_since_and_the_node_link() -> None:
    rig = Rig()
    rig.sample("pi-01", disks=[{"mount": "/data", "total_bytes": 10, "used_bytes": 9,
                                "percent": 95.0}])  # fmt: skip
    rig.every_second(301, pi_01={"disks": [{"mount": "/data", "total_bytes": 10,
                                            "used_bytes": 9, "percent": 95.0}]})  # fmt: skip
    (event,) = [e for c in rig.changes for e in c.events]
    assert event.notification is not None
    body = event.notification.body
    assert "/data is 95%" in body
    assert "(at or above 90%)" in body
    assert "Since 2027-" in body
    assert "http://head:8080/#/node/pi-01" in body
    assert event.notification.notify_type == "failure"  # disk_full is critical


def test_custom_rule_with_hysteresis_and_node_globs() -> None:
    rule = Rule(name="hot_rack", metric="temperature_celsius", above=70.0, clear_below=65.0,
                for_s=0.0, severity=Severity.CRITICAL, nodes=("rack1-*",))  # fmt: skip
    rig = Rig(rules=(rule,))
    rig.sample("rack1-a", temperature_celsius=72.0)
    rig.sample("rack2-a", temperature_celsius=90.0)  # not matched by the glob
    assert rig.sent == [title("rack1-a", "hot_rack", "firing")]
    rig.advance(1)
    rig.sample("rack1-a", temperature_celsius=68.0)  # below 70 but above 65: still firing
    assert [a.rule for a in rig.engine.firing()] == ["hot_rack"]
    rig.advance(1)
    rig.sample("rack1-a", temperature_celsius=64.0)
    assert rig.sent[-1] == title("rack1-a", "hot_rack", "resolved")


def test_below_rule() -> None:
    rule = Rule(name="slow_clock", metric="cpu_freq_mhz", below=700.0, for_s=0.0)
    rig = Rig(rules=(rule,))
    rig.sample("pi-01", cpu_freq_mhz=600.0)
    rig.advance(1)
    rig.sample("pi-01", cpu_freq_mhz=1500.0)
    assert rig.sent == [title("pi-01", "slow_clock", "firing"),
                        title("pi-01", "slow_clock", "resolved")]  # fmt: skip


def test_offline_fires_once_after_for_and_resolves_when_back() -> None:
    rig = Rig()
    rig.status("pi-01", "online")
    rig.sample("pi-01")
    rig.status("pi-01", "offline")
    rig.advance(59)
    assert rig.sent == []
    rig.advance(1)
    assert rig.sent == [title("pi-01", "node_offline", "firing")]
    rig.advance(600)  # long silence: still exactly one
    assert rig.sent == [title("pi-01", "node_offline", "firing")]
    rig.status("pi-01", "online")
    assert rig.sent[-1] == title("pi-01", "node_offline", "resolved")


def test_a_silent_node_goes_stale_then_offline_fires() -> None:
    rig = Rig()
    rig.every_second(5, pi_01={})
    rig.advance(3)  # stale after 3 intervals of silence
    assert rig.sent == []
    rig.advance(60)
    assert rig.sent == [title("pi-01", "node_offline", "firing")]
    assert "stale" in rig.engine.firing()[0].detail


def test_a_short_blip_sends_nothing() -> None:
    rig = Rig()
    rig.status("pi-01", "online")
    rig.status("pi-01", "offline")
    rig.advance(30)
    rig.status("pi-01", "online")
    rig.every_second(120, pi_01={})
    assert rig.sent == []


def test_an_offline_node_holds_its_other_alerts() -> None:
    rig = Rig(rules=(replace(BUILTIN_RULES["temperature"], for_s=0.0),
                     BUILTIN_RULES["node_offline"]))  # fmt: skip
    rig.sample("pi-01", temperature_celsius=90.0)
    rig.status("pi-01", "offline")
    rig.advance(120)
    assert rig.sent == [title("pi-01", "temperature", "firing"),
                        title("pi-01", "node_offline", "firing")]  # fmt: skip
    assert {a.rule for a in rig.engine.firing()} == {"temperature", "node_offline"}
    # Back and cool: both resolve, re-evaluated from what the node says now.
    rig.status("pi-01", "online")
    rig.sample("pi-01", temperature_celsius=50.0)
    assert rig.sent[2:] == [title("pi-01", "node_offline", "resolved"),
                            title("pi-01", "temperature", "resolved")]  # fmt: skip


def test_flapping_sends_one_notice_then_quiet_until_it_settles() -> None:
    rig = Rig(rules=(replace(BUILTIN_RULES["temperature"], for_s=0.0),))
    for _ in range(8):
        rig.sample("pi-01", temperature_celsius=90.0)
        rig.advance(10)
        rig.sample("pi-01", temperature_celsius=50.0)
        rig.advance(10)
    fired = title("pi-01", "temperature", "firing")
    resolved = title("pi-01", "temperature", "resolved")
    assert rig.sent == [fired, resolved] * 4 + [title("pi-01", "temperature", "flapping")]
    rig.sample("pi-01", temperature_celsius=90.0)  # and it stays hot
    rig.advance(601)
    assert rig.sent[-1] == fired  # settled: the channels hear the state it settled in
    assert len(rig.sent) == 10


def test_more_than_half_offline_within_a_minute_is_one_cluster_alert() -> None:
    rig = Rig()
    nodes = [f"pi-0{i}" for i in range(1, 5)]
    for node in nodes:
        rig.status(node, "online")
    for node in nodes[:3]:
        rig.every_second(5, pi_04={})
        rig.status(node, "offline")
    rig.every_second(120, pi_04={})
    assert rig.sent == [title(CLUSTER_NODE, CLUSTER_RULE, "firing")]
    assert {a.node for a in rig.engine.firing() if a.rule == "node_offline"} == set(nodes[:3])
    for node in nodes[:3]:
        rig.status(node, "online")
    assert rig.sent == [title(CLUSTER_NODE, CLUSTER_RULE, "firing"),
                        title(CLUSTER_NODE, CLUSTER_RULE, "resolved")]  # fmt: skip


def test_when_the_cluster_alert_resolves_nodes_still_down_are_named() -> None:
    rig = Rig()
    nodes = [f"pi-0{i}" for i in range(1, 5)]
    for node in nodes:
        rig.status(node, "online")
    for node in nodes[:3]:
        rig.status(node, "offline")
    rig.every_second(61, pi_04={})
    rig.status("pi-01", "online")
    rig.status("pi-02", "online")
    assert rig.sent == [title(CLUSTER_NODE, CLUSTER_RULE, "firing"),
                        title(CLUSTER_NODE, CLUSTER_RULE, "resolved")]  # fmt: skip
    rig.every_second(61, pi_01={}, pi_02={}, pi_04={})  # pi-03 stays down: named after `for`
    assert rig.sent[2:] == [title("pi-03", "node_offline", "firing")]


def test_rebooted_is_one_shot_and_a_clock_step_is_not_a_reboot() -> None:
    rig = Rig()
    rig.sample("pi-01", uptime_s=5000.0)
    rig.advance(1)
    rig.sample("pi-01", uptime_s=5001.0)
    rig.advance(1)
    rig.sample("pi-01", uptime_s=12.0)
    rig.advance(1)
    rig.sample("pi-01", uptime_s=13.0)
    assert rig.sent == [title("pi-01", "rebooted", "firing")]
    assert rig.engine.firing() == []  # one-shot: nothing stays firing


def test_data_loss_counts_gaps_that_stay_unfilled() -> None:
    rig = Rig()
    rig.sample("pi-01")
    with rig.state.lock:
        rig.state.node("pi-01").seq_gaps = 3
    rig.sample("pi-01")
    rig.advance(5)
    with rig.state.lock:
        rig.state.node("pi-01").seq_gaps = 2  # one came late (spooled)
    rig.sample("pi-01")
    rig.advance(10)
    assert rig.sent == [title("pi-01", "data_loss", "firing")]
    (event,) = [e for c in rig.changes for e in c.events]
    assert event.kind is EventKind.FIRED
    assert event.value == 2
    assert "2 envelopes" in event.message


def test_silence_mutes_and_what_it_held_back_is_sent_when_it_ends() -> None:
    rig = Rig(rules=(replace(BUILTIN_RULES["temperature"], for_s=0.0),))
    rig.engine.add_silence(Silence(1, "pi-*", None, rig.now, rig.now + 3600))
    rig.sample("pi-01", temperature_celsius=90.0)
    assert rig.sent == []
    assert rig.engine.firing()[0].rule == "temperature"  # the state is kept
    rig.advance(3601)
    assert rig.sent == [title("pi-01", "temperature", "firing")]


def test_a_resolve_during_a_silence_is_sent_after_it_and_never_for_unannounced_alerts() -> None:
    rig = Rig(rules=(replace(BUILTIN_RULES["temperature"], for_s=0.0),))
    rig.sample("pi-01", temperature_celsius=90.0)
    rig.engine.add_silence(Silence(1, "pi-01", "temperature", rig.now, rig.now + 60))
    rig.sample("pi-01", temperature_celsius=50.0)
    rig.sample("pi-02", temperature_celsius=90.0)
    rig.sample("pi-02", temperature_celsius=90.0)
    rig.engine.add_silence(Silence(2, "pi-02", None, rig.now, rig.now + 60))
    rig.advance(61)
    assert rig.sent == [title("pi-01", "temperature", "firing"),
                        title("pi-02", "temperature", "firing"),
                        title("pi-01", "temperature", "resolved")]  # fmt: skip


def test_after_a_restart_a_firing_alert_resolves_once_and_never_fires_again() -> None:
    rig = Rig(rules=(replace(BUILTIN_RULES["temperature"], for_s=0.0),))
    rig.sample("pi-01", temperature_celsius=90.0)
    rig.restart()
    rig.sample("pi-01", temperature_celsius=91.0)
    rig.sample("pi-01", temperature_celsius=40.0)
    assert rig.sent == [title("pi-01", "temperature", "firing"),
                        title("pi-01", "temperature", "resolved")]  # fmt: skip


def test_nodes_not_heard_since_before_a_restart_get_a_fresh_for() -> None:
    rig = Rig()
    rig.sample("pi-01")
    rig.now += 3600  # the master was down for an hour
    rig.restart()
    rig.advance(30)
    assert rig.sent == []  # the node may still report: a master back is not a node down
    rig.advance(31)
    assert rig.sent == [title("pi-01", "node_offline", "firing")]
    assert rig.state.get("pi-01") is not None
    assert rig.state.node("pi-01").effective_status(rig.now, 3.0) is NodeStatus.STALE


def test_forget_drops_alerts_silently() -> None:
    rig = Rig(rules=(replace(BUILTIN_RULES["temperature"], for_s=0.0),))
    rig.sample("pi-01", temperature_celsius=90.0)
    changes = rig.engine.forget("pi-01")
    assert ("pi-01", "temperature") in changes.deletes
    assert not changes.events
    assert rig.engine.firing() == []


def test_a_new_boot_time_after_a_reconnect_is_one_reboot() -> None:
    rig = Rig()
    rig.status("pi-01", "online")
    rig.details("pi-01", boot_time=T0 - 5000)
    rig.sample("pi-01", uptime_s=5000.0)
    rig.status("pi-01", "offline")
    rig.advance(30)
    rig.status("pi-01", "online")
    rig.details("pi-01", boot_time=T0 + 25)
    rig.sample("pi-01", uptime_s=5.0)  # the same restart, seen again: not a second one
    assert rig.sent == [title("pi-01", "rebooted", "firing")]


def test_a_boot_time_moved_by_ntp_without_a_reconnect_is_no_reboot() -> None:
    rig = Rig()
    rig.status("pi-01", "online")
    rig.details("pi-01", boot_time=T0 - 86400 * 30)  # fake-hwclock's idea of the time
    rig.sample("pi-01", uptime_s=40.0)
    rig.advance(60)
    rig.details("pi-01", boot_time=T0 - 40)  # NTP stepped the clock: same boot
    rig.sample("pi-01", uptime_s=100.0)
    assert rig.sent == []


def test_nothing_is_offline_while_the_master_itself_has_no_broker() -> None:
    rig = Rig()
    blind = False
    rig.engine = AlertEngine(
        rig.rules, rig.state, lambda: rig.now, link_base="http://head:8080/",
        blind=lambda: blind,
    )  # fmt: skip
    rig.every_second(5, pi_01={})
    blind = True  # the broker went away: the master hears no node
    for _ in range(120):
        rig.advance(1)
    assert rig.sent == []
    blind = False  # back; the node's queued samples are still on their way
    for _ in range(59):
        rig.advance(1)
    assert rig.sent == []  # `for` counts from when the master hears again
    for _ in range(3):
        rig.advance(1)
    assert rig.sent == [title("pi-01", "node_offline", "firing")]


def test_a_resolve_owed_before_a_restart_is_sent_after_it() -> None:
    rig = Rig(rules=(replace(BUILTIN_RULES["temperature"], for_s=0.0),))
    rig.sample("pi-01", temperature_celsius=90.0)
    rig.engine.add_silence(Silence(1, "pi-01", None, rig.now, rig.now + 60))
    rig.sample("pi-01", temperature_celsius=40.0)  # resolved, muted: still owed
    rig.restart()  # silences are not carried by this rig: the restart ends the mute
    rig.advance(0)
    assert rig.sent == [title("pi-01", "temperature", "firing"),
                        title("pi-01", "temperature", "resolved")]  # fmt: skip


def test_a_node_offline_restored_at_start_resolves_when_the_node_is_heard() -> None:
    rig = Rig()
    rig.status("pi-01", "online")
    rig.status("pi-01", "offline")
    rig.advance(61)
    assert rig.sent == [title("pi-01", "node_offline", "firing")]
    with rig.state.lock:  # the node came back while the master was down
        rig.state.node("pi-01").status = "online"
    rig.restart()
    rig.sample("pi-01")  # heard before any timer of the new engine ran
    assert rig.sent[-1] == title("pi-01", "node_offline", "resolved")
    assert rig.engine.firing() == []


def test_a_node_that_goes_down_during_the_grace_after_a_cluster_alert_is_named() -> None:
    rig = Rig()
    nodes = [f"pi-0{i}" for i in range(1, 6)]
    for node in nodes:
        rig.status(node, "online")
    for node in nodes[:3]:
        rig.status(node, "offline")
    rig.every_second(61, pi_04={}, pi_05={})
    rig.status("pi-04", "offline")  # its `for` runs out within the grace below
    rig.every_second(10, pi_05={})
    for node in nodes[:3]:
        rig.status(node, "online")  # the cluster alert resolves; a grace of `for` follows
    rig.every_second(120, pi_01={}, pi_02={}, pi_03={}, pi_05={})
    assert rig.sent == [title(CLUSTER_NODE, CLUSTER_RULE, "firing"),
                        title(CLUSTER_NODE, CLUSTER_RULE, "resolved"),
                        title("pi-04", "node_offline", "firing")]  # fmt: skip


def test_a_wait_for_for_does_not_survive_an_outage() -> None:
    rig = Rig()
    rig.every_second(100, pi_01={"temperature_celsius": 85.0})
    rig.status("pi-01", "offline")
    rig.advance(61)
    rig.status("pi-01", "online")
    rig.sample("pi-01", temperature_celsius=85.0)  # hot again: the 2 minutes start again
    assert title("pi-01", "temperature", "firing") not in rig.sent
    rig.every_second(121, pi_01={"temperature_celsius": 85.0})
    assert rig.sent[-1] == title("pi-01", "temperature", "firing")


def test_an_ntp_step_then_a_reconnect_is_no_reboot() -> None:
    rig = Rig()
    rig.status("pi-01", "online")
    rig.details("pi-01", boot_time=T0 - 86400 * 30)
    rig.sample("pi-01", uptime_s=40.0)
    rig.advance(10)
    rig.status("pi-01", "offline")
    rig.status("pi-01", "online")  # reconnected after the clock step
    rig.details("pi-01", boot_time=T0 - 40)
    rig.sample("pi-01", uptime_s=52.0)
    assert rig.sent == []


# -- the `tags` selector --------------------------------------------------------------------

HOT_RACK1 = Rule(name="hot_rack1", metric="temperature_celsius", above=70.0, tags=("rack1",))


def tag_rig(*rules: Rule) -> Rig:
    return Rig(rules=(*BUILTIN_RULES.values(), *rules))


def test_a_rule_with_tags_watches_only_nodes_with_any_of_them() -> None:
    rig = tag_rig(replace(HOT_RACK1, tags=("rack1", "gpu")))
    with rig.state.lock:
        rig.state.node("pi-01").details = {"tags": ["rack1"]}  # type: ignore[assignment]
        rig.state.node("pi-02").details = {"tags": ["rack2"]}  # type: ignore[assignment]
    rig.state.set_master_tags("pi-03", ["gpu"])  # master-side, before it is heard
    for node in ("pi-01", "pi-02", "pi-03"):
        rig.sample(node, temperature_celsius=75.0)
    assert sorted(rig.sent) == [
        title("pi-01", "hot_rack1", "firing"),
        title("pi-03", "hot_rack1", "firing"),
    ]


def test_a_built_in_rule_with_tags_leaves_other_nodes_alone() -> None:
    offline = replace(BUILTIN_RULES["node_offline"], tags=("poe",))
    rig = Rig(rules=(offline,))
    rig.state.set_master_tags("pi-01", ["poe"])
    for node in ("pi-01", "pi-02", "pi-03", "pi-04", "pi-05"):
        rig.status(node, "online")
    rig.status("pi-01", "offline")
    rig.status("pi-02", "offline")  # two of five: no cluster alert
    rig.every_second(61, pi_03={}, pi_04={}, pi_05={})
    assert rig.sent == [title("pi-01", "node_offline", "firing")]


def test_tagging_a_node_on_the_master_brings_it_under_the_rule_at_its_next_sample() -> None:
    rig = tag_rig(HOT_RACK1)
    rig.sample("pi-01", temperature_celsius=75.0)
    assert rig.sent == []  # rules chosen (and cached) for a node without tags
    rig.state.set_master_tags("pi-01", ["rack1"])
    rig.sample("pi-01", temperature_celsius=75.0)
    assert rig.sent == [title("pi-01", "hot_rack1", "firing")]


def test_a_tag_gone_from_the_details_ends_a_wait_for_for() -> None:
    rig = tag_rig(replace(HOT_RACK1, for_s=60.0))
    with rig.state.lock:
        rig.state.node("pi-01").details = {"tags": ["rack1"]}  # type: ignore[assignment]
    rig.every_second(30, pi_01={"temperature_celsius": 75.0})
    with rig.state.lock:
        rig.state.node("pi-01").details = {"tags": []}  # type: ignore[assignment]
    rig.every_second(60, pi_01={"temperature_celsius": 75.0})
    assert rig.sent == []
    with rig.state.lock:
        rig.state.node("pi-01").details = {"tags": ["rack1"]}  # type: ignore[assignment]
    rig.every_second(30, pi_01={"temperature_celsius": 75.0})
    assert rig.sent == []  # the wait starts again: 30 s of 60
    rig.every_second(31, pi_01={"temperature_celsius": 75.0})
    assert rig.sent == [title("pi-01", "hot_rack1", "firing")]


def test_a_firing_alert_resolves_when_its_node_leaves_the_rules_tags() -> None:
    rig = tag_rig(HOT_RACK1)
    rig.state.set_master_tags("pi-01", ["rack1"])
    rig.sample("pi-01", temperature_celsius=75.0)
    assert rig.sent == [title("pi-01", "hot_rack1", "firing")]
    rig.state.set_master_tags("pi-01", [])  # `cluster-master nodes untag pi-01 rack1`
    rig.sample("pi-01", temperature_celsius=75.0)
    assert rig.sent == [
        title("pi-01", "hot_rack1", "firing"),
        title("pi-01", "hot_rack1", "resolved"),
    ]
    assert rig.engine.firing() == []
    rig.every_second(5, pi_01={"temperature_celsius": 75.0})
    assert len(rig.sent) == 2  # not watched there any more

"""The alert engine: rules evaluated as events arrive, and what the channels are owed.

It runs on the ingest thread (fed by `AlertObserver`) and does no I/O: each call returns the
`Changes` to store, in the same transaction as the messages that caused them.

Notifications follow one rule, level-triggered: a channel is told when what it was last told
(`Alert.notified`) differs from the alert's state and nothing mutes that alert. A silence,
a flapping rule or the cluster alert mute; when the mute ends, whatever is owed is sent then.
So a resolve is never sent for an alert nobody was told about, and never twice.
"""

from __future__ import annotations

import fnmatch
import heapq
import itertools
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Final

from master_service.alerts import messages
from master_service.alerts.durations import format_duration
from master_service.alerts.model import (
    Alert,
    AlertState,
    Changes,
    Event,
    EventKind,
    Notification,
    Silence,
)
from master_service.alerts.rules import (
    CLUSTER_NODE,
    CLUSTER_RULE,
    Builtin,
    Kind,
    Reading,
    Rule,
    Severity,
)
from master_service.state import ClusterState, NodeState, NodeStatus

logger = logging.getLogger(__name__)

FLAP_WINDOW_S: Final = 600.0
FLAP_FIRINGS: Final = 4  # more firings than this within the window: flapping
CLUSTER_WINDOW_S: Final = 60.0  # "more than half the nodes offline within a minute"
BOOT_TIME_SHIFT_S: Final = 60.0  # boot_time read twice in one boot can differ by a little
REBOOT_TOLERANCE_S: Final = 5.0  # uptime may read a little lower from one sample to the next
GAP_SETTLE_MIN_S: Final = 10.0  # a late (spooled) envelope may still fill a gap meanwhile
STALE_MARGIN_S: Final = 0.05
BLIND_RECHECK_S: Final = 1.0  # while the master has no broker, look again this often
CLOCK_STEP_S: Final = 5.0  # wall and monotonic clocks apart by more: the clock was stepped

CLUSTER_RULE_DEF: Final = Rule(name=CLUSTER_RULE, kind=Kind.OFFLINE, severity=Severity.CRITICAL)


class Timer(Enum):
    """Why the engine wants to be called back."""

    LIVENESS = "liveness"  # a node may have gone stale, or been down for `for`
    GAP = "gap"  # a seq gap has had time to fill
    FLAP = "flap"  # a flapping rule may have settled
    SILENCE = "silence"  # a silence ends
    RECONCILE = "reconcile"  # at start: send what restored alerts still owe


@dataclass(slots=True)
class Watch:
    """What the engine remembers of one node between events."""

    down_since: float | None = None
    check_at: float | None = None  # the liveness timer pending for this node
    last_uptime: float | None = None
    gaps_seen: int = 0
    gap_check_at: float | None = None
    rules: tuple[Rule, ...] | None = None  # threshold rules that apply (cached)
    rules_tags: tuple[str, ...] = ()  # the node's tags `rules` was chosen for
    active: set[str] = field(default_factory=set)  # threshold rules pending or firing
    boot_time: float | None = None  # from the last machine details
    born: bool = False  # a birth (status online) came since the last details
    reboot_seen: bool = False  # uptime went back; the new boot_time is expected, not news


@dataclass(slots=True)
class Flaps:
    """Recent firings of one (node, rule), and whether it counts as flapping."""

    firings: deque[float] = field(default_factory=deque)
    flapping: bool = False
    last_change: float = 0.0


class AlertEngine:
    """Evaluates the rules on each event; thread-safe (the API reads while ingest writes)."""

    def __init__(
        self,
        rules: Sequence[Rule],
        state: ClusterState,
        clock: Callable[[], float],
        *,
        link_base: str,
        alerts: Iterable[Alert] = (),
        silences: Iterable[Silence] = (),
        blind: Callable[[], bool] = lambda: False,
        gaps_reported: Mapping[str, int] | None = None,
        monotonic: Callable[[], float] | None = None,
        gap_settle_s: float = GAP_SETTLE_MIN_S,
    ) -> None:
        self._lock = threading.RLock()
        # How long a gap may still be filled before it is reported (several masters: until a
        # silent master's session is taken over, member_timeout and more).
        self._gap_settle_s = gap_settle_s
        self._state = state
        self._clock = clock
        self._link_base = link_base
        self._rules = {rule.name: rule for rule in rules if rule.enabled}
        self._thresholds = tuple(r for r in self._rules.values() if r.kind is Kind.THRESHOLD)
        self._offline = self._rules.get(Builtin.NODE_OFFLINE)
        self._rebooted = self._rules.get(Builtin.REBOOTED)
        self._data_loss = self._rules.get(Builtin.DATA_LOSS)
        self.started = clock()
        # Beside the wall clock, to notice it step (None: trust the wall clock, as in tests).
        self._monotonic = monotonic or clock
        self._last_tick = (self.started, self._monotonic())
        # While the master itself hears nothing (no broker), silence says nothing of the nodes:
        # no node is taken for down then, and `for` counts again from when it hears again.
        self._blind = blind
        self._was_blind = False
        self._sight_since = self.started
        self._alerts: dict[tuple[str, str], Alert] = {(a.node, a.rule): a for a in alerts}
        self._pending: dict[tuple[str, str], tuple[float, Reading]] = {}
        self._watch: dict[str, Watch] = {}
        self._flaps: dict[tuple[str, str], Flaps] = {}
        self._silences: dict[int, Silence] = {s.id: s for s in silences}
        self._timers: list[tuple[float, int, Timer, str, str]] = []
        self._cluster_grace_until = 0.0  # node_offline alerts stay covered until then
        self._tick = itertools.count()
        self.on_schedule: Callable[[float], None] = lambda _due: None  # the timer thread's wake
        for silence in self._silences.values():
            self._schedule(silence.ends, Timer.SILENCE, "", str(silence.id))
        for alert in self._alerts.values():
            self._watch_of(alert.node).active.add(alert.rule)
        if self._alerts:
            self._schedule(self.started, Timer.RECONCILE, "")
        with state.lock:
            known = [node for n in state.node_ids() if (node := state.get(n)) is not None]
        for node in known:
            watch = self._watch_of(node.node)
            metrics = node.metrics or {}
            uptime = metrics.get("uptime_s")
            watch.last_uptime = float(uptime) if isinstance(uptime, int | float) else None
            details = node.details
            boot_time = details.get("boot_time") if details is not None else None
            watch.boot_time = float(boot_time) if isinstance(boot_time, int | float) else None
            reported = (gaps_reported or {}).get(node.node)
            watch.gaps_seen = node.seq_gaps if reported is None else reported
            if node.seq_gaps > watch.gaps_seen:  # seen before a restart, never reported
                watch.gap_check_at = self.started + self._gap_settle_s
                self._schedule(watch.gap_check_at, Timer.GAP, node.node)
            self._schedule(self.started, Timer.LIVENESS, node.node)

    # -- events ---------------------------------------------------------------------------

    def metrics(self, node: str, payload: Mapping[str, Any], now: float) -> Changes:
        """A metrics sample was accepted: liveness, reboot, thresholds, seq gaps."""
        changes = Changes()
        with self._lock:
            facts = self._state.get(node)
            if facts is None:
                return changes
            watch = self._watch_of(node)
            self._liveness(facts, watch, now, changes)
            if watch.down_since is None:  # a node that is down has its alerts held
                self._reboot(node, watch, payload, now, changes)
                active = watch.active
                for rule in self._rules_for(facts, watch, now, changes):
                    # Inlined steady path: most samples of most rules end at this check.
                    key = rule.payload_key
                    if key is not None:
                        value = payload.get(key)
                        if value.__class__ is not float and value.__class__ is not int:
                            if rule.name in active:  # absent, null (no sensor), or a bool
                                self._no_value(rule, node, watch)
                            continue
                    else:
                        value = rule.value_of(payload)
                        if value is None:
                            if rule.name in active:
                                self._no_value(rule, node, watch)
                            continue
                    if value > rule.hi or value < rule.lo or rule.name in active:
                        self._threshold(rule, node, watch, payload, now, changes)
            self._gaps(facts, watch, now, changes)
        return changes

    def node_event(self, node: str, now: float) -> Changes:
        """A status arrived: liveness and seq gaps."""
        changes = Changes()
        with self._lock:
            facts = self._state.get(node)
            if facts is not None:
                watch = self._watch_of(node)
                if facts.status == NodeStatus.ONLINE:
                    watch.born = True
                self._liveness(facts, watch, now, changes)
                self._gaps(facts, watch, now, changes)
        return changes

    def details(self, node: str, details: Mapping[str, Any], now: float) -> Changes:
        """Machine details arrived: liveness, seq gaps, and a new boot after a reconnect."""
        changes = Changes()
        with self._lock:
            facts = self._state.get(node)
            if facts is not None:
                watch = self._watch_of(node)
                self._liveness(facts, watch, now, changes)
                self._boot_time(node, watch, details.get("boot_time"), now, changes)
                self._gaps(facts, watch, now, changes)
        return changes

    def forget(self, node: str, now: float | None = None) -> Changes:
        """A node was forgotten: its alerts go without a word."""
        changes = Changes()
        now = self._clock() if now is None else now
        with self._lock:
            self._watch.pop(node, None)
            for key in [key for key in self._alerts if key[0] == node]:
                del self._alerts[key]
                changes.drop(*key)
            for key in [key for key in self._pending if key[0] == node]:
                del self._pending[key]
            for key in [key for key in self._flaps if key[0] == node]:
                del self._flaps[key]
            changes.nodes_changed.add(node)
            changes.gaps_reported[node] = None
            self._cluster_check(now, changes)
        return changes

    def due(self, now: float) -> Changes:
        """Run every timer due by `now` (the timer thread calls this through the ingest)."""
        changes = Changes()
        with self._lock:
            self._notice_clock_step(now)
            while self._timers and self._timers[0][0] <= now:
                _, _, kind, node, extra = heapq.heappop(self._timers)
                if kind is Timer.LIVENESS:
                    self._liveness_timer(node, now, changes)
                elif kind is Timer.GAP:
                    self._gap_timer(node, now, changes)
                elif kind is Timer.FLAP:
                    self._flap_timer(node, extra, now, changes)
                elif kind is Timer.RECONCILE:
                    self._reconcile_restored(now, changes)
                else:
                    self._silence_ended(int(extra), now, changes)
        return changes

    def _notice_clock_step(self, now: float) -> None:
        """The wall clock stepped (NTP on a Pi without a real-time clock): follow it.

        Deadlines move with the step, and `for` counts again from now: a step forward would
        otherwise make every node look silent for its size, a step back delay every deadline.
        """
        mono = self._monotonic()
        last_wall, last_mono = self._last_tick
        self._last_tick = (now, mono)
        step = (now - last_wall) - (mono - last_mono)
        if abs(step) <= CLOCK_STEP_S:
            return
        logger.warning("the clock stepped by %+.0f s; alert deadlines follow it", step)
        self._timers = [(due + step, *rest) for due, *rest in self._timers]  # type: ignore[misc]
        heapq.heapify(self._timers)
        self._sight_since = now
        for watch in self._watch.values():
            if watch.down_since is not None:
                watch.down_since = max(watch.down_since, now)
            watch.check_at = None
            if watch.gap_check_at is not None:
                watch.gap_check_at += step
        for node in list(self._watch):
            self._schedule(now, Timer.LIVENESS, node)

    def next_due(self) -> float | None:
        """When `due` should next be called; None when nothing is scheduled."""
        with self._lock:
            return self._timers[0][0] if self._timers else None

    # -- silences ---------------------------------------------------------------------------

    def add_silence(self, silence: Silence) -> None:
        """Mute (node, rule) notifications until the silence ends."""
        with self._lock:
            self._silences[silence.id] = silence
            self._schedule(silence.ends, Timer.SILENCE, "", str(silence.id))

    def remove_silence(self, silence_id: int, now: float) -> Changes:
        """End a silence now: whatever it held back is sent."""
        changes = Changes()
        with self._lock:
            self._silence_ended(silence_id, now, changes)
        return changes

    def silences(self, now: float) -> list[Silence]:
        """Silences not yet ended."""
        with self._lock:
            return sorted(
                (s for s in self._silences.values() if s.ends > now), key=lambda s: s.ends
            )

    # -- reading --------------------------------------------------------------------------

    def firing(self, node: str | None = None) -> list[Alert]:
        """Alerts firing now (on one node, or all), oldest first."""
        with self._lock:
            found = [
                a
                for a in self._alerts.values()
                if a.state is AlertState.FIRING and (node is None or a.node == node)
            ]
        return sorted(found, key=lambda a: (a.since, a.node, a.rule))

    def firing_rules(self, node: str) -> tuple[str, ...]:
        """Names of the rules firing on a node, sorted."""
        return tuple(sorted(a.rule for a in self.firing(node)))

    def is_muted(self, node: str, rule: str, now: float) -> tuple[bool, bool]:
        """(silenced, flapping) for one alert, as the API shows them."""
        with self._lock:
            flaps = self._flaps.get((node, rule))
            return self._silenced(node, rule, now), bool(flaps and flaps.flapping)

    # -- liveness ---------------------------------------------------------------------------

    def _liveness(self, facts: NodeState, watch: Watch, now: float, changes: Changes) -> None:
        if self._blind():
            self._was_blind = True
            if watch.check_at is None or watch.check_at <= now:
                watch.check_at = now + BLIND_RECHECK_S
                self._schedule(watch.check_at, Timer.LIVENESS, facts.node)
            return
        if self._was_blind:
            self._was_blind = False
            self._sight_since = now
        status = facts.effective_status(now, self._state.stale_factor)
        if status is NodeStatus.ONLINE:
            offline = self._offline
            # Also when this engine never saw it down: a node_offline restored at start.
            if watch.down_since is not None or (
                offline is not None and offline.name in watch.active
            ):
                watch.down_since = None
                self._node_up(facts.node, now, changes)
            # Wake when the node would turn stale; one pending timer per node is enough,
            # since the timer re-reads `last_heard` and schedules the next one. (A check
            # further ahead than a stale period is left over from before a clock step.)
            check_at = watch.check_at
            if check_at is None or check_at <= now or check_at > now + self._stale_after(facts) + 1:
                self._arm_liveness(facts, watch)
            return
        if status is NodeStatus.UNKNOWN and facts.last_heard is None:
            return  # never heard live: nothing to be offline from
        if watch.down_since is None:
            if status is NodeStatus.OFFLINE and facts.state_since is not None:
                began = facts.state_since
            elif facts.last_heard is not None:
                began = facts.last_heard + self._stale_after(facts)
            else:
                began = now
            # Nothing before this master heard the broker counts: it could not hear the node.
            watch.down_since = min(now, max(began, self._sight_since))
            # A condition that was waiting out its `for` starts again once the node is back:
            # the outage says nothing about whether it held meanwhile.
            for key in [key for key in self._pending if key[0] == facts.node]:
                del self._pending[key]
                if key not in self._alerts:
                    watch.active.discard(key[1])
        rule = self._offline
        if rule is None or not rule.applies_to(facts.node, facts.tags):
            return
        due = watch.down_since + rule.for_s
        if now >= due:
            self._node_down(facts, watch, rule, now, changes)
        else:
            self._schedule(due, Timer.LIVENESS, facts.node)

    def _stale_after(self, facts: NodeState) -> float:
        return self._state.stale_factor * facts.interval_s

    def _arm_liveness(self, facts: NodeState, watch: Watch) -> None:
        if facts.last_heard is None:
            return
        watch.check_at = facts.last_heard + self._stale_after(facts) + STALE_MARGIN_S
        self._schedule(watch.check_at, Timer.LIVENESS, facts.node)

    def _liveness_timer(self, node: str, now: float, changes: Changes) -> None:
        facts = self._state.get(node)
        watch = self._watch.get(node)
        if facts is None or watch is None:
            return
        if watch.check_at is not None and watch.check_at <= now:
            watch.check_at = None
        self._liveness(facts, watch, now, changes)
        if self._offline is not None:  # owed once a cluster alert stopped covering it
            alert = self._alerts.get((node, self._offline.name))
            if alert is not None:
                self._owe(self._offline, alert, now, changes)

    def _node_down(
        self, facts: NodeState, watch: Watch, rule: Rule, now: float, changes: Changes
    ) -> None:
        key = (facts.node, rule.name)
        alert = self._alerts.get(key)
        if alert is not None and alert.state is AlertState.FIRING:
            return
        assert watch.down_since is not None
        self._mark_down(now)  # every node down by now counts, not only those looked at so far
        self._cluster_check(now, changes)  # first, so that a cluster alert covers this one
        if facts.status == NodeStatus.OFFLINE:
            detail = "offline (it said so, or the broker delivered its will)"
        else:
            heard = facts.last_heard if facts.last_heard is not None else now
            detail = f"stale: nothing heard for {format_duration(now - heard)}"
        self._fire(rule, facts.node, None, detail, watch.down_since, now, changes)

    def _mark_down(self, now: float) -> None:
        """Note every node that is down by now (without deciding its alert yet)."""
        for node, watch in self._watch.items():
            if watch.down_since is not None:
                continue
            facts = self._state.get(node)
            if facts is None or facts.last_heard is None:
                continue
            status = facts.effective_status(now, self._state.stale_factor)
            if status is not NodeStatus.ONLINE:
                began = facts.last_heard + self._stale_after(facts)
                if status is NodeStatus.OFFLINE and facts.state_since is not None:
                    began = facts.state_since
                watch.down_since = min(now, max(began, self._sight_since))

    def _node_up(self, node: str, now: float, changes: Changes) -> None:
        if self._offline is not None:
            alert = self._alerts.get((node, self._offline.name))
            if alert is not None and alert.state is AlertState.FIRING:
                self._resolve(self._offline, alert, None, "back online", now, changes)
        self._cluster_check(now, changes)

    def _cluster_check(self, now: float, changes: Changes) -> None:
        """One alert when more than half the nodes went down within a minute."""
        total = len(self._state.node_ids())
        # Down for `for` already: a blip (a broker restart, a clock step) is no cluster outage.
        held = self._offline.for_s if self._offline is not None else 0.0
        downs = sorted(
            w.down_since
            for w in self._watch.values()
            if w.down_since is not None and w.down_since + held <= now
        )
        key = (CLUSTER_NODE, CLUSTER_RULE)
        alert = self._alerts.get(key)
        firing = alert is not None and alert.state is AlertState.FIRING
        if not firing:
            if total < 2 or len(downs) * 2 <= total:
                return
            start = 0
            for end in range(len(downs)):
                while downs[end] - downs[start] > CLUSTER_WINDOW_S:
                    start += 1
                if (end - start + 1) * 2 > total:
                    detail = f"{len(downs)} of {total} nodes offline"
                    self._fire(
                        CLUSTER_RULE_DEF,
                        CLUSTER_NODE,
                        float(len(downs)),
                        detail,
                        downs[start],
                        now,
                        changes,
                        threshold=total / 2,
                    )
                    return
            return
        assert alert is not None
        if len(downs) * 2 > total:
            alert.value = float(len(downs))
            return
        self._resolve(
            CLUSTER_RULE_DEF,
            alert,
            float(len(downs)),
            f"{len(downs)} of {total} nodes offline",
            now,
            changes,
        )
        # Nodes still down get their own alert, after `for` more: the rest of a cluster that
        # comes back node by node would otherwise be named one by one, seconds apart.
        if self._offline is not None:
            self._cluster_grace_until = now + self._offline.for_s
            for other in list(self._alerts.values()):
                if other.rule == self._offline.name:
                    self._schedule(self._cluster_grace_until, Timer.LIVENESS, other.node)

    # -- thresholds, reboots, gaps ----------------------------------------------------------

    def _rules_for(
        self, facts: NodeState, watch: Watch, now: float, changes: Changes
    ) -> tuple[Rule, ...]:
        tags = facts.tags
        if watch.rules is None or watch.rules_tags != tags:
            # First sample, or the node's tags changed (its details or `nodes tag`): choose
            # again. A rule that no longer applies stops waiting out its `for`, and its alert
            # resolves: nothing would evaluate it for this node any more.
            node = facts.node
            rules = tuple(rule for rule in self._thresholds if rule.applies_to(node, tags))
            if watch.rules is not None:
                for rule in set(watch.rules) - set(rules):
                    self._leave(rule, node, watch, now, changes)
            watch.rules, watch.rules_tags = rules, tags
        return watch.rules

    def _leave(self, rule: Rule, node: str, watch: Watch, now: float, changes: Changes) -> None:
        """A threshold rule stopped applying to a node (its tags changed)."""
        key = (node, rule.name)
        self._pending.pop(key, None)
        alert = self._alerts.get(key)
        if alert is None:
            watch.active.discard(rule.name)
        elif alert.state is AlertState.FIRING:
            text = f"{node} no longer has the rule's tags ({', '.join(rule.tags)})"
            self._resolve(rule, alert, alert.value, text, now, changes)

    def _tags_of(self, node: str) -> tuple[str, ...]:
        facts = self._state.get(node)
        return facts.tags if facts is not None else ()

    def _threshold(
        self,
        rule: Rule,
        node: str,
        watch: Watch,
        payload: Mapping[str, Any],
        now: float,
        changes: Changes,
    ) -> None:
        """A rule whose value is past its limit, or that is pending or firing: decide."""
        reading = rule.read(payload)
        if reading is None:
            return
        key = (node, rule.name)
        alert = self._alerts.get(key)
        firing = alert is not None and alert.state is AlertState.FIRING
        if rule.breached(reading.value, firing):
            watch.active.add(rule.name)
            if firing:
                assert alert is not None
                alert.value = reading.value  # shown by the API; stored on the next change
                return
            began, _ = self._pending.setdefault(key, (now, reading))
            if now - began >= rule.for_s:
                del self._pending[key]
                text = messages.reading_text(rule, reading)
                self._fire(rule, node, reading.value, text, began, now, changes)
            return
        self._pending.pop(key, None)
        watch.active.discard(rule.name)
        if firing:
            assert alert is not None
            text = messages.reading_text(rule, reading, firing=False)
            self._resolve(rule, alert, reading.value, text, now, changes)

    def _no_value(self, rule: Rule, node: str, watch: Watch) -> None:
        """A sample without the rule's value: a wait for `for` starts again when it returns.

        A firing alert stays firing: a sensor that stopped answering is no recovery.
        """
        waited = self._pending.pop((node, rule.name), None)
        if waited is not None and (node, rule.name) not in self._alerts:
            watch.active.discard(rule.name)

    def _reboot(
        self, node: str, watch: Watch, payload: Mapping[str, Any], now: float, changes: Changes
    ) -> None:
        uptime = payload.get("uptime_s")
        if isinstance(uptime, bool) or not isinstance(uptime, int | float):
            return
        before, watch.last_uptime = watch.last_uptime, float(uptime)
        # Uptime is the machine's own boot clock: it only goes back when the machine
        # restarted. (boot_time alone would also move when a Pi without a clock syncs NTP.)
        if self._rebooted is None or before is None or uptime >= before - REBOOT_TOLERANCE_S:
            return
        if not self._rebooted.applies_to(node, self._tags_of(node)):
            return
        watch.reboot_seen = True  # the details with the new boot_time are no second reboot
        text = (
            f"{node} restarted: up {format_duration(uptime)} "
            f"(it had been up {format_duration(before)})"
        )
        self._one_shot(self._rebooted, node, float(uptime), text, now, changes)

    def _boot_time(self, node: str, watch: Watch, raw: Any, now: float, changes: Changes) -> None:
        """`rebooted` from machine details: a boot_time that moved, across a reconnect.

        A Pi without a real-time clock also moves its boot_time when NTP steps the clock,
        without reconnecting: only a move that came with a new birth is a restart.
        """
        if type(raw) is not float and type(raw) is not int:
            return
        before, watch.boot_time = watch.boot_time, float(raw)
        born, watch.born = watch.born, False
        if before is None or abs(raw - before) <= BOOT_TIME_SHIFT_S:
            return
        if watch.reboot_seen:  # already reported from the uptime going back
            watch.reboot_seen = False
            return
        rule = self._rebooted
        if not born or rule is None or not rule.applies_to(node, self._tags_of(node)):
            return
        if watch.last_uptime is not None:
            # Uptime decides for a node that reports it: an NTP step just before a reconnect
            # moves boot_time too, but never takes uptime back.
            return
        text = f"{node} restarted: booted at {messages.stamp(raw)} (was {messages.stamp(before)})"
        self._one_shot(rule, node, float(raw), text, now, changes)

    def _gaps(self, facts: NodeState, watch: Watch, now: float, changes: Changes) -> None:
        if facts.seq_gaps < watch.gaps_seen:
            watch.gaps_seen = facts.seq_gaps  # late envelopes filled them
            changes.gaps_reported[facts.node] = facts.seq_gaps
        elif facts.seq_gaps > watch.gaps_seen and watch.gap_check_at is None:
            watch.gap_check_at = now + max(self._gap_settle_s, 2 * facts.interval_s)
            self._schedule(watch.gap_check_at, Timer.GAP, facts.node)
            # Stored now (the seq counters are stored with this batch too), so a restart
            # during the wait still knows these gaps are news.
            changes.gaps_reported[facts.node] = watch.gaps_seen

    def _gap_timer(self, node: str, now: float, changes: Changes) -> None:
        facts = self._state.get(node)
        watch = self._watch.get(node)
        if facts is None or watch is None:
            return
        watch.gap_check_at = None
        lost = facts.seq_gaps - watch.gaps_seen
        watch.gaps_seen = facts.seq_gaps
        changes.gaps_reported[node] = facts.seq_gaps  # stored with the event: never twice
        rule = self._data_loss
        if lost <= 0 or rule is None or not rule.applies_to(node, facts.tags):
            return
        noun = "envelope" if lost == 1 else "envelopes"
        text = f"{lost} {noun} from {node} never arrived (seq gaps)"
        self._one_shot(rule, node, float(lost), text, now, changes)

    # -- transitions and notifications ------------------------------------------------------

    def _fire(
        self,
        rule: Rule,
        node: str,
        value: float | None,
        detail: str,
        since: float,
        now: float,
        changes: Changes,
        threshold: float | None = None,
    ) -> None:
        key = (node, rule.name)
        alert = self._alerts.get(key)
        if alert is None:
            alert = Alert(
                node=node,
                rule=rule.name,
                severity=rule.severity,
                state=AlertState.FIRING,
                since=since,
                value=value,
                threshold=rule.threshold if threshold is None else threshold,
                detail=detail,
                notified=False,
                updated=now,
            )
            self._alerts[key] = alert
        else:  # a resolve still owed (muted): the channels still believe it fires
            alert.state, alert.since, alert.value, alert.detail = (
                AlertState.FIRING,
                since,
                value,
                detail,
            )
            alert.updated = now
        changes.nodes_changed.add(node)
        if node in self._watch:
            self._watch[node].active.add(rule.name)
        self._count_firing(rule, node, now, changes)
        sent = self._reconcile(rule, alert, now, changes)
        self._event(
            rule, node, EventKind.FIRING, value, alert.threshold, since, detail, now, sent, changes
        )

    def _resolve(
        self,
        rule: Rule,
        alert: Alert,
        value: float | None,
        text: str,
        now: float,
        changes: Changes,
    ) -> None:
        # The row's detail now says why it resolved: a resolve owed until after a mute (or a
        # restart) is told in these words.
        alert.state, alert.value, alert.updated, alert.detail = AlertState.OK, value, now, text
        changes.nodes_changed.add(alert.node)
        watch = self._watch.get(alert.node)
        if watch is not None:
            watch.active.discard(alert.rule)
        self._touch_flaps(alert.node, rule.name, now)
        sent = self._reconcile(rule, alert, now, changes)
        self._event(
            rule,
            alert.node,
            EventKind.RESOLVED,
            value,
            alert.threshold,
            alert.since,
            text,
            now,
            sent,
            changes,
        )

    def _one_shot(
        self, rule: Rule, node: str, value: float, text: str, now: float, changes: Changes
    ) -> None:
        sent = None
        if not self._silenced(node, rule.name, now):
            sent = self._compose(rule, node, EventKind.FIRED, rule.severity, text, None, now)
        self._event(rule, node, EventKind.FIRED, value, None, now, text, now, sent, changes)

    def _reconcile(
        self, rule: Rule, alert: Alert, now: float, changes: Changes
    ) -> Notification | None:
        """Store the alert and send what its channels are owed, unless it is muted now."""
        key = (alert.node, alert.rule)
        if self._muted(alert.node, alert.rule, now):
            if alert.state is AlertState.OK and not alert.notified:
                self._alerts.pop(key, None)
                changes.drop(*key)
            else:
                changes.put(alert)
            return None
        sent: Notification | None = None
        if alert.state is AlertState.FIRING:
            if not alert.notified:
                alert.notified = True
                sent = self._compose(
                    rule,
                    alert.node,
                    EventKind.FIRING,
                    alert.severity,
                    alert.detail,
                    alert.since,
                    now,
                )
            changes.put(alert)
            return sent
        if alert.notified:
            sent = self._compose(
                rule,
                alert.node,
                EventKind.RESOLVED,
                alert.severity,
                alert.detail,
                alert.since,
                now,
            )
        self._alerts.pop(key, None)
        changes.drop(*key)
        return sent

    def _owe(self, rule: Rule, alert: Alert, now: float, changes: Changes) -> None:
        """Reconcile an alert after a mute ended: what it owes goes out without a new event."""
        sent = self._reconcile(rule, alert, now, changes)
        if sent is not None:
            changes.notifications.append(sent)

    def _compose(
        self,
        rule: Rule,
        node: str,
        kind: EventKind,
        severity: Severity,
        message: str,
        since: float | None,
        now: float,
    ) -> Notification:
        return messages.compose(
            node=node,
            rule=rule,
            kind=kind,
            severity=severity,
            message=message,
            since=since,
            now=now,
            link_base=self._link_base,
        )

    def _event(
        self,
        rule: Rule,
        node: str,
        kind: EventKind,
        value: float | None,
        threshold: float | None,
        since: float | None,
        message: str,
        now: float,
        sent: Notification | None,
        changes: Changes,
    ) -> None:
        changes.events.append(
            Event(
                at=now,
                node=node,
                rule=rule.name,
                severity=rule.severity,
                kind=kind,
                value=value,
                threshold=threshold,
                since=since,
                message=message,
                notification=sent,
            )
        )

    def _muted(self, node: str, rule: str, now: float) -> bool:
        flaps = self._flaps.get((node, rule))
        if flaps is not None and flaps.flapping:
            return True
        return self._silenced(node, rule, now) or self._covered(node, rule, now)

    def _covered(self, node: str, rule: str, now: float) -> bool:
        """A node_offline the cluster alert speaks for (while it fires, and a `for` after)."""
        if self._offline is None or rule != self._offline.name:
            return False
        if now < self._cluster_grace_until:
            # Looked at again when the grace ends: what is still down is named then.
            self._schedule(self._cluster_grace_until, Timer.LIVENESS, node)
            return True
        cluster = self._alerts.get((CLUSTER_NODE, CLUSTER_RULE))
        return cluster is not None and cluster.state is AlertState.FIRING

    def _silenced(self, node: str, rule: str, now: float) -> bool:
        return any(s.covers(node, rule, now) for s in self._silences.values())

    def _silence_ended(self, silence_id: int, now: float, changes: Changes) -> None:
        silence = self._silences.pop(silence_id, None)
        if silence is None:
            return
        changes.silences_ended.append(silence_id)
        # Whatever the silence held back is owed now (unless another mute still holds).
        for alert in list(self._alerts.values()):
            if silence.rule in (None, alert.rule) and fnmatch.fnmatchcase(alert.node, silence.node):
                rule = self._rule_named(alert.rule)
                if rule is not None:
                    self._owe(rule, alert, now, changes)

    def _reconcile_restored(self, now: float, changes: Changes) -> None:
        """At start: send what restored alerts owe; resolve those of rules no longer set."""
        for alert in list(self._alerts.values()):
            rule = self._rule_named(alert.rule)
            if rule is not None:
                self._owe(rule, alert, now, changes)
                continue
            # The rule was removed or turned off: nothing will ever resolve it otherwise.
            gone = Rule(name=alert.rule, severity=alert.severity)
            if alert.state is AlertState.FIRING:
                self._resolve(gone, alert, None, "no longer a configured rule", now, changes)
            else:
                self._owe(gone, alert, now, changes)

    def _rule_named(self, name: str) -> Rule | None:
        return CLUSTER_RULE_DEF if name == CLUSTER_RULE else self._rules.get(name)

    # -- flapping ---------------------------------------------------------------------------

    def _count_firing(self, rule: Rule, node: str, now: float, changes: Changes) -> None:
        flaps = self._flaps.setdefault((node, rule.name), Flaps())
        flaps.last_change = now
        flaps.firings.append(now)
        while flaps.firings and flaps.firings[0] < now - FLAP_WINDOW_S:
            flaps.firings.popleft()
        if flaps.flapping or len(flaps.firings) <= FLAP_FIRINGS:
            return
        flaps.flapping = True
        text = (
            f"{rule.name} fired {len(flaps.firings)} times in "
            f"{format_duration(FLAP_WINDOW_S)}; quiet until it settles"
        )
        sent = None
        if not self._silenced(node, rule.name, now) and not self._covered(node, rule.name, now):
            sent = self._compose(
                rule, node, EventKind.FLAPPING, rule.severity, text, flaps.firings[0], now
            )
        self._event(
            rule, node, EventKind.FLAPPING, None, None, flaps.firings[0], text, now, sent, changes
        )
        self._schedule(now + FLAP_WINDOW_S, Timer.FLAP, node, rule.name)

    def _touch_flaps(self, node: str, rule: str, now: float) -> None:
        flaps = self._flaps.get((node, rule))
        if flaps is not None:
            flaps.last_change = now

    def _flap_timer(self, node: str, rule_name: str, now: float, changes: Changes) -> None:
        flaps = self._flaps.get((node, rule_name))
        rule = self._rule_named(rule_name)
        if flaps is None or not flaps.flapping or rule is None:
            return
        quiet_at = flaps.last_change + FLAP_WINDOW_S
        if now < quiet_at:
            self._schedule(quiet_at, Timer.FLAP, node, rule_name)
            return
        flaps.flapping = False
        flaps.firings.clear()
        alert = self._alerts.get((node, rule_name))
        state = "firing" if alert is not None and alert.state is AlertState.FIRING else "ok"
        text = f"{rule_name} settled ({state})"
        sent = self._reconcile(rule, alert, now, changes) if alert is not None else None
        self._event(rule, node, EventKind.SETTLED, None, None, None, text, now, sent, changes)

    # -- helpers ----------------------------------------------------------------------------

    def _watch_of(self, node: str) -> Watch:
        watch = self._watch.get(node)
        if watch is None:
            watch = self._watch[node] = Watch()
        return watch

    def _schedule(self, due: float, kind: Timer, node: str, extra: str = "") -> None:
        first = self._timers[0][0] if self._timers else None
        heapq.heappush(self._timers, (due, next(self._tick), kind, node, extra))
        if first is None or due < first:
            self.on_schedule(due)

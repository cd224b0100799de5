"""Alert rules: the built-in ones (names are part of the contract) and custom thresholds."""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

from cluster_protocol.metrics import METRICS, metric, metric_value


class Severity(StrEnum):
    """How bad a firing alert is; maps to Apprise's notify type."""

    WARNING = "warning"
    CRITICAL = "critical"


class Kind(StrEnum):
    """What drives a rule."""

    THRESHOLD = "threshold"  # a value from each metrics sample against a limit, for a while
    OFFLINE = "offline"  # the node's liveness (status, stale detection)
    REBOOT = "reboot"  # one-shot: the machine restarted
    DATA_LOSS = "data_loss"  # one-shot: envelopes that never came (seq gaps)


class Builtin(StrEnum):
    """The built-in rules' names, used in config, API, docs and notifications."""

    NODE_OFFLINE = "node_offline"
    UNDER_VOLTAGE = "under_voltage"
    THROTTLED = "throttled"
    TEMPERATURE = "temperature"
    DISK_FULL = "disk_full"
    MEMORY = "memory"
    REBOOTED = "rebooted"
    DATA_LOSS = "data_loss"


CLUSTER_RULE: Final = "cluster_offline"
"""The one alert sent when more than half the nodes go offline within a minute."""
CLUSTER_NODE: Final = "_cluster"
"""The node name the cluster alert is filed under (node ids cannot start with '_')."""

# Values the built-in rules read that are not single metrics of the metric table.
DISK_MAX = "disk_max_percent"  # the fullest mount in `disks`
UNDER_VOLTAGE_NOW = "under_voltage_now"  # `throttled.under_voltage`, as 1 or 0
THROTTLED_NOW = "throttled_now"  # `throttled.throttled` or `throttled.freq_capped`, as 1 or 0
THROTTLE_KEYS: Final = ("throttled", "freq_capped")


@dataclass(frozen=True, slots=True)
class Reading:
    """One value a rule read from a sample, and where it came from (e.g. a mount)."""

    value: float
    detail: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Rule:
    """One rule as configured: what it watches, its limits, where it applies and notifies."""

    name: str
    kind: Kind = Kind.THRESHOLD
    metric: str | None = None
    above: float | None = None
    below: float | None = None
    clear_above: float | None = None  # hysteresis of a `below` rule
    clear_below: float | None = None  # hysteresis of an `above` rule
    inclusive: bool = False  # fire at the limit itself ("at or above")
    for_s: float = 0.0
    severity: Severity = Severity.WARNING
    nodes: tuple[str, ...] = ()  # name globs; empty: every node
    tags: tuple[str, ...] = ()  # node tags: the rule watches nodes with any; empty: every node
    channel_tags: tuple[str, ...] = ()  # Apprise tags to notify; empty: every channel
    enabled: bool = True
    builtin: bool = False
    # Derived once, for the per-sample check (the engine's hot path): the payload key to read
    # as is (None for derived or composite values), and limits that make "fires" a plain
    # `value > hi or value < lo` (inclusive limits moved by one float step).
    payload_key: str | None = field(init=False, default=None, compare=False)
    hi: float = field(init=False, default=math.inf, compare=False)
    lo: float = field(init=False, default=-math.inf, compare=False)

    def __post_init__(self) -> None:
        plain = self.metric is not None and self.metric in _PLAIN_KEYS
        object.__setattr__(self, "payload_key", self.metric if plain else None)
        if self.above is not None:
            hi = math.nextafter(self.above, -math.inf) if self.inclusive else self.above
            object.__setattr__(self, "hi", hi)
        if self.below is not None:
            lo = math.nextafter(self.below, math.inf) if self.inclusive else self.below
            object.__setattr__(self, "lo", lo)

    @property
    def one_shot(self) -> bool:
        """True for rules that fire once per event and never resolve."""
        return self.kind in (Kind.REBOOT, Kind.DATA_LOSS)

    @property
    def threshold(self) -> float | None:
        """The limit that makes the rule fire."""
        return self.above if self.above is not None else self.below

    def applies_to(self, node: str, tags: Collection[str] = ()) -> bool:
        """True when the rule watches this node: its name matches and it has any of the tags.

        Args:
            node: the node id, matched against the `nodes` globs.
            tags: the node's tags (own and master-side), matched against `tags`.
        """
        if self.tags and not any(tag in tags for tag in self.tags):
            return False
        return not self.nodes or any(fnmatch.fnmatchcase(node, glob) for glob in self.nodes)

    def value_of(self, payload: Mapping[str, Any]) -> float | None:
        """The number this rule watches in a metrics sample; None when the sample lacks it."""
        metric_key = self.metric
        if metric_key is None:
            return None
        if metric_key == DISK_MAX:
            return _fullest_disk(payload)[0]
        if metric_key in (UNDER_VOLTAGE_NOW, THROTTLED_NOW):
            flags = payload.get("throttled")
            if flags.__class__ is not dict:
                return None
            if metric_key == UNDER_VOLTAGE_NOW:
                return 1.0 if flags.get("under_voltage") is True else 0.0
            on = flags.get("throttled") is True or flags.get("freq_capped") is True
            return 1.0 if on else 0.0
        value = metric_value(metric(metric_key), payload)
        if value.__class__ is not float and value.__class__ is not int:
            return None  # absent, null (no sensor), or not a number (a bool)
        return float(value)

    def read(self, payload: Mapping[str, Any]) -> Reading | None:
        """The value with where it came from (a mount, the flags set): for messages."""
        value = self.value_of(payload)
        if value is None:
            return None
        if self.metric == DISK_MAX:
            return Reading(value, _fullest_disk(payload)[1])
        if self.metric in (UNDER_VOLTAGE_NOW, THROTTLED_NOW):
            flags = payload.get("throttled") or {}
            keys = ("under_voltage",) if self.metric == UNDER_VOLTAGE_NOW else THROTTLE_KEYS
            on = [key for key in keys if flags.get(key) is True]
            return Reading(value, ", ".join(on) or str(flags.get("raw", "")))
        return Reading(value)

    def breached(self, value: float, firing: bool) -> bool:
        """Whether `value` keeps (firing) or puts (not firing) the rule in the firing state."""
        if self.above is not None:
            if firing and self.clear_below is not None:
                return value >= self.clear_below
            return value >= self.above if self.inclusive else value > self.above
        if self.below is not None:
            if firing and self.clear_above is not None:
                return value <= self.clear_above
            return value <= self.below if self.inclusive else value < self.below
        return False


def _fullest_disk(payload: Mapping[str, Any]) -> tuple[float | None, str]:
    """The highest percent in use among the mounts, and that mount."""
    disks = payload.get("disks")
    best: float | None = None
    mount = ""
    for disk in disks if disks.__class__ is list else ():
        percent = disk.get("percent") if disk.__class__ is dict else None
        if percent.__class__ is not float and percent.__class__ is not int:
            continue
        if best is None or percent > best:
            best, mount = float(percent), str(disk.get("mount", ""))
    return best, mount


_PLAIN_KEYS: Final = frozenset(m.key for m in METRICS if m.in_payload)

NUMERIC_METRICS: Final = tuple(
    m.key for m in METRICS if m.json_type.split("|")[0] in ("number", "integer")
)
"""Metric keys a custom rule may watch."""

BUILTIN_RULES: Final[Mapping[str, Rule]] = {
    rule.name: rule
    for rule in (
        Rule(
            name=Builtin.NODE_OFFLINE,
            kind=Kind.OFFLINE,
            for_s=60.0,
            severity=Severity.CRITICAL,
            builtin=True,
        ),
        Rule(
            name=Builtin.UNDER_VOLTAGE,
            metric=UNDER_VOLTAGE_NOW,
            above=1.0,
            inclusive=True,
            severity=Severity.CRITICAL,
            builtin=True,
        ),
        Rule(
            name=Builtin.THROTTLED,
            metric=THROTTLED_NOW,
            above=1.0,
            inclusive=True,
            for_s=60.0,
            builtin=True,
        ),
        Rule(
            name=Builtin.TEMPERATURE,
            metric="temperature_celsius",
            above=80.0,
            for_s=120.0,
            builtin=True,
        ),
        Rule(
            name=Builtin.DISK_FULL,
            metric=DISK_MAX,
            above=90.0,
            inclusive=True,
            for_s=300.0,
            severity=Severity.CRITICAL,
            builtin=True,
        ),
        Rule(
            name=Builtin.MEMORY,
            metric="memory_percent",
            above=95.0,
            inclusive=True,
            for_s=300.0,
            builtin=True,
        ),
        Rule(name=Builtin.REBOOTED, kind=Kind.REBOOT, builtin=True),
        Rule(name=Builtin.DATA_LOSS, kind=Kind.DATA_LOSS, builtin=True),
    )
}
"""Every built-in rule with its defaults, on unless the config turns it off."""

"""Alert rules: the built-in ones (names are part of the contract) and custom thresholds."""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass
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
    channel_tags: tuple[str, ...] = ()  # Apprise tags to notify; empty: every channel
    enabled: bool = True
    builtin: bool = False

    @property
    def one_shot(self) -> bool:
        """True for rules that fire once per event and never resolve."""
        return self.kind in (Kind.REBOOT, Kind.DATA_LOSS)

    @property
    def threshold(self) -> float | None:
        """The limit that makes the rule fire."""
        return self.above if self.above is not None else self.below

    def applies_to(self, node: str) -> bool:
        """True when the rule watches this node."""
        return not self.nodes or any(fnmatch.fnmatchcase(node, glob) for glob in self.nodes)

    def read(self, payload: Mapping[str, Any]) -> Reading | None:
        """The value this rule watches in a metrics sample, None when the sample lacks it."""
        if self.metric is None:
            return None
        if self.metric == DISK_MAX:
            return _fullest_disk(payload)
        if self.metric in (UNDER_VOLTAGE_NOW, THROTTLED_NOW):
            flags = payload.get("throttled")
            if not isinstance(flags, dict):
                return None
            keys = (
                ("under_voltage",)
                if self.metric == UNDER_VOLTAGE_NOW
                else (
                    "throttled",
                    "freq_capped",
                )
            )
            on = [key for key in keys if flags.get(key) is True]
            return Reading(1.0 if on else 0.0, ", ".join(on) or str(flags.get("raw", "")))
        value = metric_value(metric(self.metric), payload)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        return Reading(float(value))

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


def _fullest_disk(payload: Mapping[str, Any]) -> Reading | None:
    disks = payload.get("disks")
    best: Reading | None = None
    for disk in disks if isinstance(disks, list) else ():
        percent = disk.get("percent") if isinstance(disk, dict) else None
        if isinstance(percent, bool) or not isinstance(percent, int | float):
            continue
        if best is None or percent > best.value:
            best = Reading(float(percent), str(disk.get("mount", "")))
    return best


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

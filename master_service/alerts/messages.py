"""The words of a notification: `[picluster] <node> <rule> firing|resolved`, and its body."""

from __future__ import annotations

import time
import urllib.parse

from cluster_protocol.metrics import METRICS
from master_service.alerts.durations import format_duration
from master_service.alerts.model import EventKind, Notification, NotifyType
from master_service.alerts.rules import (
    CLUSTER_NODE,
    DISK_MAX,
    THROTTLED_NOW,
    UNDER_VOLTAGE_NOW,
    Reading,
    Rule,
    Severity,
)

_UNITS = {m.key: m.unit for m in METRICS}
_NOTIFY_TYPES = {Severity.WARNING: NotifyType.WARNING, Severity.CRITICAL: NotifyType.FAILURE}


def title(node: str, rule: str, kind: EventKind) -> str:
    """The contract's title; one-shot alerts say `firing` too (they fire, never resolve)."""
    word = "firing" if kind is EventKind.FIRED else kind.value
    return f"[picluster] {node} {rule} {word}"


def notify_type(severity: Severity, kind: EventKind) -> NotifyType:
    """Apprise's notify type: success for a resolve, else by severity."""
    if kind in (EventKind.RESOLVED, EventKind.SETTLED):
        return NotifyType.SUCCESS
    return _NOTIFY_TYPES[severity]


def node_link(base: str, node: str) -> str:
    """The dashboard page of a node (the overview for the cluster alert)."""
    root = base if base.endswith("/") else base + "/"
    if node == CLUSTER_NODE:
        return root
    return f"{root}#/node/{urllib.parse.quote(node, safe='')}"


def stamp(ts: float) -> str:
    """A UTC time as people read it in a notification."""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def value_text(rule: Rule, value: float | None) -> str:
    """A value with its unit, e.g. `83.2 °C`, `93%`."""
    if value is None:
        return "unknown"
    unit = "%" if rule.metric == DISK_MAX else _UNITS.get(rule.metric or "")
    number = f"{value:.1f}".rstrip("0").rstrip(".") if value != int(value) else f"{int(value)}"
    if unit == "%":
        return f"{number}%"
    return f"{number} {unit}" if unit else number


def limit_text(rule: Rule) -> str:
    """`above 80 °C`, `at or above 90%`, `below 10`."""
    if rule.above is not None:
        return f"{'at or above' if rule.inclusive else 'above'} {value_text(rule, rule.above)}"
    if rule.below is not None:
        return f"{'at or below' if rule.inclusive else 'below'} {value_text(rule, rule.below)}"
    return ""


def reading_text(rule: Rule, reading: Reading, firing: bool = True) -> str:
    """What a threshold rule saw, in words: `/data is 93% full (at or above 90%)`."""
    shown = value_text(rule, reading.value)
    if rule.metric == DISK_MAX:
        return f"{reading.detail or 'a disk'} is {shown} full" + (
            f" ({limit_text(rule)})" if firing else ""
        )
    if rule.metric == UNDER_VOLTAGE_NOW:
        return "the Pi reports under-voltage now" if firing else "the supply voltage is fine"
    if rule.metric == THROTTLED_NOW:
        return f"the Pi is {reading.detail} now" if firing else "the Pi runs at full speed"
    return f"{rule.metric} is {shown}" + (f" ({limit_text(rule)})" if firing else "")


def compose(
    *,
    node: str,
    rule: Rule,
    kind: EventKind,
    severity: Severity,
    message: str,
    since: float | None,
    now: float,
    link_base: str,
) -> Notification:
    """The notification for one event: title, body (what, since when, link) and type."""
    lines = [message]
    if since is not None and kind in (EventKind.FIRING, EventKind.FLAPPING):
        lines.append(f"Since {stamp(since)} ({format_duration(max(0.0, now - since))} ago)")
    elif since is not None and kind is EventKind.RESOLVED:
        lines.append(f"Began {stamp(since)}; resolved after {format_duration(now - since)}")
    lines.append(f"Severity: {severity.value}")
    lines.append(node_link(link_base, node))
    return Notification(
        title=title(node, rule.name, kind),
        body="\n".join(lines),
        notify_type=notify_type(severity, kind),
        channel_tags=rule.channel_tags,
    )

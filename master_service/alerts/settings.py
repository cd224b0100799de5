"""The `[alerts]` table of the master's TOML: channels, heartbeat, built-in and custom rules.

Everything is checked when the master starts; a mistake raises `SettingsError` naming the
rule and the field (`alerts.rules[hot_rack].metric`), and the master exits 2.
"""

from __future__ import annotations

import hashlib
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final

from cluster_protocol.config import SettingsError
from cluster_protocol.tags import tag_problem
from master_service.alerts.durations import parse_duration
from master_service.alerts.rules import (
    BUILTIN_RULES,
    CLUSTER_RULE,
    NUMERIC_METRICS,
    Kind,
    Rule,
    Severity,
)

DEFAULT_HEARTBEAT_INTERVAL_S: Final = 60.0
DEFAULT_MAX_AGE_S: Final = 24 * 3600.0
# Apprise schemes whose host part names a server (never a token): shown in labels. Not
# ntfy: `ntfy://<topic>` puts the topic, its only secret, where the host would be.
SERVER_SCHEMES: Final = frozenset(
    {"json", "jsons", "form", "forms", "xml", "xmls", "gotify", "gotifys", "mailto", "mailtos",
     "matrix", "matrixs", "mqtt", "mqtts", "hassio", "hassios"}
)  # fmt: skip
RULE_NAME: Final = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")

_TOP_KEYS: Final = frozenset(
    {
        "channels",
        "heartbeat_url",
        "heartbeat_interval",
        "max_age",
        "dashboard_url",
        "builtin",
        "rules",
    }
)
_COMMON_KEYS: Final = frozenset({"enabled", "for", "severity", "nodes", "tags", "notify"})
_LIMIT_KEYS: Final = frozenset({"above", "below", "clear_above", "clear_below"})
_CUSTOM_KEYS: Final = _COMMON_KEYS | _LIMIT_KEYS | {"name", "metric"}


@dataclass(frozen=True, slots=True)
class Channel:
    """One Apprise URL notifications go to, with the Apprise tags rules route by."""

    url: str
    tags: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """A stable id for the outbox that does not store the URL's secrets."""
        return hashlib.sha256(self.url.encode()).hexdigest()[:16]

    @property
    def label(self) -> str:
        """Safe to print and log: the scheme, and the host only where it is a server's name.

        Many services carry their token where a host would be (`tgram://<bot token>/...`),
        so those show the scheme and a short hash of the URL instead.
        """
        parts = urllib.parse.urlsplit(self.url)
        host = parts.hostname or ""
        if host and parts.scheme.lower() in SERVER_SCHEMES:
            return f"{parts.scheme}://{host}"
        return f"{parts.scheme}:// ({self.key[:6]})"

    def wanted_by(self, rule: Rule) -> bool:
        """True when this channel gets the rule's notifications."""
        return not rule.channel_tags or bool(set(rule.channel_tags) & set(self.tags))


@dataclass(frozen=True, slots=True, kw_only=True)
class AlertSettings:
    """Alerting, as configured: off by default only in that there is nowhere to send."""

    channels: tuple[Channel, ...] = ()
    heartbeat_url: str | None = None
    heartbeat_interval_s: float = DEFAULT_HEARTBEAT_INTERVAL_S
    max_age_s: float = DEFAULT_MAX_AGE_S
    dashboard_url: str | None = None  # base of the links in notifications
    rules: tuple[Rule, ...] = field(default_factory=lambda: tuple(BUILTIN_RULES.values()))

    def rule(self, name: str) -> Rule | None:
        """The rule of that name, if configured (built-in ones even when disabled)."""
        return next((rule for rule in self.rules if rule.name == name), None)

    @property
    def active_rules(self) -> tuple[Rule, ...]:
        """The enabled rules."""
        return tuple(rule for rule in self.rules if rule.enabled)


def parse_alerts(raw: Any) -> AlertSettings:
    """Build AlertSettings from the TOML `[alerts]` table; SettingsError naming the bad field."""
    if raw is None:
        return AlertSettings()
    if not isinstance(raw, dict):
        raise SettingsError("alerts", "must be a table ([alerts])")
    _refuse_unknown("alerts", raw, _TOP_KEYS)
    channels = tuple(_channel(i, item) for i, item in enumerate(_list(raw, "channels", "alerts")))
    heartbeat_url = raw.get("heartbeat_url")
    if heartbeat_url is not None:
        _http_url("alerts.heartbeat_url", heartbeat_url)
    dashboard_url = raw.get("dashboard_url")
    if dashboard_url is not None:
        _http_url("alerts.dashboard_url", dashboard_url)
    interval = _duration("alerts.heartbeat_interval", raw.get("heartbeat_interval"))
    max_age = _duration("alerts.max_age", raw.get("max_age"))
    if interval == 0 or max_age == 0:
        which = "heartbeat_interval" if interval == 0 else "max_age"
        raise SettingsError(f"alerts.{which}", "must be more than 0 seconds")
    builtin = raw.get("builtin", {})
    if not isinstance(builtin, dict):
        raise SettingsError("alerts.builtin", "must be a table of [alerts.builtin.<rule>]")
    _refuse_unknown("alerts.builtin", builtin, frozenset(BUILTIN_RULES))
    rules = [_builtin(name, default, builtin.get(name)) for name, default in BUILTIN_RULES.items()]
    for i, table in enumerate(_list(raw, "rules", "alerts")):
        rule = _custom(i, table)
        if any(existing.name == rule.name for existing in rules):
            raise SettingsError(f"alerts.rules[{rule.name}].name", "is already a rule's name")
        rules.append(rule)
    tags = {tag for channel in channels for tag in channel.tags}
    for rule in rules:
        unknown = sorted(set(rule.channel_tags) - tags)
        if unknown:
            raise SettingsError(
                f"{_where(rule)}.notify",
                f"no channel has the tag {unknown[0]!r} (tags: {sorted(tags) or 'none'})",
            )
    return AlertSettings(
        channels=channels,
        heartbeat_url=heartbeat_url,
        heartbeat_interval_s=DEFAULT_HEARTBEAT_INTERVAL_S if interval is None else interval,
        max_age_s=DEFAULT_MAX_AGE_S if max_age is None else max_age,
        dashboard_url=dashboard_url,
        rules=tuple(rules),
    )


def _where(rule: Rule) -> str:
    return f"alerts.builtin.{rule.name}" if rule.builtin else f"alerts.rules[{rule.name}]"


def _refuse_unknown(where: str, table: Mapping[str, Any], known: frozenset[str]) -> None:
    unknown = sorted(set(table) - known)
    if unknown:
        raise SettingsError(
            f"{where}.{unknown[0]}", f"unknown key (known: {', '.join(sorted(known))})"
        )


def _list(table: Mapping[str, Any], key: str, where: str) -> list[Any]:
    value = table.get(key, [])
    if not isinstance(value, list):
        raise SettingsError(f"{where}.{key}", f"must be a list, got {value!r}")
    return value


def _strings(where: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise SettingsError(where, f"must be a list of non-empty strings, got {value!r}")
    return tuple(value)


def _node_tags(where: str, value: Any) -> tuple[str, ...]:
    """A rule's `tags` selector: node tags, each valid (a rule applies to nodes with any)."""
    tags = _strings(where, value)
    for tag in tags:
        problem = tag_problem(tag)
        if problem:
            raise SettingsError(where, problem)
    return tags


def _duration(where: str, raw: Any) -> float | None:
    if raw is None:
        return None
    try:
        return parse_duration(raw)
    except ValueError as error:
        raise SettingsError(where, str(error)) from error


def _http_url(where: str, value: Any) -> None:
    parts = urllib.parse.urlsplit(value) if isinstance(value, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        raise SettingsError(where, f"must be an http:// or https:// URL, got {value!r}")


def _channel(index: int, item: Any) -> Channel:
    where = f"alerts.channels[{index}]"
    if isinstance(item, str):
        channel = Channel(item)
    elif isinstance(item, dict):
        _refuse_unknown(where, item, frozenset({"url", "tags"}))
        url = item.get("url")
        if not isinstance(url, str):
            raise SettingsError(f"{where}.url", "must be an Apprise URL")
        channel = Channel(url, _strings(f"{where}.tags", item.get("tags", [])))
    else:
        raise SettingsError(where, "must be an Apprise URL or a table {url = ..., tags = [...]}")
    if not accepted_by_apprise(channel.url):
        raise SettingsError(
            where,
            f"Apprise does not accept {channel.label} (an unknown scheme, or a URL missing "
            "what that service needs); see https://github.com/caronc/apprise/wiki",
        )
    return channel


def accepted_by_apprise(url: str) -> bool:
    """True when Apprise knows the URL's service and finds what it needs in it."""
    import apprise  # the master's extra; imported when alerts are configured

    return bool(apprise.Apprise().add(url))


def _common(where: str, rule: Rule, table: Mapping[str, Any]) -> Rule:
    enabled = table.get("enabled", rule.enabled)
    if not isinstance(enabled, bool):
        raise SettingsError(f"{where}.enabled", f"must be true or false, got {enabled!r}")
    for_s = _duration(f"{where}.for", table.get("for"))
    severity = table.get("severity", rule.severity)
    if severity not in tuple(Severity):
        raise SettingsError(f"{where}.severity", f"must be warning or critical, got {severity!r}")
    nodes = _strings(f"{where}.nodes", table["nodes"]) if "nodes" in table else rule.nodes
    tags = _node_tags(f"{where}.tags", table["tags"]) if "tags" in table else rule.tags
    notify = (
        _strings(f"{where}.notify", table["notify"]) if "notify" in table else rule.channel_tags
    )
    return replace(
        rule,
        enabled=enabled,
        for_s=rule.for_s if for_s is None else for_s,
        severity=Severity(severity),
        nodes=nodes,
        tags=tags,
        channel_tags=notify,
    )


def _limits(where: str, rule: Rule, table: Mapping[str, Any]) -> Rule:
    values: dict[str, float | None] = {}
    for key in _LIMIT_KEYS:
        value = table.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise SettingsError(f"{where}.{key}", f"must be a number, got {value!r}")
        values[key] = None if value is None else float(value)
    above = values["above"] if "above" in table else (rule.above if "below" not in table else None)
    below = values["below"] if "below" in table else (rule.below if "above" not in table else None)
    if (above is None) == (below is None):
        raise SettingsError(where, "needs exactly one of above or below")
    clear_below = values["clear_below"] if "clear_below" in table else rule.clear_below
    clear_above = values["clear_above"] if "clear_above" in table else rule.clear_above
    if clear_below is not None and (above is None or clear_below > above):
        raise SettingsError(f"{where}.clear_below", "goes with above, and must not exceed it")
    if clear_above is not None and (below is None or clear_above < below):
        raise SettingsError(f"{where}.clear_above", "goes with below, and must not be under it")
    return replace(rule, above=above, below=below, clear_below=clear_below, clear_above=clear_above)


def _builtin(name: str, default: Rule, table: Any) -> Rule:
    where = f"alerts.builtin.{name}"
    if table is None:
        return default
    if not isinstance(table, dict):
        raise SettingsError(where, "must be a table")
    known = _COMMON_KEYS | (_LIMIT_KEYS if default.kind is Kind.THRESHOLD else frozenset())
    if default.one_shot:
        known = known - {"for"}
    _refuse_unknown(where, table, known)
    rule = _common(where, default, table)
    if default.kind is Kind.THRESHOLD:
        rule = _limits(where, rule, table)
    return rule


def _custom(index: int, table: Any) -> Rule:
    if not isinstance(table, dict):
        raise SettingsError(f"alerts.rules[{index}]", "must be a table ([[alerts.rules]])")
    name = table.get("name")
    if not isinstance(name, str) or not RULE_NAME.match(name):
        raise SettingsError(
            f"alerts.rules[{index}].name",
            f"must be a-z, 0-9, '_' or '-' (up to 63 characters), got {name!r}",
        )
    where = f"alerts.rules[{name}]"
    if name == CLUSTER_RULE:
        raise SettingsError(f"{where}.name", "is the cluster alert's name")
    _refuse_unknown(where, table, _CUSTOM_KEYS)
    metric = table.get("metric")
    if metric not in NUMERIC_METRICS:
        raise SettingsError(
            f"{where}.metric",
            f"unknown numeric metric {metric!r} (known: {', '.join(NUMERIC_METRICS)})",
        )
    rule = Rule(name=name, metric=metric)
    rule = _common(where, rule, table)
    return _limits(where, rule, table)
